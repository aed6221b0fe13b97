"""Unit tests for ``responses_bridge.mitm.options``: the option table, declaring it to a real
mitmproxy ``Options``, and ``parse`` turning values into ``Config`` (or a ``ValueError`` that
names the option)."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from typing import Any

import certifi
import pytest
from mitmproxy import options as mitm_options
from mitmproxy.test import taddons

from responses_bridge.mitm import options
from responses_bridge.mitm.options import OPTIONS, Config, parse, seconds, upstream_ssl_context
from responses_bridge.state.limits import Limits
from responses_bridge.turn.exchange import Settings
from tests.tlsutil import make_ca_and_cert


class Loader:
    """What ``declare`` needs of mitmproxy's ``Loader``, straight onto a real ``Options``."""

    def __init__(self, opts: mitm_options.Options) -> None:
        self.add_option = opts.add_option


def declared(**values: Any) -> mitm_options.Options:
    """Options as mitmproxy has them once the addon is loaded, with ``values`` set. Upstream TLS
    is not verified unless a test sets ``ssl_insecure=False``: loading certifi's CAs takes
    ~30 ms, for each ``parse``."""
    opts = mitm_options.Options()
    options.declare(Loader(opts))
    opts.update(**{"ssl_insecure": True, **values})
    return opts


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


SECONDS = [o.name for o in OPTIONS if o.kind is str and _is_number(o.default)]
ZERO_SECONDS = {"responses_bridge_keepalive", "responses_bridge_http_only_period"}
INTEGERS = [o.name for o in OPTIONS if o.kind is int]
ZERO_INTEGERS = {"responses_bridge_warm_sockets", "responses_bridge_max_sessions_per_owner"}


# -- the table and declare --------------------------------------------------------------------


def test_the_table_is_well_formed() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    assert names[0] == "responses_bridge"
    for option in OPTIONS:
        assert option.name == "responses_bridge" or option.name.startswith("responses_bridge_")
        assert type(option.default) is option.kind, option.name  # bool is not taken for int
        assert option.help.strip() and option.help.endswith("."), option.name
        assert "\n" not in option.help  # mitmproxy reflows help: one paragraph
        if option.choices is not None:
            assert option.kind is str and option.default in option.choices
    # The seconds options the test below covers are the ones the table has.
    assert {*ZERO_SECONDS, "responses_bridge_session_ttl"} <= set(SECONDS)


def test_declare_adds_every_option_with_its_default_help_and_choices() -> None:
    opts = declared()
    for option in OPTIONS:
        declared_option = opts._options[option.name]
        assert getattr(opts, option.name) == option.default
        assert declared_option.typespec is option.kind
        assert declared_option.help == option.help
        assert declared_option.choices == option.choices
    assert opts._options["responses_bridge_chatgpt_compat"].choices == ("auto", "on", "off")


async def test_declare_from_a_load_hook_in_a_real_master() -> None:
    class Declaring:
        def load(self, loader: Any) -> None:
            options.declare(loader)

    with taddons.context(Declaring()) as tctx:
        assert tctx.options.responses_bridge_max_sessions == 64
        tctx.options.update(responses_bridge_max_sessions=3)
        assert parse(tctx.options).limits.max_sessions == 3


# -- parse ------------------------------------------------------------------------------------


def test_the_defaults_parse_to_the_default_limits_and_settings() -> None:
    config = parse(declared(ssl_insecure=False))
    assert config.limits == Limits()
    assert isinstance(config.settings.ssl_context, ssl.SSLContext)
    assert config.settings.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert dataclasses.replace(config.settings, ssl_context=None) == Settings()
    assert config.host_patterns == ()
    assert config.upstream_override == ""
    assert config.http_only_period == 600.0
    assert config.debug is False


def test_values_reach_the_config() -> None:
    config = parse(
        declared(
            responses_bridge_hosts=" *.OpenAI.com, ,api.example.test ",
            responses_bridge_upstream="wss://gateway.test:8443/v1/responses",
            responses_bridge_chatgpt_compat="on",
            responses_bridge_stateful=False,
            responses_bridge_auto_chain=False,
            responses_bridge_forward_vendor_events=True,
            responses_bridge_max_sessions=5,
            responses_bridge_max_sessions_per_owner=2,
            responses_bridge_warm_sockets=0,
            responses_bridge_session_ttl="12.5",
            responses_bridge_max_socket_age="100",
            responses_bridge_connect_timeout="1e1",
            responses_bridge_idle_timeout=" 7 ",
            responses_bridge_keepalive="0",
            responses_bridge_drain_timeout="3",
            responses_bridge_http_only_period="0",
            responses_bridge_max_body_bytes=1000,
            responses_bridge_transcript_max_bytes=2000,
            responses_bridge_transcripts_total_bytes=3000,
        )
    )
    assert config.host_patterns == ("*.openai.com", "api.example.test")
    assert config.upstream_override == "wss://gateway.test:8443/v1/responses"
    settings, limits = config.settings, config.limits
    assert settings.chatgpt_compat == "on"
    assert (settings.stateful, settings.auto_chain, settings.forward_vendor_events) == (
        False,
        False,
        True,
    )
    assert (settings.connect_timeout, settings.idle_timeout) == (10.0, 7.0)
    assert (settings.keepalive, settings.drain_timeout) == (0.0, 3.0)
    assert settings.max_body_bytes == 1000
    assert (limits.max_sessions, limits.max_sessions_per_owner, limits.warm_sockets) == (5, 2, 0)
    assert (limits.session_ttl, limits.max_socket_age) == (12.5, 100.0)
    assert (limits.transcript_max_bytes, limits.transcripts_total_bytes) == (2000, 3000)
    assert config.http_only_period == 0.0


def test_rehydrate_off_keeps_no_transcripts() -> None:
    config = parse(declared(responses_bridge_rehydrate=False))
    assert config.settings.rehydrate is False
    assert config.limits.keep_transcripts is False


def test_a_zero_owner_share_means_the_default_share() -> None:
    assert parse(declared(responses_bridge_max_sessions_per_owner=0)).limits == Limits()


def test_debug_follows_termlog_verbosity() -> None:
    opts = declared()
    opts.add_option("termlog_verbosity", str, "info", "Log verbosity.")
    assert parse(opts).debug is False
    opts.update(termlog_verbosity="debug")
    assert parse(opts).debug is True


def test_the_config_is_frozen() -> None:
    config = parse(declared())
    assert isinstance(config, Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.debug = True  # type: ignore[misc]


# -- parse: bad values ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", "", "AUTO", "On "])
def test_chatgpt_compat_choices_are_enforced_here(value: str) -> None:
    opts = declared(responses_bridge_chatgpt_compat=value)  # mitmproxy lets it through
    with pytest.raises(ValueError, match="responses_bridge_chatgpt_compat must be auto, on or off"):
        parse(opts)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://gateway.test/v1/responses", "must be a ws:// or wss:// URL"),
        ("wss:///v1/responses", "must be a ws:// or wss:// URL"),
        ("gateway.test", "must be a ws:// or wss:// URL"),
        ("wss://gateway.test:99999/v1/responses", "invalid port"),
    ],
)
def test_a_bad_upstream_is_refused_with_the_option_s_name(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse(declared(responses_bridge_upstream=value))
    assert str(caught.value).startswith("responses_bridge_upstream ")


@pytest.mark.parametrize("name", INTEGERS)
def test_negative_counts_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse(declared(**{name: -1}))


@pytest.mark.parametrize("name", INTEGERS)
def test_zero_counts_are_refused_where_zero_means_nothing(name: str) -> None:
    opts = declared(**{name: 0})
    if name in ZERO_INTEGERS:
        parse(opts)
    elif name == "responses_bridge_lanes_per_socket":
        with pytest.raises(ValueError, match=f"{name} must be 1 to 16"):
            parse(opts)
    else:
        with pytest.raises(ValueError, match=f"{name} must be positive"):
            parse(opts)


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", ["-1", "abc", "", "inf", "-inf", "nan", "1s"])
def test_bad_seconds_are_refused_with_the_option_s_name(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse(declared(**{name: value}))


@pytest.mark.parametrize("name", SECONDS)
def test_zero_seconds_only_where_zero_turns_something_off(name: str) -> None:
    opts = declared(**{name: "0"})
    if name in ZERO_SECONDS:
        parse(opts)
    else:
        with pytest.raises(ValueError, match=f"{name} must be a positive number"):
            parse(opts)


def test_an_unreadable_trusted_ca_is_refused() -> None:
    opts = declared(ssl_insecure=False, ssl_verify_upstream_trusted_ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="cannot load trusted certificates"):
        parse(opts)


# -- seconds ----------------------------------------------------------------------------------


def test_seconds_parses_any_finite_float_text() -> None:
    assert seconds("x", "1.5") == 1.5
    assert seconds("x", "2") == 2.0
    assert seconds("x", "1e-3") == 0.001
    assert seconds("x", " 4 ") == 4.0
    assert seconds("x", "0", allow_zero=True) == 0.0


def test_seconds_messages() -> None:
    with pytest.raises(ValueError, match=r"^opt must be a number of seconds, not 'abc'$"):
        seconds("opt", "abc")
    with pytest.raises(ValueError, match=r"^opt must be a positive number of seconds, not '0'$"):
        seconds("opt", "0")
    with pytest.raises(
        ValueError, match=r"^opt must be a non-negative number of seconds, not '-2'$"
    ):
        seconds("opt", "-2", allow_zero=True)
    with pytest.raises(ValueError, match="positive"):
        seconds("opt", "-0")  # negative zero is no positive number


# -- upstream TLS -----------------------------------------------------------------------------


def test_by_default_upstream_tls_is_verified_against_certifi() -> None:
    context = upstream_ssl_context(insecure=False, cafile=None, capath=None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0


def test_ssl_insecure_verifies_nothing() -> None:
    context = upstream_ssl_context(insecure=True, cafile="/nonexistent", capath=None)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    parsed = parse(declared(ssl_insecure=True)).settings.ssl_context
    assert parsed is not None and parsed.verify_mode == ssl.CERT_NONE


def test_a_trusted_ca_file_is_loaded(tmp_path: Path) -> None:
    ca, _cert, _key = make_ca_and_cert(tmp_path)
    context = upstream_ssl_context(insecure=False, cafile=str(ca), capath=None)
    subjects = [dict(entry[0] for entry in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "responses-bridge test CA"} in subjects


def test_a_trusted_ca_replaces_every_other_trust_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, user = tmp_path / "system", tmp_path / "user"
    system.mkdir()
    user.mkdir()
    system_ca, _cert, _key = make_ca_and_cert(system, "system.test")
    user_ca, _cert, _key = make_ca_and_cert(user, "user.test")
    # The "system" trust store is whatever OpenSSL's environment says: here one other CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(system_ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "empty"))
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 1  # the premise
    context = upstream_ssl_context(insecure=False, cafile=str(user_ca), capath=None)
    assert context.cert_store_stats()["x509_ca"] == 1  # the user's CA only
    by_default = upstream_ssl_context(insecure=False, cafile=None, capath=None)
    certifi_only = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certifi_only.load_verify_locations(cafile=certifi.where())
    assert by_default.cert_store_stats() == certifi_only.cert_store_stats()  # as mitmproxy


def test_a_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot load trusted certificates"):
        upstream_ssl_context(insecure=False, cafile=str(bogus), capath=None)


def test_lanes_per_socket_stays_within_the_upstreams_limit() -> None:
    assert parse(declared(responses_bridge_lanes_per_socket=16)).limits.lanes_per_socket == 16
    with pytest.raises(ValueError, match="at most 16 responses at once"):
        parse(declared(responses_bridge_lanes_per_socket=17))
    assert parse(declared(responses_bridge_lanes=False)).settings.lanes is False
