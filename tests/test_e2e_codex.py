"""End to end with the real Codex CLI (npm @openai/codex) over HTTP: its second turn, which
resends the whole history, is chained upstream by the bridge."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import ROOT

CODEX = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "codex"


def codex_binary() -> str:
    if CODEX.exists():
        return str(CODEX)
    found = shutil.which("codex")
    if found is None:
        pytest.skip("the Codex CLI is not installed (scripts/setup installs it when npm exists)")
    return found


def test_codex_second_turn_is_chained(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    codex = codex_binary()
    bridge = start_bridge(fake)
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-test"\n'
        'model_provider = "bridge"\n'
        "[model_providers.bridge]\n"
        'name = "responses-bridge"\n'
        f'base_url = "{bridge.base_url}"\n'
        'env_key = "BRIDGE_TEST_KEY"\n'
        'wire_api = "responses"\n'
        "supports_websockets = false\n"
    )
    env = {**os.environ, "CODEX_HOME": str(home), "BRIDGE_TEST_KEY": "sk-codex-test"}
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTPS_PROXY", "HTTP_PROXY"):
        env.pop(var, None)

    def run(*args: str) -> str:
        done = subprocess.run(
            [codex, "exec", "--skip-git-repo-check", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    first = run("say hi")
    assert "echo: say hi" in first
    second = run("resume", "--last", "and again")
    assert "echo: and again" in second
    assert "say hi / and again" in second  # the upstream saw the whole conversation
    assert fake.connections == 1
    assert len(fake.requests) == 2
    chained = fake.requests[1]
    assert chained["previous_response_id"]
    assert [item.get("role") for item in chained["input"]] == ["user"]
    bridge.wait_for_log(r"ws chained")  # written just after the answer's end
