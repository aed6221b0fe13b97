"""Unit tests for ``responses_bridge.protocol.request``: pure request-side translation."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responses_bridge.protocol.errors import BodyTooLarge, InvalidRequest
from responses_bridge.protocol.request import (
    MAX_DEPTH,
    MAX_INPUT_ITEMS,
    ClientRequest,
    build_create_frame,
    chatgpt_compat_enabled,
    destination,
    host_matches,
    is_chatgpt_upstream,
    is_ip_address,
    is_responses_path,
    parse_client_request,
    parse_host_patterns,
    upstream_url_for,
    validate_upstream_override,
)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/responses",
        "/v1/responses/",
        "/v1/responses?foo=bar",
        "/v1/responses/?foo=bar&x=1",
        "/v1/responses#frag",
        "/backend-api/codex/responses",
        "/backend-api/codex/responses/",
        "/backend-api/codex/responses?x=1",
        "/openai/v1/responses",  # a base URL with a prefix
        "/proxy/backend-api/codex/responses",
    ],
)
def test_responses_paths_match(path: str) -> None:
    assert is_responses_path(path) is True


@pytest.mark.parametrize(
    "path",
    [
        "/v1/responses/abc",
        "/v1/responses/resp_123",
        "/v1/responses/x/cancel",
        "/v1/responses/resp_1/input_items",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/response",
        "/v1/responsesx",
        "/v1xresponses",
        "/xv1/responses",
        "/responses",
        "/backend-api/responses",
        "/backend-api/codex/responses/abc",
        "/",
        "",
        "/foo?next=/v1/responses",
    ],
)
def test_other_paths_do_not_match(path: str) -> None:
    assert is_responses_path(path) is False


# --- host patterns -----------------------------------------------------------------------------


def test_parse_host_patterns() -> None:
    assert parse_host_patterns("") == ()
    assert parse_host_patterns(" , ,") == ()
    assert parse_host_patterns("api.openai.com") == ("api.openai.com",)
    assert parse_host_patterns(" API.OpenAI.com , *.ChatGPT.com,,localhost ") == (
        "api.openai.com",
        "*.chatgpt.com",
        "localhost",
    )


def test_empty_patterns_match_every_host() -> None:
    assert host_matches("api.openai.com", ()) is True
    assert host_matches("example.org", ()) is True
    assert host_matches("", parse_host_patterns("")) is True


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("api.openai.com", "api.openai.com", True),
        ("API.OPENAI.COM", "api.openai.com", True),
        ("api.openai.com", "API.OpenAI.COM", True),
        ("api.openai.com.", "api.openai.com", True),  # trailing root dot
        ("api.openai.com", "*.openai.com", True),
        ("eu.api.openai.com", "*.openai.com", True),
        ("openai.com", "*.openai.com", False),
        ("api.openai.com.evil.net", "*.openai.com", False),
        ("evilopenai.com", "*.openai.com", False),
        ("chatgpt.com", "api.openai.com, chatgpt.com", True),
        ("example.org", "api.openai.com, chatgpt.com", False),
        ("localhost", "local*", True),
        ("host1", "host?", True),
        ("host12", "host?", False),
        ("127.0.0.1", "127.0.0.*", True),
    ],
)
def test_host_matches(host: str, patterns: str, expected: bool) -> None:
    assert host_matches(host, parse_host_patterns(patterns)) is expected


# --- upstream URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "port", "path", "url"),
    [
        ("https", "api.openai.com", 443, "/v1/responses", "wss://api.openai.com/v1/responses"),
        ("http", "localhost", 80, "/v1/responses", "ws://localhost/v1/responses"),
        (
            "https",
            "api.openai.com",
            8443,
            "/v1/responses",
            "wss://api.openai.com:8443/v1/responses",
        ),
        ("http", "127.0.0.1", 8080, "/v1/responses", "ws://127.0.0.1:8080/v1/responses"),
        # The other scheme's default port is not a default here.
        ("https", "h.example", 80, "/v1/responses", "wss://h.example:80/v1/responses"),
        ("http", "h.example", 443, "/v1/responses", "ws://h.example:443/v1/responses"),
        (
            "https",
            "chatgpt.com",
            443,
            "/backend-api/codex/responses",
            "wss://chatgpt.com/backend-api/codex/responses",
        ),
        ("https", "::1", 443, "/v1/responses", "wss://[::1]/v1/responses"),
        ("http", "::1", 8000, "/v1/responses", "ws://[::1]:8000/v1/responses"),
        ("http", "[::1]", 8000, "/v1/responses", "ws://[::1]:8000/v1/responses"),
        ("https", "2001:db8::5", 443, "/v1/responses", "wss://[2001:db8::5]/v1/responses"),
        (
            "https",
            "api.openai.com",
            443,
            "/v1/responses?api-version=2&x=%20y",
            "wss://api.openai.com/v1/responses?api-version=2&x=%20y",
        ),
        ("http", "proxy.local", 81, "/a/b/v1/responses/", "ws://proxy.local:81/a/b/v1/responses/"),
    ],
)
def test_upstream_url_for(scheme: str, host: str, port: int, path: str, url: str) -> None:
    assert upstream_url_for(scheme, host, port, path) == url


@pytest.mark.parametrize(
    "value",
    [
        "ws://localhost:8080/v1/responses",
        "wss://api.openai.com/v1/responses",
        "wss://chatgpt.com/backend-api/codex/responses",
        "ws://127.0.0.1:1",
        "ws://[::1]:9000/v1/responses",
        "wss://host.example",
        "WSS://Host.Example/v1/responses",
    ],
)
def test_validate_upstream_override_accepts(value: str) -> None:
    assert validate_upstream_override(value) == value


def test_validate_upstream_override_empty_is_empty() -> None:
    assert validate_upstream_override("") == ""


@pytest.mark.parametrize(
    "value",
    [
        "https://api.openai.com/v1/responses",
        "http://localhost:8080",
        "api.openai.com",
        "localhost:8080",
        "wss://",
        "ws:///v1/responses",
        "ftp://example.com",
        "wss://host:99999/v1/responses",
        "wss://host:abc/v1/responses",
        "wss://host:-1",
        " ",
    ],
)
def test_validate_upstream_override_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        validate_upstream_override(value)


# --- ChatGPT backend ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://chatgpt.com/backend-api/codex/responses", True),
        ("wss://chatgpt.com/backend-api/codex/responses/", True),
        ("wss://chatgpt.com/backend-api/codex/responses?client=codex", True),
        ("ws://127.0.0.1:9000/backend-api/codex/responses", True),
        ("wss://api.openai.com/v1/responses", False),
        ("wss://chatgpt.com/v1/responses", False),
        ("wss://chatgpt.com/backend-api/codex/responses/abc", False),
        ("wss://example.com/v1/responses?next=/backend-api/codex/responses", False),
    ],
)
def test_is_chatgpt_upstream(url: str, expected: bool) -> None:
    assert is_chatgpt_upstream(url) is expected


@pytest.mark.parametrize(
    ("mode", "url", "expected"),
    [
        ("on", "wss://api.openai.com/v1/responses", True),
        ("on", "wss://chatgpt.com/backend-api/codex/responses", True),
        ("off", "wss://api.openai.com/v1/responses", False),
        ("off", "wss://chatgpt.com/backend-api/codex/responses", False),
        ("auto", "wss://api.openai.com/v1/responses", False),
        ("auto", "wss://chatgpt.com/backend-api/codex/responses", True),
    ],
)
def test_chatgpt_compat_enabled(mode: str, url: str, expected: bool) -> None:
    assert chatgpt_compat_enabled(mode, url) is expected


# --- headers -----------------------------------------------------------------------------------


# --- parse_client_request ----------------------------------------------------------------------


def test_parse_minimal_request() -> None:
    parsed = parse_client_request(b'{"model": "gpt-5", "input": "hi"}')
    assert parsed == ClientRequest(
        body={"model": "gpt-5", "input": "hi"}, stream=False, previous_response_id=None, store=None
    )


def test_parse_full_request_and_unknown_fields_pass_through() -> None:
    body = {
        "model": "gpt-5",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "héllo ✓"}]}],
        "stream": True,
        "store": False,
        "previous_response_id": "resp_abc",
        "background": False,
        "include": ["reasoning.encrypted_content"],
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "x_unknown": {"nested": [1, 2.5, None, True]},
        "prompt_cache_key": "k",
    }
    parsed = parse_client_request(json.dumps(body, ensure_ascii=False).encode())
    assert parsed.body == body
    assert parsed.stream is True
    assert parsed.store is False
    assert parsed.previous_response_id == "resp_abc"


def test_parse_nulls_are_absent() -> None:
    parsed = parse_client_request(
        _json(
            {
                "stream": None,
                "store": None,
                "previous_response_id": None,
                "input": None,
                "background": None,
            }
        )
    )
    assert parsed.stream is False
    assert parsed.store is None
    assert parsed.previous_response_id is None
    assert parsed.body["input"] is None


def test_parse_store_true_and_stream_false() -> None:
    parsed = parse_client_request(_json({"store": True, "stream": False}))
    assert parsed.store is True
    assert parsed.stream is False


def test_parse_accepts_utf8_bom_free_whitespace() -> None:
    parsed = parse_client_request(b'  \n{"input": []}\n  ')
    assert parsed.body == {"input": []}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"not json",
        b"{",
        b'{"model": "x",}',
        b"{'model': 'x'}",
        b'{"a": 1} trailing',
    ],
)
def test_parse_non_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(raw)
    exc = caught.value
    assert type(exc) is InvalidRequest
    assert exc.status == 400
    assert exc.error_type == "invalid_request_error"
    assert exc.code == "invalid_json"
    assert exc.message.startswith("The request body is not valid JSON")


@pytest.mark.parametrize("raw", [b'{"input": "\xff"}', b"\xc3\x28", b'{"a": "\xed\xa0\x80"}'])
def test_parse_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"
    assert "UTF-8" in caught.value.message


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"[]", "list"),
        (b'[{"model": "x"}]', "list"),
        (b'"a string"', "str"),
        (b"42", "int"),
        (b"4.5", "float"),
        (b"null", "NoneType"),
        (b"true", "bool"),
    ],
)
def test_parse_non_object(raw: bytes, name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(raw)
    exc = caught.value
    assert exc.status == 400
    assert exc.error_type == "invalid_request_error"
    assert exc.code == "invalid_json"
    assert exc.message == f"The request body must be a JSON object, not {name}."
    assert exc.param is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", "true"),
        ("stream", 1),
        ("stream", 0),
        ("stream", []),
        ("stream", {}),
        ("previous_response_id", ""),
        ("previous_response_id", 123),
        ("previous_response_id", ["resp_1"]),
        ("previous_response_id", False),
        ("store", "false"),
        ("store", 0),
        ("store", {}),
        ("input", 5),
        ("input", 1.5),
        ("input", True),
        ("input", {"role": "user", "content": "hi"}),
        ("background", "yes"),
        ("background", 1),
    ],
)
def test_parse_wrong_types(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(_json({"model": "gpt-5", field: value}))
    exc = caught.value
    assert type(exc) is InvalidRequest
    assert exc.status == 400
    assert exc.error_type == "invalid_request_error"
    assert exc.param == field
    assert exc.code == "invalid_type"
    assert f"'{field}'" in exc.message
    assert exc.body()["error"]["param"] == field
    assert exc.body()["error"]["type"] == "invalid_request_error"


def test_parse_body_too_large() -> None:
    raw = _json({"input": "x" * 100})
    with pytest.raises(BodyTooLarge) as caught:
        parse_client_request(raw, max_bytes=len(raw) - 1)
    exc = caught.value
    assert isinstance(exc, InvalidRequest)
    assert exc.status == 413
    assert exc.error_type == "invalid_request_error"
    assert exc.code == "request_too_large"
    assert str(len(raw)) in exc.message
    assert str(len(raw) - 1) in exc.message


def test_parse_body_at_limit_is_accepted() -> None:
    raw = _json({"input": "x" * 100})
    assert parse_client_request(raw, max_bytes=len(raw)).body == {"input": "x" * 100}
    assert parse_client_request(raw, max_bytes=None).body == {"input": "x" * 100}


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(BodyTooLarge):
        parse_client_request(b"\xff not even utf-8", max_bytes=3)


def test_parse_deeply_nested_json() -> None:
    raw = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(raw)
    assert caught.value.status == 400


def test_parse_huge_integer_literal() -> None:
    # Python refuses int literals over 4300 digits with a plain ValueError, not JSONDecodeError.
    raw = b'{"model": "x", "temperature": ' + b"9" * 5000 + b"}"
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_parse_rejects_non_json_constants(literal: bytes) -> None:
    # Not JSON (RFC 8259); json.dumps would send them upstream as invalid JSON again.
    with pytest.raises(InvalidRequest) as caught:
        parse_client_request(b'{"temperature": ' + literal + b"}")
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"


def test_duplicate_keys_last_wins() -> None:
    parsed = parse_client_request(b'{"stream": "no", "stream": true}')
    assert parsed.stream is True


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
CHECKED_FIELDS = ("stream", "store", "previous_response_id", "input", "background")


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_parse_arbitrary_bytes_raises_only_invalid_request(raw: bytes) -> None:
    try:
        parsed = parse_client_request(raw)
    except InvalidRequest as exc:
        assert exc.status == 400
        assert exc.error_type == "invalid_request_error"
        return
    assert isinstance(parsed.body, dict)


@PROPERTY_SETTINGS
@given(
    st.dictionaries(
        st.sampled_from([*CHECKED_FIELDS, "model", "include"]) | st.text(max_size=5),
        json_values,
        max_size=6,
    ),
    st.integers(min_value=0, max_value=400) | st.none(),
)
def test_parse_arbitrary_objects(body: dict[str, Any], max_bytes: int | None) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    try:
        parsed = parse_client_request(raw, max_bytes=max_bytes)
    except BodyTooLarge as exc:
        assert max_bytes is not None and len(raw) > max_bytes
        assert exc.status == 413
        return
    except InvalidRequest as exc:
        assert exc.status == 400
        assert exc.param in CHECKED_FIELDS
        return
    assert max_bytes is None or len(raw) <= max_bytes
    assert parsed.body == body
    assert parsed.stream is (body.get("stream") is True)
    assert parsed.store == body.get("store")
    assert parsed.previous_response_id == body.get("previous_response_id")


@PROPERTY_SETTINGS
@given(st.text(max_size=200))
def test_parse_arbitrary_text(text: str) -> None:
    try:
        parse_client_request(text.encode("utf-8", errors="surrogatepass"))
    except InvalidRequest as exc:
        assert exc.status == 400


# --- build_create_frame ------------------------------------------------------------------------


def test_build_create_frame_plain() -> None:
    body = {
        "model": "gpt-5",
        "input": [{"role": "user", "content": "hi"}],
        "stream": True,
        "background": False,
        "store": True,
        "truncation": "auto",
        "max_output_tokens": 100,
        "previous_response_id": "resp_1",
        "tools": [],
    }
    original = copy.deepcopy(body)
    frame = build_create_frame(body, chatgpt_compat=False)
    assert frame == {
        "type": "response.create",
        "model": "gpt-5",
        "input": [{"role": "user", "content": "hi"}],
        "store": True,
        "truncation": "auto",
        "max_output_tokens": 100,
        "previous_response_id": "resp_1",
        "tools": [],
    }
    assert next(iter(frame)) == "type"
    assert "response" not in frame  # flat, no wrapper
    assert body == original
    assert frame is not body


def test_build_create_frame_keeps_store_when_not_compat() -> None:
    frame = build_create_frame({"model": "m"}, chatgpt_compat=False)
    assert frame == {"type": "response.create", "model": "m"}
    assert build_create_frame({"store": False}, chatgpt_compat=False)["store"] is False


def test_build_create_frame_chatgpt_compat() -> None:
    body = {
        "model": "gpt-5-codex",
        "instructions": "be brief",
        "input": "hi",
        "stream": True,
        "background": True,
        "store": True,
        "truncation": "auto",
        "max_output_tokens": 100,
        "include": ["reasoning.encrypted_content"],
    }
    original = copy.deepcopy(body)
    frame = build_create_frame(body, chatgpt_compat=True)
    assert frame == {
        "type": "response.create",
        "model": "gpt-5-codex",
        "instructions": "be brief",
        "input": "hi",
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }
    assert body == original


def test_build_create_frame_chatgpt_compat_adds_store_false() -> None:
    frame = build_create_frame({"model": "m", "input": []}, chatgpt_compat=True)
    assert frame == {"type": "response.create", "model": "m", "input": [], "store": False}


def test_build_create_frame_body_type_cannot_override() -> None:
    frame = build_create_frame({"type": "response.cancel", "model": "m"}, chatgpt_compat=False)
    assert frame == {"type": "response.create", "model": "m"}


def test_build_create_frame_generate_false_passes_through() -> None:
    frame = build_create_frame({"model": "m", "generate": False}, chatgpt_compat=False)
    assert frame == {"type": "response.create", "model": "m", "generate": False}


def test_build_create_frame_is_json_serializable_roundtrip() -> None:
    parsed = parse_client_request(
        '{"model": "m", "input": "ünï", "stream": true, "metadata": {"k": "v"}}'.encode()
    )
    frame = build_create_frame(parsed.body, chatgpt_compat=False)
    assert json.loads(json.dumps(frame)) == {
        "type": "response.create",
        "model": "m",
        "input": "ünï",
        "metadata": {"k": "v"},
    }
    assert parsed.body["stream"] is True  # the parsed body keeps its stream flag


DIALLED = ("10.1.2.3", 443)


@pytest.mark.parametrize(
    ("scheme", "host", "port", "sni", "host_header", "dialled", "url", "address"),
    [
        # Transparent/local capture: the address was dialled, the client asked for a name.
        ("https", "10.1.2.3", 443, "api.openai.com", "api.openai.com", DIALLED,
         "wss://api.openai.com/v1/responses", DIALLED),
        ("https", "10.1.2.3", 443, "API.OpenAI.com.", None, DIALLED,
         "wss://api.openai.com/v1/responses", DIALLED),
        # No SNI: the Host header names it (plain HTTP has no SNI at all).
        ("https", "10.1.2.3", 443, None, "api.x.ai:443", DIALLED,
         "wss://api.x.ai/v1/responses", DIALLED),
        ("http", "10.1.2.3", 8080, "ignored.example", "api.local:8080", ("10.1.2.3", 8080),
         "ws://api.local:8080/v1/responses", ("10.1.2.3", 8080)),
        ("http", "fd00::5", 80, None, "[fd00::5]", ("fd00::5", 80),
         "ws://[fd00::5]/v1/responses", None),
        # Nothing but addresses: the address it is.
        ("https", "10.1.2.3", 443, None, "10.1.2.3", DIALLED,
         "wss://10.1.2.3/v1/responses", None),
        ("https", "10.1.2.3", 443, "10.9.9.9", None, DIALLED,
         "wss://10.1.2.3/v1/responses", None),
        # A name is used as it is, whatever the client's SNI (reverse, regular modes).
        ("https", "api.openai.com", 443, "localhost", "localhost:8080", ("api.openai.com", 443),
         "wss://api.openai.com/v1/responses", None),
        # Not the dialled address (an addon moved the flow, or a mode with no dialled address).
        ("https", "10.7.7.7", 443, "api.openai.com", "api.openai.com", DIALLED,
         "wss://10.7.7.7/v1/responses", None),
        ("https", "10.1.2.3", 443, "api.openai.com", "api.openai.com", None,
         "wss://10.1.2.3/v1/responses", None),
    ],
)  # fmt: skip
def test_destination_uses_the_name_and_dials_the_address(
    scheme: str,
    host: str,
    port: int,
    sni: str | None,
    host_header: str | None,
    dialled: tuple[str, int] | None,
    url: str,
    address: tuple[str, int] | None,
) -> None:
    target = destination(
        scheme, host, port, "/v1/responses", sni=sni, host_header=host_header, dialled=dialled
    )
    assert (target.url, target.address) == (url, address)
    assert target.name == urlsplit(url).hostname


@pytest.mark.parametrize(
    ("host", "expected"),
    [("10.0.0.1", True), ("::1", True), ("[fd00::1]", True), ("api.openai.com", False),
     ("localhost", False), ("10.0.0.1.example", False), ("", False)],
)  # fmt: skip
def test_is_ip_address(host: str, expected: bool) -> None:
    assert is_ip_address(host) is expected


# -- shape bounds -----------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    """A body whose deepest array sits ``depth`` levels down (the body itself is level 1)."""
    return (
        b'{"model": "m", "input": [{"a": ' + b"[" * (depth - 3) + b"0" + b"]" * (depth - 3) + b"}]}"
    )


def test_nesting_up_to_the_limit_is_accepted() -> None:
    parsed = parse_client_request(_nested(MAX_DEPTH))
    assert parsed.body["model"] == "m"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 5000, 200_000])
def test_deeper_nesting_is_a_400_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_client_request(_nested(depth))
    assert info.value.status == 400
    assert info.value.code == "invalid_json"
    assert "nest" in info.value.message or "not valid JSON" in info.value.message


def test_too_many_input_items_is_a_400() -> None:
    body = json.dumps({"model": "m", "input": [{}] * (MAX_INPUT_ITEMS + 1)}).encode()
    with pytest.raises(InvalidRequest) as info:
        parse_client_request(body)
    assert info.value.param == "input"
    assert str(MAX_INPUT_ITEMS) in info.value.message
    assert parse_client_request(
        json.dumps({"model": "m", "input": [{}] * MAX_INPUT_ITEMS}).encode()
    ).body["input"]


def test_values_counts_every_json_value() -> None:
    parsed = parse_client_request(
        b'{"model": "m", "input": [{"role": "user", "content": [{"type": "t", "text": "x"}]}],'
        b' "tools": [], "n": null}'
    )
    # body, model, input, item, role, content, part, type, text, tools, n
    assert parsed.values == 11
