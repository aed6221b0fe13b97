"""Shared fixtures: the fake upstream (in a thread) and real ``mitmdump`` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fake_upstream import FakeUpstream, FakeUpstreamThread
from tests.harness import Mitmdump

StartBridge = Callable[..., Mitmdump]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fresh fake upstream for one test."""
    runner = FakeUpstreamThread()
    yield runner.start()
    runner.stop()


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeUpstream]:
    """One fake upstream for a whole test module."""
    runner = FakeUpstreamThread()
    yield runner.start()
    runner.stop()


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mitmproxy confdir (and so one CA) for the whole run."""
    return tmp_path_factory.mktemp("mitmproxy-conf")


@pytest.fixture
def start_bridge(confdir: Path) -> Iterator[StartBridge]:
    """Start mitmdump processes with the addon; ``start_bridge(fake, "opt=value", mode=...)``."""
    started: list[Mitmdump] = []

    def start(upstream: FakeUpstream | None, *options: str, mode: str | None = None) -> Mitmdump:
        args: list[str] = []
        if mode is None and upstream is not None:
            mode = f"reverse:http://127.0.0.1:{upstream.port}"
        if mode:
            args += ["--mode", mode]
        for option in options:
            args += ["--set", option]
        # Tests count upstream connections: no pre-opened sockets unless a test asks for them.
        if not any(o.startswith("responses_bridge_warm_sockets=") for o in options):
            args += ["--set", "responses_bridge_warm_sockets=0"]
        bridge = Mitmdump(args, confdir)
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()


@pytest.fixture(scope="module")
def shared_bridge(
    shared_fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mitmdump]:
    """One mitmdump in reverse mode in front of ``shared_fake`` for a whole module."""
    bridge = Mitmdump(
        [
            "--mode",
            f"reverse:http://127.0.0.1:{shared_fake.port}",
            "--set",
            "responses_bridge_idle_timeout=5",
            "--set",
            "responses_bridge_warm_sockets=0",
        ],
        tmp_path_factory.mktemp("mitmproxy-conf-shared"),
    )
    yield bridge
    bridge.stop()
