"""Throw-away TLS material for tests: a CA and a server certificate made per run, a TLS
terminator that forwards to a plain local port (to put the fake upstream behind TLS), and a plain
TCP forwarder (to put it on another address or port)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca_and_cert(
    directory: Path, hostname: str = "localhost", *, ip_addresses: Iterable[str] = ()
) -> tuple[Path, Path, Path]:
    """Write ca.pem, server.pem and server-key.pem for ``hostname``, as real APIs' certificates
    are: the name only (plus ``ip_addresses`` as IP SANs, only where a test asks for them)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "responses-bridge test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@contextlib.contextmanager
def tls_terminator(
    cert: Path, key: Path, target_port: int, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[dict[str, Any]]:
    """Serve TLS on ``host``:``port`` (default 127.0.0.1, a free port; in a thread) and forward
    each connection to 127.0.0.1:``target_port``.
    Yields ``{"port": int, "handshakes": int, "sni": list[str | None]}``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sni: list[str | None] = []

    def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    context.sni_callback = remember_sni  # type: ignore[assignment]
    info: dict[str, Any] = {"port": 0, "handshakes": 0, "sni": sni}
    with _forwarding(info, "handshakes", target_port, host, port, context):
        yield info


@contextlib.contextmanager
def tcp_forwarder(
    target_port: int, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[dict[str, int]]:
    """Accept plain TCP on ``host``:``port`` (in a thread) and forward each connection to
    127.0.0.1:``target_port``. Sockets are made in the new thread, which inherits the network
    namespace of the thread that enters this. Yields ``{"port": int, "connections": int}``."""
    info = {"port": 0, "connections": 0}
    with _forwarding(info, "connections", target_port, host, port, None):
        yield info


@contextlib.contextmanager
def _forwarding(
    info: dict[str, Any],
    counter: str,
    target_port: int,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
) -> Iterator[None]:
    """Listen on ``host``:``port`` (TLS with ``context``) in a thread, forward every connection
    to 127.0.0.1:``target_port``, count them in ``info[counter]`` and put the port in
    ``info["port"]`` (0 when binding failed)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info[counter] += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def main() -> None:
        try:
            server = await asyncio.start_server(handle, host, port, ssl=context)
            info["port"] = server.sockets[0].getsockname()[1]
        finally:
            ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            async with server:
                await server.serve_forever()

    with _running(loop, main(), ready):
        yield


@contextlib.contextmanager
def _running(
    loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, None], ready: threading.Event
) -> Iterator[None]:
    """Run ``main`` on ``loop`` in a daemon thread until the block ends."""
    thread = threading.Thread(target=loop.run_until_complete, args=(main,), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield
    finally:
        _shut_down(loop, thread)


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Drop every open connection at once (a retained upstream socket would otherwise keep
    the server waiting for it), then end the loop's tasks."""

    def abort_everything() -> None:
        for transport in list(_TRANSPORTS.get(loop, ())):
            transport.abort()
        for task in asyncio.all_tasks(loop):
            task.cancel()

    loop.call_soon_threadsafe(abort_everything)
    thread.join(5)
    _TRANSPORTS.pop(loop, None)


_TRANSPORTS: dict[asyncio.AbstractEventLoop, set[asyncio.BaseTransport]] = {}


def _track(writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    _TRANSPORTS.setdefault(loop, set()).add(writer.transport)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a forwarded connection until it ends."""
    _track(writer)
    with contextlib.suppress(Exception):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
