"""The responses-bridge soak test (issue 4): load with nothing lost, every answer checked.

Loopback only. Starts the bundled fake upstream (``tests/fake_upstream.py``, in a thread) and one
``mitmdump -s addon/bridge.py`` in reverse mode in front of it with
``responses_bridge_max_sessions=N``, then ``--clients`` concurrent clients (asyncio + httpx) send
``--requests`` requests that mix:

- **single**: one fresh request, streamed or JSON;
- **chain**: 2-5 turns with ``store: false`` and ``previous_response_id``, streamed and JSON
  alternating at random; now and then a turn first fails upstream (429 before
  ``response.created``) and is then resent, which must not leave the failed turn in the context;
- **fork**: a root turn, two concurrent follow-ups of it, then one more turn on one branch;
- **fault**: fake directives for upstream errors, closes (1006 before the answer, 1011 between
  deltas), ``response.failed``, garbage frames, an error after ``response.created``, plus a
  stale ``previous_response_id`` and a body that is not JSON.

Every answer is checked: a success against the fake's deterministic text (``echo: <last user
text> | context: <N> user messages | <t1> / … / <tN>``: N and every text are what the client's
chain implies, and equal to what the fake says it answered for that response id), SSE framing,
event order and the deltas; a fault against its exact status and error body, or SSE error event.
``503 bridge_capacity_exceeded`` (all N sockets busy) is an outcome the bridge documents: it is
checked exactly (with ``Retry-After: 1``), counted, and the request is sent again. So is a
continuation's ``400 previous_response_not_found`` once the bridge may, as documented, have
dropped both the chain's socket and its transcript (the store keeps 8 x N responses, least
recently used first): only when at least that many transcript entries were added or used since
the previous response (counted by the soak); earlier it is a wrong answer. The client then starts
its conversation over.

Prints a report table and exits non-zero when any check fails: no wrong and no lost answers,
open upstream sockets ≤ N, no task left in the soak's own loop, no socket left open on the fake
once mitmdump stops, mitmdump's RSS growth after warm-up < 20 MB, no traceback in its log, and one
bridge log line per HTTP request sent. ``--seconds`` is a hard bound on the whole run.

Run it as ``scripts/soak [--requests 2000] [--clients 100] [--seconds 300] [--max-sessions 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fake_upstream import FakeUpstream, FakeUpstreamThread, answer_text, split_text  # noqa: E402
from tests.harness import Mitmdump  # noqa: E402

Json = dict[str, Any]
MAX_CAPACITY_RETRIES = 200
RSS_GROWTH_LIMIT_MB = 20.0


class Wrong(Exception):
    """An answer arrived but is not the one expected."""


class Lost(Exception):
    """No complete answer arrived (timeout, dropped connection, truncated stream)."""


class ChainEvicted(Exception):
    """A continuation got ``400 previous_response_not_found`` so late that the bridge may have
    dropped both the chain's socket and its transcript, as documented: it keeps the transcripts
    of 8 x max_sessions responses, least recently used first."""


@dataclass
class Answer:
    """One HTTP answer: a JSON body, or the events of an SSE stream."""

    status: int
    headers: httpx.Headers
    body: Json | None = None
    events: list[tuple[str, Json]] = field(default_factory=list)
    stream: bool = False

    @property
    def label(self) -> str:
        return str(self.headers.get("x-responses-bridge", ""))

    def error(self) -> Json:
        if self.body is None or not isinstance(self.body.get("error"), dict):
            raise Wrong(f"{self.status} without an error body: {self.body!r:.300}")
        return self.body["error"]  # type: ignore[no-any-return]


def expected_text(users: list[str]) -> str:
    return f"echo: {users[-1]} | context: {len(users)} user messages | {' / '.join(users)}"


def output_text(response: Json) -> str:
    return "".join(
        part.get("text", "")
        for item in response.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


def parse_sse(data: bytes) -> list[tuple[str, Json]]:
    """The bridge's SSE frames, strictly: ``event: T`` then ``data: {JSON with type T}``."""
    events = []
    if not data.endswith(b"\n\n"):
        raise Lost(f"the stream ended mid-frame: {data[-200:]!r}")
    for frame in data.decode().split("\n\n")[:-1]:
        lines = frame.split("\n")
        if len(lines) != 2 or not lines[0].startswith("event: "):
            raise Wrong(f"malformed SSE frame: {frame[:200]!r}")
        if not lines[1].startswith("data: "):
            raise Wrong(f"malformed SSE frame: {frame[:200]!r}")
        kind, payload = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        if payload.get("type") != kind:
            raise Wrong(f"event {kind!r} carries type {payload.get('type')!r}")
        events.append((kind, payload))
    return events


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Wrong(message)


def error_matches(got: Json, wanted: Json) -> bool:
    """``got`` equals ``wanted``, where a compiled pattern in ``wanted`` must match the value."""
    if set(got) != set(wanted):
        return False
    for key, value in wanted.items():
        if isinstance(value, re.Pattern):
            if not isinstance(got[key], str) or not value.fullmatch(got[key]):
                return False
        elif got[key] != value:
            return False
    return True


def upstream_error(code: str, message: str | re.Pattern[str], kind: str = "upstream_error") -> Json:
    return {"message": message, "type": kind, "param": None, "code": code}


# The fake's own error frames, passed through unchanged.
FAKE_429 = upstream_error("rate_limit_exceeded", "Fake upstream error 429.", "rate_limit_error")
FAKE_400 = upstream_error("invalid_model", "Fake upstream error 400.", "invalid_request_error")
FAKE_500 = upstream_error("server_error", "Fake upstream error 500.", "server_error")
FAKE_FAILED = upstream_error(
    "server_error", "The fake model failed to generate a response.", "server_error"
)
# The bridge's own errors: exact code, type and param; the message must name the cause.
CLOSED_1011 = upstream_error(
    "upstream_closed", re.compile(r"The upstream socket closed .*close code 1011\b.*")
)
CLOSED_1006 = upstream_error(
    "upstream_closed", re.compile(r"The upstream socket closed .*without a close frame \(1006\).*")
)
NOT_JSON_FRAME = upstream_error(
    "upstream_protocol_error", re.compile(r"The upstream sent a frame that is not JSON: .*")
)


class Soak:
    """The clients, the request budget and every outcome."""

    def __init__(self, args: argparse.Namespace, fake: FakeUpstream, bridge: Mitmdump) -> None:
        self.args = args
        self.fake = fake
        self.bridge = bridge
        self.rng = random.Random(args.seed)
        self.remaining = args.requests
        self.started = 0  # logical requests started
        self.answered = 0  # logical requests whose answer was checked
        self.http_requests = 0  # including resends after 503
        self.wrong: list[str] = []
        self.lost: list[str] = []
        self.kinds: Counter[str] = Counter()  # answers by kind
        self.errors: Counter[str] = Counter()  # expected error outcomes by kind
        self.labels: Counter[str] = Counter()  # x-responses-bridge
        self.warm_rss: float | None = None
        # The transcript store is an LRU of 8 x max_sessions responses: a response's entry can
        # only go once that many entries were added or used after it. "touches" counts both
        # (responses the bridge keeps a transcript for, requests continuing a known one).
        self.touches = 0
        self.recorded_at: dict[str, int] = {}  # response id -> touches when it completed
        self.chain_capacity = 8 * args.max_sessions
        self.max_resends = 0  # most 503s one request met before it was served
        self.max_wait = 0.0  # the slowest logical request, resends included (s)
        self.http: httpx.AsyncClient | None = None
        self._serial = 0

    # -- plumbing ---------------------------------------------------------------------------

    def text(self, client: int, what: str) -> str:
        self._serial += 1
        return f"c{client} n{self._serial} {what}"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.bridge.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    async def post(self, body: Json | bytes, stream: bool) -> Answer:
        """One logical request; a 503 for capacity is checked, counted and sent again."""
        assert self.http is not None
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"authorization": "Bearer sk-soak", "content-type": "application/json"}
        self.started += 1
        if self.warm_rss is None and self.started >= self.args.requests // 4:
            self.warm_rss = self.rss_mb()
        first_try = time.monotonic()
        previous = body.get("previous_response_id") if isinstance(body, dict) else None
        for attempt in range(MAX_CAPACITY_RETRIES):
            self.http_requests += 1
            if previous in self.recorded_at:
                self.touches += 1  # the bridge looks its transcript up (and moves it)
            try:
                async with self.http.stream(
                    "POST", "/responses", content=content, headers=headers
                ) as got:
                    data = b"".join([chunk async for chunk in got.aiter_bytes()])
            except httpx.HTTPError as exc:
                raise Lost(f"{type(exc).__name__}: {exc}") from exc
            answer = Answer(got.status_code, got.headers)
            if got.headers.get("content-type", "").startswith("text/event-stream"):
                check(stream and got.status_code == 200, f"SSE for a non-stream request: {body!r}")
                answer.stream, answer.events = True, parse_sse(data)
            else:
                try:
                    answer.body = json.loads(data)
                except ValueError:
                    raise Wrong(f"{got.status_code}, body not JSON: {data[:200]!r}") from None
                check(
                    got.headers.get("content-type") == "application/json",
                    f"content-type {got.headers.get('content-type')!r}",
                )
            if answer.status != 503:
                self.max_resends = max(self.max_resends, attempt)
                self.max_wait = max(self.max_wait, time.monotonic() - first_try)
                return answer
            error = answer.error()
            check(
                error.get("code") == "bridge_capacity_exceeded"
                and got.headers.get("retry-after") == "1",
                f"unexpected 503: {answer.body!r}",
            )
            self.errors["503 bridge_capacity_exceeded (sent again)"] += 1
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))
        raise Lost(f"still 503 after {MAX_CAPACITY_RETRIES} attempts")

    async def run_checked(self, kind: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run one logical request's check; record it as answered, wrong or lost."""
        try:
            await step()
        except Wrong as exc:
            self.wrong.append(f"{kind}: {exc}")
            raise
        except Lost as exc:
            self.lost.append(f"{kind}: {exc}")
            raise
        except ChainEvicted:
            self.answered += 1
            self.kinds[f"{kind}: chain past the transcript bound"] += 1
            self.errors[
                "HTTP 400 previous_response_not_found: socket and transcript both gone "
                "(past the documented 8 x max_sessions bound)"
            ] += 1
            raise
        self.answered += 1
        self.kinds[kind] += 1

    # -- successes --------------------------------------------------------------------------

    def check_success(
        self, answer: Answer, users: list[str], previous: str | None, labels: frozenset[str]
    ) -> Json:
        """A completed answer whose text proves the context the fake saw. Returns the Response."""
        check(answer.status == 200, f"status {answer.status}: {answer.body!r:.300}")
        check(answer.label in labels, f"x-responses-bridge {answer.label!r}, wanted {labels}")
        self.labels[answer.label] += 1
        expected = expected_text(users)
        if answer.stream:
            kinds = [kind for kind, _ in answer.events]
            check(kinds[0] == "response.created", f"first event {kinds[0]}")
            check(kinds[-1] == "response.completed", f"last event {kinds[-1]}")
            check(
                [e.get("sequence_number") for _, e in answer.events] == list(range(len(kinds))),
                "sequence numbers are not 0..n",
            )
            deltas = "".join(
                e["delta"] for kind, e in answer.events if kind == "response.output_text.delta"
            )
            check(deltas == expected, f"deltas {deltas!r} != {expected!r}")
            response = answer.events[-1][1]["response"]
            check(
                response["id"] == answer.events[0][1]["response"]["id"],
                "created and completed name different responses",
            )
        else:
            check(answer.body is not None, "no body")
            assert answer.body is not None
            response = answer.body
        check(response.get("status") == "completed", f"status {response.get('status')!r}")
        text = output_text(response)
        check(text == expected, f"text {text!r} != {expected!r}")
        check(
            response.get("previous_response_id") == previous,
            f"previous_response_id {response.get('previous_response_id')!r} != {previous!r}",
        )
        told = self.fake.contexts.get(response["id"])
        check(told is not None, f"the fake never created {response['id']}")
        assert told is not None
        check(answer_text(told, []) == text, "the fake says it answered something else")
        self.remember(response["id"])
        return dict(response)

    def remember(self, response_id: str) -> None:
        """A response the bridge keeps a transcript node for (completed or incomplete)."""
        self.touches += 1
        self.recorded_at[response_id] = self.touches

    def check_evicted(self, answer: Answer, previous: Any) -> None:
        """Raise ChainEvicted for a documented ``previous_response_not_found``: at least the
        store's size of entries were added or used after the previous response (less what may
        be in flight and not yet counted here). Any other ``previous_response_not_found`` for a
        response this soak saw completed is wrong."""
        if previous not in self.recorded_at or answer.status != 400 or answer.body is None:
            return
        error = answer.body.get("error")
        if not isinstance(error, dict) or error.get("code") != "previous_response_not_found":
            return
        since = self.touches - self.recorded_at[previous]
        in_flight = 2 * self.args.clients
        check(
            since + in_flight >= self.chain_capacity,
            f"previous_response_not_found for {previous} after only {since} transcript entries "
            f"were added or used (the store holds {self.chain_capacity})",
        )
        check(
            error.get("message") == f"Previous response with id '{previous}' not found.",
            f"error {error!r}",
        )
        raise ChainEvicted(since)

    async def turn(
        self,
        kind: str,
        users: list[str],
        previous: str | None,
        stream: bool,
        labels: frozenset[str] = frozenset({"reused", "rehydrated"}),
    ) -> tuple[str, str]:
        """One successful turn (``users`` ends with this turn's text): its id and socket label."""
        result: list[tuple[str, str]] = []

        async def step() -> None:
            body: Json = {"model": "m", "input": users[-1], "store": False, "stream": stream}
            if previous is not None:
                body["previous_response_id"] = previous
            answer = await self.post(body, stream)
            self.check_evicted(answer, previous)
            wanted = frozenset({"new"}) if previous is None else labels
            response = self.check_success(answer, users, previous, wanted)
            result.append((response["id"], answer.label))

        await self.run_checked(kind, step)
        return result[0]

    async def job_single(self, client: int) -> None:
        stream = self.rng.random() < 0.5
        users = [self.text(client, "single")]
        await self.turn(f"single ({'stream' if stream else 'json'})", users, None, stream)

    async def job_chain(self, client: int, turns: int) -> None:
        users: list[str] = []
        previous: str | None = None
        for index in range(turns):
            try:
                users, previous = await self.chain_turn(client, index, users, previous)
            except ChainEvicted:
                users, previous = [], None  # the conversation starts over, as a client would

    async def chain_turn(
        self, client: int, index: int, users: list[str], previous: str | None
    ) -> tuple[list[str], str]:
        """One turn of a chain, sometimes first failing upstream (429) and then resent."""
        stream = self.rng.random() < 0.5
        text = self.text(client, f"chain turn {index + 1}")
        if previous is not None and self.rng.random() < 0.15 and self.remaining > 0:
            self.remaining -= 1  # the failing attempt costs one request more
            try:
                await self.expect_error(
                    "chain turn failing upstream (429), then resent",
                    {
                        "model": "m",
                        "input": f"{text} fake:error=429:rate_limit_exceeded",
                        "store": False,
                        "stream": stream,
                        "previous_response_id": previous,
                    },
                    stream,
                    429,
                    FAKE_429,
                )
            except ChainEvicted:
                users, previous = [], None  # start over with this turn
        users = [*users, text]
        kind = "chain turn 1" if previous is None else "chain follow-up"
        response_id, _label = await self.turn(kind, users, previous, stream)
        return users, response_id

    async def job_fork(self, client: int) -> None:
        root = [self.text(client, "fork root")]
        root_id, _ = await self.turn("fork root", root, None, self.rng.random() < 0.5)
        left = [*root, self.text(client, "fork left")]
        right = [*root, self.text(client, "fork right")]
        any_route = frozenset({"reused", "forked", "rehydrated"})
        branches = await asyncio.gather(
            self.turn("fork branch (concurrent)", left, root_id, True, any_route),
            self.turn("fork branch (concurrent)", right, root_id, False, any_route),
            return_exceptions=True,
        )
        for branch in branches:
            if isinstance(branch, (Wrong, Lost)):
                raise branch
        for branch in branches:
            if isinstance(branch, ChainEvicted):
                self.remaining += 1  # the continuation is not sent: give it back
                return
            if isinstance(branch, BaseException):
                raise branch
        (left_id, left_label), (_right_id, right_label) = branches  # type: ignore[misc]
        if left_label == right_label == "reused":
            self.wrong.append("fork: both concurrent follow-ups were served on the same socket")
            raise Wrong("double reuse")
        again = [*left, self.text(client, "fork left again")]
        with contextlib.suppress(ChainEvicted):
            await self.turn("fork continued", again, left_id, True)

    # -- faults -----------------------------------------------------------------------------

    async def expect_error(
        self, kind: str, body: Json | bytes, stream: bool, status: int, error: Json
    ) -> None:
        """A request whose answer must be exactly this HTTP error."""

        async def step() -> None:
            answer = await self.post(body, stream)
            if isinstance(body, dict):
                self.check_evicted(answer, body.get("previous_response_id"))
            check(answer.status == status, f"status {answer.status}, wanted {status}")
            got = answer.error()
            check(error_matches(got, error), f"error {got!r}, wanted {error!r}")

        await self.run_checked(kind, step)
        self.errors[f"HTTP {status} {error['code']}: {kind}"] += 1

    async def expect_sse_end(self, kind: str, client: int, directive: str, end: Json) -> None:
        """A streamed request that starts normally, relays the answer's first deltas, then
        ends with the event ``end`` (its type, and for ``error`` its error object, exactly)."""
        text = self.text(client, directive)

        async def step() -> None:
            answer = await self.post({"model": "m", "input": text, "stream": True}, True)
            check(answer.status == 200 and answer.stream, f"status {answer.status}")
            kinds = [k for k, _ in answer.events]
            check(kinds[0] == "response.created", f"first event {kinds[0]}")
            check(kinds[-1] == end["type"], f"last events {kinds[-3:]}")
            check(kinds.count(end["type"]) == 1, f"{end['type']} twice")
            check("response.completed" not in kinds, "completed in a stream that must fail")
            deltas = [e["delta"] for k, e in answer.events if k == "response.output_text.delta"]
            check(bool(deltas), "no delta before the failure")
            pieces = split_text(expected_text([text]), 4)
            check(deltas == pieces[: len(deltas)], f"deltas {deltas!r} are not the answer's")
            last = answer.events[-1][1]
            if end["type"] == "error":
                inner = last.get("error")
                check(
                    isinstance(inner, dict) and error_matches(inner, end["error"]),
                    f"error event {last!r}",
                )
                check(last.get("code") == end["error"]["code"], f"error event {last!r}")
            else:
                response = last["response"]
                check(response.get("status") == "failed", f"{response.get('status')!r}")
                check(
                    response.get("error", {}).get("code") == "server_error",
                    f"response.failed {last!r:.300}",
                )

        await self.run_checked(kind, step)
        self.errors[f"SSE {end['type']}: {kind}"] += 1

    async def job_fault(self, client: int) -> None:
        choice = self.rng.randrange(11)
        stream = self.rng.random() < 0.5
        mode = "stream" if stream else "json"

        def body(directive: str) -> Json:
            return {"model": "m", "input": self.text(client, directive), "stream": stream}

        if choice == 0:
            await self.expect_error(
                f"upstream 429 before response.created ({mode})",
                body("fake:error=429:rate_limit_exceeded"),
                stream,
                429,
                FAKE_429,
            )
        elif choice == 1:
            await self.expect_error(
                f"upstream 400 before response.created ({mode})",
                body("fake:error=400:invalid_model"),
                stream,
                400,
                FAKE_400,
            )
        elif choice == 2:
            await self.expect_error(
                f"upstream drops TCP (1006) before response.created ({mode})",
                body("fake:close=1006"),
                stream,
                502,
                CLOSED_1006,
            )
        elif choice == 3:
            await self.expect_error(
                f"upstream sends a non-JSON frame ({mode})",
                body("fake:garbage=nonjson"),
                stream,
                502,
                NOT_JSON_FRAME,
            )
        elif choice == 4:
            stale = f"resp_stale_{self.rng.getrandbits(64):016x}"
            await self.expect_error(
                f"stale previous_response_id ({mode})",
                {**body("stale"), "store": False, "previous_response_id": stale},
                stream,
                400,
                {
                    "message": f"Previous response with id '{stale}' not found.",
                    "type": "invalid_request_error",
                    "param": "previous_response_id",
                    "code": "previous_response_not_found",
                },
            )
        elif choice == 5:
            await self.expect_error(
                "request body that is not JSON",
                b'{"model": "m", "input": ',
                stream,
                400,
                {
                    "message": re.compile(r"The request body is not valid JSON.*"),
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_json",
                },
            )
        elif choice == 6 and stream:
            await self.expect_sse_end(
                "upstream closes 1011 between deltas (stream)",
                client,
                "fake:close=1011 fake:phase=mid",
                {"type": "error", "error": CLOSED_1011},
            )
        elif choice == 6:
            await self.expect_error(
                "upstream closes 1011 between deltas (json)",
                body("fake:close=1011 fake:phase=mid"),
                False,
                502,
                CLOSED_1011,
            )
        elif choice == 7 and stream:
            await self.expect_sse_end(
                "upstream ends with response.failed (stream)",
                client,
                "fake:failed",
                {"type": "response.failed"},
            )
        elif choice == 7:
            await self.expect_error(
                "upstream ends with response.failed (json)",
                body("fake:failed"),
                False,
                502,
                FAKE_FAILED,
            )
        elif choice == 8 and stream:
            await self.expect_sse_end(
                "upstream error after response.created (stream)",
                client,
                "fake:error=500:server_error fake:phase=after_created",
                {"type": "error", "error": FAKE_500},
            )
        elif choice == 8:
            await self.expect_error(
                "upstream error after response.created (json)",
                body("fake:error=500:server_error fake:phase=after_created"),
                False,
                500,
                FAKE_500,
            )
        else:
            # An answer the upstream ends as incomplete: a normal 200 with its text.
            text = self.text(client, "fake:incomplete")

            async def step() -> None:
                answer = await self.post({"model": "m", "input": text, "stream": stream}, stream)
                check(answer.status == 200, f"status {answer.status}")
                if stream:
                    kinds = [k for k, _ in answer.events]
                    check(kinds[0] == "response.created", f"first event {kinds[0]}")
                    check(kinds[-1] == "response.incomplete", f"last event {kinds[-1]}")
                response = answer.events[-1][1]["response"] if stream else answer.body
                check(response is not None, "no response")
                assert response is not None
                check(response.get("status") == "incomplete", f"{response.get('status')!r}")
                check(output_text(response) == expected_text([text]), "incomplete text")
                self.remember(response["id"])

            await self.run_checked(f"response.incomplete ({mode})", step)

    # -- the clients ------------------------------------------------------------------------

    def next_job(self, client: int) -> Callable[[], Awaitable[None]] | None:
        """Reserve a job's requests from the budget, or None when it is spent."""
        if self.remaining <= 0:
            return None
        roll = self.rng.random()
        if roll < 0.25 and self.remaining >= 2:
            turns = min(self.rng.randint(2, 5), self.remaining)
            self.remaining -= turns
            return lambda: self.job_chain(client, turns)
        if roll < 0.35 and self.remaining >= 4:
            self.remaining -= 4
            return lambda: self.job_fork(client)
        if roll < 0.6:
            self.remaining -= 1
            return lambda: self.job_fault(client)
        self.remaining -= 1
        return lambda: self.job_single(client)

    async def client(self, client: int) -> None:
        while (job := self.next_job(client)) is not None:
            with contextlib.suppress(Wrong, Lost):
                await job()

    async def run(self) -> None:
        limits = httpx.Limits(
            max_connections=self.args.clients * 2, max_keepalive_connections=self.args.clients * 2
        )
        async with httpx.AsyncClient(
            base_url=self.bridge.base_url, timeout=60, limits=limits, trust_env=False
        ) as http:
            self.http = http
            await asyncio.gather(*(self.client(c) for c in range(self.args.clients)))


# --------------------------------------------------------------------------- report


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def table(title: str, rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title]
    for index, row in enumerate(rows):
        lines.append("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak the bridge: load with nothing lost.")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all (2000)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (100)")
    parser.add_argument("--seconds", type=float, default=300, help="hard time bound (300)")
    parser.add_argument("--max-sessions", type=int, default=64, help="bridge max_sessions (64)")
    parser.add_argument("--seed", type=int, default=4, help="random seed of the mix (4)")
    parser.add_argument("--log", type=Path, help="write mitmdump's log to this file")
    args = parser.parse_args()
    if args.requests < 1 or args.clients < 1 or args.seconds <= 0 or args.max_sessions < 1:
        parser.error("--requests, --clients, --max-sessions and --seconds must be positive")

    deadline = time.monotonic() + args.seconds
    runner = FakeUpstreamThread()
    fake = runner.start()
    confdir = Path(tempfile.mkdtemp(prefix="responses-bridge-soak-"))
    bridge = Mitmdump(
        [
            "--mode",
            f"reverse:http://127.0.0.1:{fake.port}",
            "--set",
            f"responses_bridge_max_sessions={args.max_sessions}",
            "--set",
            "flow_detail=0",
        ],
        confdir,
    )
    soak = Soak(args, fake, bridge)
    timed_out = False
    leftover_tasks = -1
    started = time.monotonic()

    async def drive() -> int:
        nonlocal timed_out
        try:
            # Leave time to stop mitmdump and the fake and to report within --seconds.
            budget = max(1.0, deadline - time.monotonic() - 10)
            await asyncio.wait_for(soak.run(), timeout=budget)
        except TimeoutError:
            timed_out = True
        await asyncio.sleep(0)
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    try:
        leftover_tasks = asyncio.run(drive())
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # let the bridge log its last flows and retain its last sockets
        end_rss = soak.rss_mb()
        open_sockets = fake.open_sockets
        bridge_lines = len(re.findall(r"responses-bridge: POST /v1/responses -> ", bridge.output))
        tracebacks = bridge.output.count("Traceback")
    finally:
        bridge.stop()
        if args.log is not None:
            args.log.write_text(bridge.output + "\n")
    closed_after_stop = wait_until(lambda: fake.open_sockets == 0, timeout=10)
    sockets_after_stop = fake.open_sockets
    runner.stop()

    # In flight when the time ran out counts as lost; never sent (a broken chain's rest) apart.
    lost = len(soak.lost) + (soak.started - soak.answered - len(soak.wrong) - len(soak.lost))
    unsent = args.requests - soak.started
    all_answered = soak.answered == args.requests
    warm = soak.warm_rss if soak.warm_rss is not None else float("nan")
    growth = end_rss - warm
    rows: list[tuple[str, str, str, bool]] = [
        ("requests answered and checked", str(soak.answered), f"{args.requests}", all_answered),
        ("wrong answers", str(len(soak.wrong)), "0", not soak.wrong),
        ("lost answers", str(lost), "0", lost == 0),
        ("requests never sent", str(unsent), "0", unsent == 0),
        ("time", f"{elapsed:.1f} s" + (" (cut off)" if timed_out else ""),
         f"--seconds {args.seconds:g}", not timed_out),
        ("open upstream sockets afterwards", str(open_sockets), f"<= {args.max_sessions}",
         open_sockets <= args.max_sessions),
        ("tasks left in the soak's loop", str(leftover_tasks), "0", leftover_tasks == 0),
        ("sockets open on the fake once mitmdump stopped", str(sockets_after_stop), "0",
         closed_after_stop),
        ("mitmdump RSS after warm-up (25%)", f"{warm:.1f} MB", "", True),
        ("mitmdump RSS at the end", f"{end_rss:.1f} MB", "", True),
        ("mitmdump RSS growth", f"{growth:+.1f} MB", f"< {RSS_GROWTH_LIMIT_MB:g} MB",
         growth < RSS_GROWTH_LIMIT_MB),
        ("most 503s before one request was served", str(soak.max_resends), "", True),
        ("slowest request, resends included", f"{soak.max_wait:.1f} s", "", True),
        ("tracebacks in the mitmdump log", str(tracebacks), "0", tracebacks == 0),
        ("bridge log lines / HTTP requests sent", f"{bridge_lines} / {soak.http_requests}",
         "equal", bridge_lines == soak.http_requests),
    ]  # fmt: skip
    ok = all(passed for *_, passed in rows)

    print(
        f"\nresponses-bridge soak: {args.requests} requests ({soak.http_requests} HTTP requests "
        f"with resends), {args.clients} clients, responses_bridge_max_sessions="
        f"{args.max_sessions}, seed {args.seed}: {elapsed:.1f} s, "
        f"{soak.http_requests / max(elapsed, 1e-9):.0f} HTTP requests/s\n"
    )
    verdicts = [
        (name, value, limit, "ok" if passed else "FAIL") for name, value, limit, passed in rows
    ]
    print(table("checks", [("check", "value", "limit", "result"), *verdicts]))
    for title, header, counter in (
        ("answers by kind", ("kind", "answers"), soak.kinds),
        ("errors by kind (each expected, checked exactly)", ("error", "count"), soak.errors),
        ("sockets of the successful turns (x-responses-bridge)", ("label", "turns"), soak.labels),
    ):
        counts = [(name, str(count)) for name, count in counter.most_common()]
        print("\n" + table(title, [header, *counts]))
    for title, items in (("wrong answers", soak.wrong), ("lost answers", soak.lost)):
        if items:
            print(f"\n{title} (first 10):")
            for item in items[:10]:
                print(f"  {item[:500]}")
    if tracebacks:
        print("\nmitmdump log tail:\n" + "\n".join(bridge.lines[-40:]))
    print(f"\nresult: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
