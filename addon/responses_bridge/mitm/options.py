"""The addon's options: one table declares them, and ``parse`` turns their values into the
bridge's configuration.

As mitmproxy's own addons do, parsing raises ``ValueError`` with a message that names the
option; the addon's ``configure`` turns it into ``OptionsError`` (mitmproxy does not enforce an
addon option's ``choices``, and an unparsable ``--set`` value would otherwise surface late).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import certifi

from responses_bridge.protocol.lanes import MAX_LANES_PER_SOCKET
from responses_bridge.protocol.request import parse_host_patterns, validate_upstream_override
from responses_bridge.state.limits import Limits
from responses_bridge.turn.exchange import Settings

MiB = 1024 * 1024


@dataclass(frozen=True)
class Option:
    """One ``--set responses_bridge_…`` option."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


OPTIONS: tuple[Option, ...] = (
    Option("responses_bridge", bool, True,
           "Bridge Responses API requests onto the upstream's websocket mode."),
    Option("responses_bridge_hosts", str, "",
           "Comma-separated host patterns to bridge (globs like *.openai.com); "
           "empty bridges all hosts."),
    Option("responses_bridge_upstream", str, "",
           "A ws:// or wss:// URL to send every bridged request to; "
           "empty uses the flow's own destination."),
    Option("responses_bridge_chatgpt_compat", str, "auto",
           "ChatGPT backend rules (store=false, no truncation/max_output_tokens): "
           "auto, on or off.", choices=("auto", "on", "off")),
    Option("responses_bridge_stateful", bool, True,
           "Keep upstream sockets so previous_response_id continues on the socket that holds "
           "it."),
    Option("responses_bridge_rehydrate", bool, True,
           "Keep each chain's transcript so a chain whose socket is gone continues on a fresh "
           "socket with its full context."),
    Option("responses_bridge_auto_chain", bool, True,
           "Chain full-history requests on the client's behalf: when a request resends a "
           "retained chain's conversation plus new items, send only the new items with "
           "previous_response_id on that chain's socket."),
    Option("responses_bridge_lanes", bool, True,
           "Run each owner's conversations on lanes (stream_id) of one shared upstream socket, "
           "so fresh requests and forks need no handshake and no resent transcript; an upstream "
           "that refuses lanes gets one socket per conversation."),
    Option("responses_bridge_lanes_per_socket", int, 16,
           "Most responses running at once on one shared socket (1-16, the upstream's own "
           "limit); past it, a second socket for that owner."),
    Option("responses_bridge_max_sessions", int, 64,
           "Most upstream sessions at once: conversations retained for a follow-up and requests "
           "in flight (on lanes, many share one socket)."),
    Option("responses_bridge_max_sessions_per_owner", int, 0,
           "Most upstream sockets one owner (one set of credentials and identity headers) may "
           "hold, so one client cannot take every socket; 0 leaves an eighth of max_sessions "
           "to other owners."),
    Option("responses_bridge_warm_sockets", int, 1,
           "Upstream sockets opened ahead per credential and upstream, so a fresh request does "
           "not wait for a handshake (within max_sessions; closed after session_ttl idle)."),
    Option("responses_bridge_http_only_period", str, "600",
           "Seconds an upstream that refused the websocket upgrade (426, 404, 405: no websocket "
           "mode) gets its requests passed through over HTTP before its websocket is tried "
           "again; 0 tries every request."),
    Option("responses_bridge_session_ttl", str, "600",
           "Seconds an idle retained socket is kept."),
    Option("responses_bridge_max_socket_age", str, "3300",
           "Seconds after which a socket is not used again (the upstream ends them at 60 min)."),
    Option("responses_bridge_drain_timeout", str, "30",
           "Seconds to keep reading an answer whose client left, so its socket stays usable."),
    Option("responses_bridge_write_timeout", str, "60",
           "Seconds a client may read nothing of a streamed answer while more is waiting; then "
           "its answer ends and the upstream socket is drained or closed."),
    Option("responses_bridge_transcript_max_bytes", int, 16 * MiB,
           "Largest transcript kept per chain for rehydration; a longer chain is not "
           "rehydrated."),
    Option("responses_bridge_transcripts_total_bytes", int, 256 * MiB,
           "Bytes (as compact JSON) of all kept transcripts together; beyond it the least "
           "recently used chains' transcripts are dropped."),
    Option("responses_bridge_connect_timeout", str, "15",
           "Seconds to wait for the upstream websocket handshake."),
    Option("responses_bridge_idle_timeout", str, "300",
           "Seconds of upstream silence after which a response fails "
           "(504 before the stream starts)."),
    Option("responses_bridge_max_body_bytes", int, 32 * MiB,
           "Largest request body accepted; larger ones get 413."),
    Option("responses_bridge_keepalive", str, "15",
           "Seconds of upstream silence after which a streaming client gets an SSE comment "
           "line (keeps clients and other proxies from timing out); 0 turns it off."),
    Option("responses_bridge_forward_vendor_events", bool, False,
           "Forward vendor events (codex.*, responsesapi.*) to clients after response.created."),
)  # fmt: skip


def declare(loader: Any) -> None:
    """Add every option to mitmproxy (``loader`` is the ``load`` hook's ``Loader``)."""
    for option in OPTIONS:
        if option.choices is None:
            loader.add_option(option.name, option.kind, option.default, option.help)
        else:
            loader.add_option(
                option.name, option.kind, option.default, option.help, choices=option.choices
            )


@dataclass(frozen=True)
class Config:
    """The parsed options: what each request runs with and what the session state keeps."""

    host_patterns: tuple[str, ...]
    upstream_override: str
    settings: Settings
    limits: Limits
    http_only_period: float
    debug: bool


def seconds(name: str, value: str, *, allow_zero: bool = False) -> float:
    """A finite number of seconds, positive (or zero where ``allow_zero``)."""
    try:
        parsed = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    valid = parsed >= 0 if allow_zero else parsed > 0
    if not valid or parsed == float("inf"):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} number of seconds, not {value!r}")
    return parsed


def upstream_ssl_context(
    *, insecure: bool, cafile: str | None, capath: str | None
) -> ssl.SSLContext:
    """Verify upstream TLS exactly as mitmproxy's own upstream connections do (``ssl_insecure``,
    ``ssl_verify_upstream_trusted_ca``, ``ssl_verify_upstream_trusted_confdir``)."""
    # Not create_default_context: it adds the system's CAs, which mitmproxy never trusts (it
    # uses certifi, or only the CA the user names).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        if cafile is None and capath is None:
            context.load_verify_locations(cafile=certifi.where())
        else:
            context.load_verify_locations(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"responses-bridge cannot load trusted certificates: {exc}") from exc
    return context


def parse(opts: Any) -> Config:
    """The bridge's configuration from mitmproxy's options (``ctx.options``)."""
    compat = opts.responses_bridge_chatgpt_compat
    if compat not in ("auto", "on", "off"):
        raise ValueError(f"responses_bridge_chatgpt_compat must be auto, on or off, not {compat!r}")
    try:
        override = validate_upstream_override(opts.responses_bridge_upstream)
    except ValueError as exc:
        raise ValueError(f"responses_bridge_upstream {exc}") from None
    for name in (
        "responses_bridge_max_body_bytes",
        "responses_bridge_max_sessions",
        "responses_bridge_transcript_max_bytes",
        "responses_bridge_transcripts_total_bytes",
    ):
        if getattr(opts, name) <= 0:
            raise ValueError(f"{name} must be positive")
    for name in ("responses_bridge_warm_sockets", "responses_bridge_max_sessions_per_owner"):
        if getattr(opts, name) < 0:
            raise ValueError(f"{name} must be 0 or more")
    lanes_per_socket = opts.responses_bridge_lanes_per_socket
    if not 1 <= lanes_per_socket <= MAX_LANES_PER_SOCKET:
        raise ValueError(
            f"responses_bridge_lanes_per_socket must be 1 to {MAX_LANES_PER_SOCKET} (an upstream "
            f"runs at most {MAX_LANES_PER_SOCKET} responses at once per socket), "
            f"not {lanes_per_socket}"
        )
    settings = Settings(
        connect_timeout=seconds(
            "responses_bridge_connect_timeout", opts.responses_bridge_connect_timeout
        ),
        idle_timeout=seconds("responses_bridge_idle_timeout", opts.responses_bridge_idle_timeout),
        chatgpt_compat=compat,
        forward_vendor_events=opts.responses_bridge_forward_vendor_events,
        keepalive=seconds(
            "responses_bridge_keepalive", opts.responses_bridge_keepalive, allow_zero=True
        ),
        max_body_bytes=opts.responses_bridge_max_body_bytes,
        stateful=opts.responses_bridge_stateful,
        rehydrate=opts.responses_bridge_rehydrate,
        auto_chain=opts.responses_bridge_auto_chain,
        lanes=opts.responses_bridge_lanes,
        drain_timeout=seconds(
            "responses_bridge_drain_timeout", opts.responses_bridge_drain_timeout
        ),
        write_timeout=seconds(
            "responses_bridge_write_timeout", opts.responses_bridge_write_timeout
        ),
        ssl_context=upstream_ssl_context(
            insecure=opts.ssl_insecure,
            cafile=opts.ssl_verify_upstream_trusted_ca,
            capath=opts.ssl_verify_upstream_trusted_confdir,
        ),
    )
    limits = Limits(
        max_sessions=opts.responses_bridge_max_sessions,
        session_ttl=seconds("responses_bridge_session_ttl", opts.responses_bridge_session_ttl),
        max_socket_age=seconds(
            "responses_bridge_max_socket_age", opts.responses_bridge_max_socket_age
        ),
        transcript_max_bytes=opts.responses_bridge_transcript_max_bytes,
        transcripts_total_bytes=opts.responses_bridge_transcripts_total_bytes,
        keep_transcripts=opts.responses_bridge_rehydrate,
        warm_sockets=opts.responses_bridge_warm_sockets,
        max_sessions_per_owner=opts.responses_bridge_max_sessions_per_owner or None,
        lanes_per_socket=lanes_per_socket,
    )
    return Config(
        host_patterns=parse_host_patterns(opts.responses_bridge_hosts),
        upstream_override=override,
        settings=settings,
        limits=limits,
        http_only_period=seconds(
            "responses_bridge_http_only_period",
            opts.responses_bridge_http_only_period,
            allow_zero=True,
        ),
        # mitmproxy puts the root logger at DEBUG and filters in its handlers, so the bridge's
        # own level follows termlog_verbosity (see the addon's configure).
        debug=getattr(opts, "termlog_verbosity", "info") == "debug",
    )
