"""End to end: transparent mode (network namespaces and an nft redirect) and local capture mode.

Each run builds its own topology and removes it afterwards (also after a failure)::

    namespace rbt<pid>-<hex>-client           namespace rbt<pid>-<hex>-proxy
    veth-client 10.201.N.1/24  <──── veth ────>  veth-proxy 10.201.N.2/24

In the proxy namespace: the fake upstream on 127.0.0.1, a TLS terminator on 10.201.N.2:443 and a
plain forwarder on 10.201.N.2:80 in front of it. The terminator's certificate (from a per-run CA)
names only ``api.example.test``, as a real API's names only its host, never an address: the
client asks for that name (TLS SNI and ``Host``) while it connects to 10.201.N.2, and the bridge
must verify the name and dial the address, as mitmproxy's own upstream connection does. Also
there: ``mitmdump --mode transparent`` on :8080, and an nft rule that redirects TCP 80/443
*arriving on veth-proxy* to 8080. The client, in the client namespace, has no proxy settings
and trusts only mitmproxy's CA. The bridge's own websocket starts inside the proxy namespace
(output path, not prerouting), so it reaches the terminator or forwarder directly and never
loops back.

The in-process servers and the client switch namespace with ``setns(2)`` in a thread of their
own (threads they start inherit it); mitmdump and curl run under ``ip netns exec``. Nothing
leaves these two namespaces and loopback. Needs root, ``ip`` (iproute2) and ``nft``
(``apt-get install -y nftables``); otherwise the tests skip and say why.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, FakeUpstreamThread
from tests.harness import Mitmdump, wait_until
from tests.tlsutil import make_ca_and_cert, tcp_forwarder, tls_terminator

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
NAME_RE = re.compile(r"^rbt(\d+)-[0-9a-f]{4}-(client|proxy)$")
PROXY_PORT = 8080
API_NAME = "api.example.test"  # what the client asks for; nothing resolves it
BRIDGED_200 = r"responses-bridge: POST /v1/responses -> 200\b"
NO_PROXY_ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
}


# --------------------------------------------------------------------------- prerequisites


def netns_missing() -> str | None:
    """Why network namespaces with an nft redirect cannot be used here, or None."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    missing = []
    if os.geteuid() != 0:
        missing.append("root (to create network namespaces)")
    if shutil.which("ip") is None:
        missing.append("`ip` from iproute2 (apt-get install -y iproute2)")
    if shutil.which("nft") is None:
        missing.append("`nft` (apt-get install -y nftables)")
    return "transparent-mode test needs " + ", ".join(missing) if missing else None


def cgroup_fs_type(mount_point: str = "/sys/fs/cgroup") -> str:
    """The file system type visible at ``mount_point`` ("" when nothing is mounted there)."""
    found = ""
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and fields[4] == mount_point and "-" in fields:
                found = fields[fields.index("-") + 1]  # the last mount there is the visible one
    return found


def local_mode_missing() -> str | None:
    """Why mitmproxy's local capture mode cannot run here, or None."""
    import mitmproxy.version

    missing = []
    version = mitmproxy.version.VERSION
    if int(version.split(".")[0]) < 12:
        missing.append(f"mitmproxy 12 (this venv has {version})")
    elif importlib.util.find_spec("mitmproxy_linux") is None:
        missing.append("the mitmproxy_linux package (its eBPF redirector)")
    if sys.platform.startswith("linux"):
        if shutil.which("sudo") is None:
            missing.append("`sudo` on the PATH (mitmproxy starts its redirector with sudo)")
        fs_type = cgroup_fs_type()
        if fs_type != "cgroup2":
            missing.append(
                f"a cgroup2 mount at /sys/fs/cgroup (it is {fs_type or 'not mounted'}; with cgroup"
                " v1 the redirector fails with `bpf_link_create failed`)"
            )
    netns = netns_missing()
    if netns:
        missing.append(netns.removeprefix("transparent-mode test needs "))
    if shutil.which("curl") is None:
        missing.append("`curl` (the captured local process)")
    return "local capture mode needs " + "; ".join(missing) if missing else None


# --------------------------------------------------------------------------- namespaces


def _ip(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], T], timeout: float = 30) -> T:
    """Run ``fn`` in a new thread inside namespace ``name``; its sockets (and the threads it
    starts) stay there. Returns its result or raises its exception."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(name)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError(f"nothing from {fn!r} in namespace {name} after {timeout} s")
    return result[0]


def sweep_stale_namespaces() -> None:
    """Delete namespaces left by an earlier run of this module whose process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    for line in listing.stdout.splitlines():
        name = line.split(" ", 1)[0]
        match = NAME_RE.match(name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
        except PermissionError:
            pass


@dataclass
class Topology:
    client: str
    proxy: str
    client_addr: str
    proxy_addr: str
    ca: Path
    fake: FakeUpstream
    tls: dict[str, Any] = field(default_factory=dict)
    plain: dict[str, int] = field(default_factory=dict)

    def counts(self) -> tuple[int, int, int, int]:
        """(websocket connections, response.create frames, TLS handshakes, plain connections)."""
        return (
            self.fake.connections,
            len(self.fake.requests),
            int(self.tls["handshakes"]),
            self.plain["connections"],
        )


@contextlib.contextmanager
def topology(tmp: Path) -> Iterator[Topology]:
    """Two namespaces joined by a veth pair, with the fake upstream behind TLS (:443) and plain
    TCP (:80) on the proxy side. Everything is removed on exit."""
    reason = netns_missing()
    if reason:
        pytest.skip(reason)
    sweep_stale_namespaces()
    tag = f"rbt{os.getpid()}-{secrets.token_hex(2)}"
    client, proxy = f"{tag}-client", f"{tag}-proxy"
    subnet = f"10.201.{secrets.randbelow(254) + 1}"
    client_addr, proxy_addr = f"{subnet}.1", f"{subnet}.2"
    with contextlib.ExitStack() as stack:
        for name in (client, proxy):
            try:
                _ip("netns", "add", name)
            except RuntimeError as exc:
                pytest.skip(f"cannot create network namespaces here: {exc}")
            stack.callback(
                subprocess.run, ["ip", "netns", "delete", name], capture_output=True, timeout=10
            )
        # Made directly inside the namespaces: the pair never appears in the host's namespace.
        link = f"link add veth-client netns {client} type veth peer name veth-proxy netns {proxy}"
        _ip(*link.split())
        for name, dev, addr in (
            (client, "veth-client", client_addr),
            (proxy, "veth-proxy", proxy_addr),
        ):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        ca, cert, key = make_ca_and_cert(tmp, API_NAME)

        def start_upstream() -> Topology:
            runner = FakeUpstreamThread()
            fake = runner.start()
            stack.callback(runner.stop)
            tls = stack.enter_context(
                tls_terminator(cert, key, fake.port, host=proxy_addr, port=443)
            )
            plain = stack.enter_context(tcp_forwarder(fake.port, host=proxy_addr, port=80))
            if tls["port"] != 443 or plain["port"] != 80:
                raise RuntimeError(f"upstream listeners did not start: {tls}, {plain}")
            return Topology(client, proxy, client_addr, proxy_addr, ca, fake, tls, plain)

        yield in_netns(proxy, start_upstream)


# --------------------------------------------------------------------------- transparent mode


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with topology(tmp_path_factory.mktemp("transparent-tls")) as made:
        yield made


@pytest.fixture(scope="module")
def transparent(net: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mitmdump]:
    """mitmdump in transparent mode in the proxy namespace, with TCP 80/443 from the client's
    veth redirected to it."""
    ruleset = (
        "table ip responses_bridge_test {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "veth-proxy" tcp dport {{ 80, 443 }} redirect to :{PROXY_PORT}\n'
        "  }\n"
        "}\n"
    )
    try:
        _ip("netns", "exec", net.proxy, "nft", "-f", "-", stdin=ruleset)
    except RuntimeError as exc:
        pytest.skip(f"nft cannot load a NAT redirect here: {exc}")
    bridge = Mitmdump(
        [
            "--mode",
            "transparent",
            "--set",
            f"ssl_verify_upstream_trusted_ca={net.ca}",
            "--set",
            "responses_bridge_idle_timeout=10",
            "--set",
            "responses_bridge_warm_sockets=0",  # the test counts upstream connections
            "--set",
            f"responses_bridge_hosts={API_NAME}",  # matched against the name, not the address
        ],
        tmp_path_factory.mktemp("mitmproxy-conf-transparent"),
        prefix=["ip", "netns", "exec", net.proxy],
        listen_host="0.0.0.0",
        port=PROXY_PORT,
    )
    yield bridge
    bridge.stop()


def bridged_lines(bridge: Mitmdump) -> list[str]:
    return [line for line in bridge.lines if re.search(BRIDGED_200, line)]


def check_sse(got: httpx.Response, text: str) -> None:
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers.get("x-responses-bridge") == "new"
    body = got.text
    created, completed = (
        body.find("event: response.created"),
        body.find("event: response.completed"),
    )
    assert 0 <= created < completed, body
    assert f"echo: {text}" in body


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_transparent_mode_bridges_without_proxy_settings(
    net: Topology, transparent: Mitmdump, scheme: str
) -> None:
    text = f"transparent {scheme} {secrets.token_hex(3)}"
    before, lines_before = net.counts(), len(bridged_lines(transparent))
    mitm_ca = ssl.create_default_context(cafile=str(transparent.confdir / "mitmproxy-ca-cert.pem"))

    def post() -> httpx.Response:
        # Connects to the address, asks for the name (as a client that resolved it would).
        with httpx.Client(verify=mitm_ca, trust_env=False, timeout=20) as client:
            return client.post(
                f"{scheme}://{net.proxy_addr}/v1/responses",
                json={"model": "m", "input": text, "stream": True},
                headers={"authorization": "Bearer sk-transparent", "host": API_NAME},
                extensions={"sni_hostname": API_NAME},
            )

    got = in_netns(net.client, post)
    # Bridged (the TLS answer came from mitmproxy's CA, the only one the client trusts).
    check_sse(got, text)
    transparent.wait_for_log(
        re.escape(f"{net.client_addr}:")
        + r".*POST "
        + re.escape(f"{scheme}://{net.proxy_addr}/v1/responses")  # mitmproxy's own line
    )
    # The bridge writes its line just after the answer's end (an earlier case's line matches too).
    wait_until(
        lambda: len(bridged_lines(transparent)) > lines_before, what="this request's bridge line"
    )
    line = bridged_lines(transparent)[-1]
    # Exactly one upstream websocket, one frame, over the right listener: no loop.
    after = net.counts()
    tls_delta, plain_delta = (1, 0) if scheme == "https" else (0, 1)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1), (before, after)
    assert (after[2] - before[2], after[3] - before[3]) == (tls_delta, plain_delta)
    assert text in json.dumps(net.fake.requests[-1])
    # The upgrade asked for the name; over TLS, SNI and the verified certificate were the name.
    assert net.fake.handshake_headers[-1].get("host", "") == API_NAME
    if scheme == "https":
        assert net.tls["sni"][-1] == API_NAME
    ws_scheme = "wss" if scheme == "https" else "ws"
    assert line.endswith(f" · {ws_scheme}://{API_NAME}/v1/responses"), line
    assert len(bridged_lines(transparent)) == lines_before + 1, (line, transparent.output)
    # mitmproxy saw no websocket of its own bridge (that is what a loop would look like).
    assert not [x for x in transparent.lines if re.search(r"GET \S*/v1/responses", x)]
    assert not [x for x in transparent.lines if "101 Switching Protocols" in x]


# --------------------------------------------------------------------------- local capture mode

LOCAL_MISSING = local_mode_missing()


@pytest.mark.skipif(LOCAL_MISSING is not None, reason=LOCAL_MISSING or "")
def test_local_capture_mode_bridges_a_local_process(tmp_path: Path) -> None:
    # A copy of curl with a name nothing else on the machine has: local:<name> captures it only.
    name = f"rbtcurl{secrets.token_hex(2)}"
    curl = tmp_path / name
    shutil.copy2(shutil.which("curl") or "curl", curl)
    confdir = tmp_path / "conf"
    with topology(tmp_path) as made:
        before = made.counts()
        bridge = Mitmdump(
            [
                "--mode",
                f"local:{name}",
                "--set",
                f"ssl_verify_upstream_trusted_ca={made.ca}",
                "--set",
                "responses_bridge_warm_sockets=0",
            ],
            confdir,
            prefix=["ip", "netns", "exec", made.client],
            ready_pattern=r"Local redirector started",
        )
        try:
            text = f"local {secrets.token_hex(3)}"
            ca = str(confdir / "mitmproxy-ca-cert.pem")
            payload = json.dumps({"model": "m", "input": text, "stream": True})
            command = ["ip", "netns", "exec", made.client, str(curl), "-sS", "--noproxy", "*"]
            command += ["--max-time", "20", "--cacert", ca, "--data-binary", payload]
            command += ["-H", "content-type: application/json", "-H", "authorization: Bearer sk-l"]
            # The name resolves to the address only for curl: the bridge must dial the address.
            command += ["--resolve", f"{API_NAME}:443:{made.proxy_addr}"]
            command.append(f"https://{API_NAME}/v1/responses")
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=30, env=NO_PROXY_ENV
            )
            assert done.returncode == 0, (done.stderr, bridge.output)
            body = done.stdout
            assert (
                0 <= body.find("event: response.created") < body.find("event: response.completed")
            ), body
            assert f"echo: {text}" in body
            bridge.wait_for_log(BRIDGED_200)
            after = made.counts()
            assert (after[0] - before[0], after[2] - before[2]) == (1, 1), (before, after)
            assert len(bridged_lines(bridge)) == 1, bridge.output
        finally:
            bridge.stop()
