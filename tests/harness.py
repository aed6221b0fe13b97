"""Process harness shared by tests, the demo, the soak test and the benchmark: a real
``mitmdump -s addon/bridge.py`` subprocess on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon" / "bridge.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")


class Mitmdump:
    """A running ``mitmdump -s addon/bridge.py`` subprocess on 127.0.0.1 with an ephemeral port."""

    def __init__(
        self,
        args: list[str],
        confdir: Path,
        *,
        addon: bool = True,
        script: Path = ADDON,
        prefix: list[str] | None = None,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        ready_pattern: str | None = None,
    ) -> None:
        """``prefix`` runs mitmdump through another command (``["ip", "netns", "exec", NS]``);
        ``ready_pattern`` is a log line that means "started" for modes that do not listen on a
        port (``Local redirector started``); ``port`` then stays 0."""
        self.confdir = confdir
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._started = False
        self.port = 0
        # addon/ on the path too, so a copy of bridge.py elsewhere imports the same package.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ADDON.parent)}
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            env.pop(var, None)
        command = [
            *(prefix or []),
            str(MITMDUMP),
            "--listen-host",
            listen_host,
            "-p",
            str(port),
            "--set",
            f"confdir={confdir}",
            *(["-s", str(script)] if addon else []),
            *args,
        ]
        self._needs_bridge_line = addon
        self._ready_pattern = ready_pattern
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(20) or not (self.port or ready_pattern) or not self._started:
            self.stop()
            raise RuntimeError("mitmdump did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.process.stdout is not None
        listening = bridge = False
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            found = re.search(r"listening at (?:\*|[\d.]+):(\d+)", line)
            if found:
                self.port = int(found.group(1))
                listening = True
            if self._ready_pattern is not None and re.search(self._ready_pattern, line):
                listening = True
            bridge = bridge or "answering bridged requests" in line
            if listening and (bridge or not self._needs_bridge_line):
                self._started = True
                self._ready.set()
        self._ready.set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.output}")

    def stop(self) -> None:
        stop_process(self.process)


def read_flows(path: Path) -> list[Any]:
    """The flows mitmproxy saved to ``path`` (``save_stream_file``, ``-w``)."""
    from mitmproxy import io

    with path.open("rb") as file:
        return list(io.FlowReader(file).stream())


def wait_until(predicate: Callable[[], object], timeout: float = 10, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what or 'condition'}")
        time.sleep(0.02)


def stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate a child process, killing it if it does not exit within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
