"""Unit tests for ``responses_bridge.protocol.headers``: what is forwarded on the upgrade, what is
redacted, and the response headers made from upstream data."""

from __future__ import annotations

import pytest

from responses_bridge.protocol.headers import (
    LOGGABLE_HEADERS,
    PER_REQUEST_HEADERS,
    error_frame_headers,
    forwardable_headers,
    identity_headers,
    is_loggable,
    merged_headers,
    passed_response_headers,
    rate_limit_headers,
    redact_headers,
)


def test_forwardable_headers_removes_hop_by_hop_and_framing() -> None:
    headers = [
        ("Host", "api.openai.com"),
        ("Authorization", "Bearer sk-test"),
        ("Content-Type", "application/json"),
        ("Content-Length", "123"),
        ("Accept-Encoding", "gzip, br"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic abc"),
        ("Proxy-Connection", "keep-alive"),
        ("Content-Encoding", "gzip"),
        ("Expect", "100-continue"),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
        ("Sec-WebSocket-Key", "x"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("Sec-WebSocket-Protocol", "chat"),
        ("X-Responses-Bridge-Secret", "s3cret"),
        ("x-responses-bridge-flow", "abc"),
        (":authority", "api.openai.com"),
        ("ChatGPT-Account-ID", "acct_1"),
        ("OpenAI-Beta", "responses_websockets=2026-02-06"),
        ("session_id", "sess-1"),
        ("originator", "codex_cli_rs"),
        ("User-Agent", "openai-python/1.0"),
        ("Accept", "text/event-stream"),
    ]
    assert forwardable_headers(headers) == [
        ("Authorization", "Bearer sk-test"),
        ("ChatGPT-Account-ID", "acct_1"),
        ("OpenAI-Beta", "responses_websockets=2026-02-06"),
        ("session_id", "sess-1"),
        ("originator", "codex_cli_rs"),
        ("User-Agent", "openai-python/1.0"),
        ("Accept", "text/event-stream"),
    ]


def test_forwardable_headers_keeps_order_duplicates_and_case() -> None:
    headers = [
        ("x-b", "2"),
        ("OpenAI-Beta", "one"),
        ("x-a", "1"),
        ("OpenAI-Beta", "two"),
        ("session-id", "s"),
        ("x-b", "3"),
    ]
    assert forwardable_headers(headers) == headers
    assert forwardable_headers(iter(headers)) == headers  # any iterable
    assert forwardable_headers([]) == []


def test_forwardable_headers_does_not_drop_lookalikes() -> None:
    headers = [
        ("X-Host", "a"),
        ("Content-Type-Options", "b"),
        ("X-Responses-Other", "c"),
        ("Authorization-Extra", "d"),
    ]
    assert forwardable_headers(headers) == headers


def test_redact_headers() -> None:
    headers = [
        ("Authorization", "Bearer sk-secret"),
        ("chatgpt-account-id", "acct_1"),
        ("Cookie", "a=b"),
        ("OpenAI-API-Key", "sk-1"),
        ("api-key", "azure-key"),
        ("X-API-Key", "k"),
        ("OpenAI-Beta", "responses_websockets=2026-02-06"),
        ("session_id", "sess-1"),
        ("Authorization", "Bearer second"),
    ]
    assert redact_headers(headers) == [
        ("Authorization", "<redacted>"),
        ("chatgpt-account-id", "<redacted>"),
        ("Cookie", "<redacted>"),
        ("OpenAI-API-Key", "<redacted>"),
        ("api-key", "<redacted>"),
        ("X-API-Key", "<redacted>"),
        ("OpenAI-Beta", "responses_websockets=2026-02-06"),
        ("session_id", "<redacted>"),
        ("Authorization", "<redacted>"),
    ]
    assert headers[0] == ("Authorization", "Bearer sk-secret")  # input untouched


def test_rate_limit_headers() -> None:
    headers = dict(
        rate_limit_headers(
            {
                "type": "codex.rate_limits",
                "rate_limits": {
                    "primary": {
                        "used_percent": 12.5,
                        "resets_in_seconds": 9,
                        "window_minutes": 300,
                        "nested": {"x": 1},
                    },
                    "secondary": None,
                },
                "credits": {"has_credits": False, "balance": None},
            }
        )
    )
    assert headers == {
        "x-codex-primary-used-percent": "12.5",
        "x-codex-primary-reset-after-seconds": "9",
        "x-codex-primary-window-minutes": "300",
        "x-codex-credits-has-credits": "false",
    }
    assert rate_limit_headers({"type": "codex.rate_limits"}) == []


@pytest.mark.parametrize(
    "name",
    ["x-goog-api-key", "Ocp-Apim-Subscription-Key", "X-Gateway-Token", "OpenAI-Project", "x-ms"],
)
def test_redaction_is_an_allowlist_unknown_headers_are_redacted(name: str) -> None:
    assert redact_headers([(name, "s3cret")]) == [(name, "<redacted>")]


@pytest.mark.parametrize(
    "name", ["User-Agent", "accept", "OpenAI-Beta", "X-Stainless-Lang", "x-request-id"]
)
def test_allowlisted_headers_are_shown(name: str) -> None:
    assert is_loggable(name)
    assert redact_headers([(name, "v1")]) == [(name, "v1")]


def test_identity_headers_are_the_forwarded_ones_minus_per_request_ones() -> None:
    headers = [
        ("Authorization", "Bearer k"),
        ("OpenAI-Project", "proj_a"),
        ("Content-Type", "application/json"),  # not forwarded
        ("X-Request-ID", "r1"),  # per request
        ("x-stainless-retry-count", "0"),  # per request
        ("session_id", "s1"),
        ("Cookie", "a=1"),
        ("X-Custom", "1"),
        ("x-custom", "2"),
    ]
    assert identity_headers(headers) == [
        ("authorization", "Bearer k"),
        ("cookie", "a=1"),
        ("openai-project", "proj_a"),
        ("session_id", "s1"),
        ("x-custom", "1"),
        ("x-custom", "2"),
    ]
    assert PER_REQUEST_HEADERS <= LOGGABLE_HEADERS


def test_rate_limit_headers_drop_names_and_values_unfit_for_a_head() -> None:
    event = {
        "type": "codex.rate_limits",
        "rate_limits": {
            "primary": {
                "used_percent": 5,
                "evil\r\nx-injected": "1",
                "spaced name": 1,
                "über": 2,
                "x" * 65: 3,
                "ok_field": "a\r\nb",
                "latin": "caf\u00e9",
                "emoji": "\U0001f600",
                "long": "y" * 201,
                "fine_one": "z",
            }
        },
        "credits": {"balance": 3, "bad key": 1},
    }
    assert rate_limit_headers(event) == [
        ("x-codex-primary-used-percent", "5"),
        ("x-codex-primary-fine-one", "z"),
        ("x-codex-credits-balance", "3"),
    ]


def test_rate_limit_headers_are_bounded_in_number() -> None:
    many = {f"field_{i}": i for i in range(500)}
    headers = rate_limit_headers({"rate_limits": {"primary": many}})
    assert 0 < len(headers) <= 32


def test_passed_response_headers_keep_the_allowlist_only() -> None:
    upstream = [
        ("X-Request-Id", "req_1"),
        ("openai-processing-ms", "12"),
        ("OpenAI-Organization", "org-a"),
        ("x-ratelimit-remaining-tokens", "999"),
        ("x-codex-primary-used-percent", "40"),
        ("retry-after", "3"),
        ("Set-Cookie", "__cf_bm=secret"),
        ("Sec-WebSocket-Accept", "abc="),
        ("Upgrade", "websocket"),
        ("Content-Length", "0"),
        ("x-responses-bridge", "fresh"),  # the bridge's own name, never from upstream
        ("server", "cloudflare"),
    ]
    assert passed_response_headers(upstream) == [
        ("x-request-id", "req_1"),
        ("openai-processing-ms", "12"),
        ("openai-organization", "org-a"),
        ("x-ratelimit-remaining-tokens", "999"),
        ("x-codex-primary-used-percent", "40"),
        ("retry-after", "3"),
    ]


@pytest.mark.parametrize(
    "pair",
    [
        ("x-request-id", "a\r\nset-cookie: x=y"),
        ("x-request-id", "caf\u00e9"),
        ("x-request-id", "x" * 1025),
        ("x-ratelimit-a\r\nb", "1"),
        ("x-ratelimit-\u00e9", "1"),
        ("", "1"),
        (7, "1"),
        ("retry-after", None),
        ("retry-after", {"seconds": 3}),
    ],
)
def test_passed_response_headers_drop_what_an_http_head_cannot_carry(pair: tuple) -> None:
    assert passed_response_headers([pair]) == []


def test_passed_response_headers_are_bounded_and_render_scalars() -> None:
    many = [(f"x-ratelimit-n{i}", i) for i in range(500)]
    assert len(passed_response_headers(many)) == 64
    assert passed_response_headers([("retry-after", 2.5), ("x-reasoning-included", True)]) == [
        ("retry-after", "2.5"),
        ("x-reasoning-included", "true"),
    ]


def test_error_frame_headers_accept_an_object_or_pairs_at_either_level() -> None:
    flat = {"type": "error", "status": 429, "headers": {"retry-after": 7, "set-cookie": "x"}}
    assert error_frame_headers(flat) == [("retry-after", "7")]
    pairs = {"type": "error", "headers": [["x-ratelimit-limit-requests", "60"], ["bad"], "x"]}
    assert error_frame_headers(pairs) == [("x-ratelimit-limit-requests", "60")]
    nested = {
        "type": "error",
        "error": {"code": "rate_limit_exceeded", "headers": {"retry-after-ms": "700"}},
    }
    assert error_frame_headers(nested) == [("retry-after-ms", "700")]
    assert error_frame_headers({"type": "error", "headers": "retry-after: 1"}) == []
    assert error_frame_headers({"type": "error"}) == []


def test_merged_headers_let_a_later_list_replace_names() -> None:
    handshake = [("x-request-id", "req_1"), ("x-codex-primary-used-percent", "10")]
    events = [("x-codex-primary-used-percent", "55"), ("x-codex-primary-window-minutes", "300")]
    assert merged_headers(handshake, events) == [
        ("x-request-id", "req_1"),
        ("x-codex-primary-used-percent", "55"),
        ("x-codex-primary-window-minutes", "300"),
    ]
    # Repeated names within one list are all kept.
    assert merged_headers([("a", "1"), ("a", "2")], []) == [("a", "1"), ("a", "2")]
