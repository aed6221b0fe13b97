"""mitmproxy glue for responses-bridge: the addon's hooks and commands.

Run ``mitmdump -s addon/bridge.py``. Every ``POST …/v1/responses`` (or the ChatGPT backend's
``…/backend-api/codex/responses``) is answered through the upstream's websocket mode, by way of
an embedded loopback server that mitmproxy streams the answer from; to every other addon the
flow looks like the pass-through flow it replaces. Where each part lives: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable
from typing import Any

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from responses_bridge.mitm import gc_freeze, hop, options, view
from responses_bridge.mitm.flows import BridgedFlows
from responses_bridge.mitm.passthrough import drop_stream_callable, is_event_stream
from responses_bridge.mitm.stats import Stats, flow_comment
from responses_bridge.state.sessions import Registry
from responses_bridge.turn.exchange import Exchange

logger = logging.getLogger("responses_bridge")


class ResponsesBridge:
    """Bridges Responses API requests onto the upstream's websocket mode."""

    def __init__(self) -> None:
        self._registry = Registry()
        self._config: options.Config | None = None
        self._flows = BridgedFlows(
            self._registry,
            secrets.token_urlsafe(32),
            self._current_config,
            lambda: self._server_task is not None,
        )
        self._router = hop.Router(self._flows)
        self._restorer = hop.Restorer(self._flows)
        self._stats = Stats()
        self._view = view.make_view()
        self._server_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._freezer: asyncio.Task[None] | None = None

    def _current_config(self) -> options.Config:
        assert self._config is not None, "configure runs before any flow"
        return self._config

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        view.register(self._view)
        options.declare(loader)

    def configure(self, updated: set[str]) -> None:
        try:
            config = options.parse(ctx.options)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        # mitmproxy puts the root logger at DEBUG and filters in its handlers, so without this
        # logger.isEnabledFor(DEBUG) is always true: every relayed frame would be formatted and
        # pushed through an add_log hook over all addons (half the proxy's CPU on a fast stream).
        logger.setLevel(logging.DEBUG if config.debug else logging.INFO)
        vars(self._registry.limits).update(vars(config.limits))  # its parts share this object
        self._flows.http_only.period = config.http_only_period
        self._config = config

    def running(self) -> None:
        if ctx.options.connection_strategy != "lazy":
            logger.info(
                "responses-bridge: setting connection_strategy=lazy, so mitmproxy does not dial a "
                "bridged request's destination before the addon has routed it."
            )
            ctx.options.update(connection_strategy="lazy")
        loop = asyncio.get_running_loop()
        if self._server_task is None:
            port = self._flows.server.bind()
            self._server_task = loop.create_task(
                self._flows.server.serve(), name="responses-bridge loopback server"
            )
            logger.info("responses-bridge: answering bridged requests from 127.0.0.1:%d", port)
        hop.install(ctx.master.addons, self._restorer, self._router)
        if self._sweeper is None:
            self._sweeper = loop.create_task(
                self._sweep_forever(), name="responses-bridge session sweeper"
            )
        if self._freezer is None:
            self._freezer = loop.create_task(
                gc_freeze.freeze_forever(), name="responses-bridge garbage collector freeze"
            )

    def done(self) -> Awaitable[Any]:
        view.unregister(self._view)
        hop.uninstall(ctx.master.addons, self._restorer, self._router)
        if self._stats.requests:
            logger.info("responses-bridge: counters %s", json.dumps(self._stats.as_dict()))
        # Frozen objects are never collected: an unloaded bridge leaves nothing frozen. (After a
        # reload the next instance's first freeze, which unfreezes first, would do it too.)
        gc_freeze.let_go()
        turns = self._flows.tasks()
        for task in [*turns, self._sweeper, self._freezer]:
            if task is not None:
                task.cancel()
        pending = [*self._flows.close(), self._registry.close_all(), *turns]
        return asyncio.gather(*pending, return_exceptions=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self._registry.limits.session_ttl / 4))
            self._registry.sweep()

    # -- hooks (routing itself is hop.Router's, at the end of the chain) ---------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self._flows.passed_through.responseheaders(flow):
            return
        exchange = self._flows.exchanges.get(flow.id)
        if exchange is None:
            return
        self._flows.put_back(flow)
        assert flow.response is not None
        if is_event_stream(flow.response):
            # Streamed as it comes; the exchange counts what mitmproxy has sent on.
            flow.response.stream = exchange.forwarded

    def response(self, flow: http.HTTPFlow) -> None:
        self._flows.put_back(flow)
        self._flows.listeners.release(flow.id)
        if self._flows.passed_through.response(flow):
            return
        exchange = self._flows.exchanges.pop(flow.id, None)
        if exchange is None:
            return
        assert flow.response is not None
        drop_stream_callable(flow.response)
        if exchange.no_websocket_mode:
            self._flows.http_only.mark(exchange.upstream_url)
        if exchange.sink is not None and not exchange.sink.attached:
            exchange.client_gone()  # answered by something else: never reached the bridge
        if flow.response.raw_content is None and exchange.stream:
            flow.response.content = bytes(exchange.sse_body)
        self._finish(flow, exchange)
        exchange.first_output_sent()

    def error(self, flow: http.HTTPFlow) -> None:
        self._flows.put_back(flow)
        self._flows.listeners.release(flow.id)
        if flow.response is not None:
            drop_stream_callable(flow.response)
        self._flows.passed_through.discard(flow.id)
        exchange = self._flows.exchanges.pop(flow.id, None)
        if exchange is not None:
            exchange.client_gone()
            exchange.error = (
                exchange.error or f"client side: {flow.error.msg if flow.error else 'error'}"
            )
            exchange.error_code = exchange.error_code or "client_disconnected"
            self._finish(flow, exchange)
            exchange.first_output_sent()

    # -- commands ----------------------------------------------------------------------------

    @command.command("responses_bridge.sessions")
    def sessions(self) -> str:
        """List upstream sessions (JSON lines: response id, owner fingerprint, upstream, socket,
        lane in use, age, idle time, turns, transcript size)."""
        return "\n".join(json.dumps(row) for row in self._registry.snapshot())

    @command.command("responses_bridge.close")
    def close(self, response_id: str) -> str:
        """Close the retained session of one response id, or every idle session with ``all``."""
        closed = self._registry.close_idle(None if response_id == "all" else response_id)
        return f"closed {closed} session(s)"

    @command.command("responses_bridge.stats")
    def stats(self) -> str:
        """Counters: requests, streamed, reused, rehydrated, forked, errors by kind, bytes; open
        sockets, lanes in use and retained chains per socket."""
        return json.dumps(
            {
                **self._stats.as_dict(),
                **self._registry.socket_stats(),
                "transcript_bytes": self._registry.transcript_bytes,
            }
        )

    # -- ending a flow -----------------------------------------------------------------------

    def _finish(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        """Attach the websocket conversation to the flow, count it, log one line."""
        flow.metadata["responses_bridge"] = exchange.inspection()
        comment = flow_comment(
            exchange.socket_state, exchange.events, exchange.first_event_ms(), exchange.duration()
        )
        flow.comment = f"{flow.comment}\n{comment}" if flow.comment else comment
        self._stats.count(
            stream=exchange.stream,
            socket_state=exchange.socket_state,
            error_code=exchange.error_code,
        )
        self._stats.retried += exchange.retried
        self._stats.bytes_relayed += exchange.bytes_relayed()
        status: int | str = exchange.status or "-"
        if exchange.status is None and flow.response is not None:
            status = flow.response.status_code  # answered by the loopback server itself
        mode = "stream" if exchange.stream else "json"
        line = (
            f"responses-bridge: {flow.request.method} {flow.request.path} -> {status} {mode} "
            f"ws {exchange.socket_state} · {exchange.events} events · "
            f"{exchange.duration() * 1000:.0f} ms · {exchange.upstream_url}"
        )
        if exchange.error:
            line += f" · {exchange.error}"
        # mitmproxy sends the end of the body to the client only after the response hooks, and
        # a log record costs more than the rest of this hook (every addon's log hook sees it):
        # it is written once this hook has returned.
        asyncio.get_running_loop().call_soon(logger.info, line)


addons = [ResponsesBridge()]
