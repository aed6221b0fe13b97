"""Paired A/B of two copies of the addon: which one answers faster, on this noisy machine.

Separate benchmark runs of two versions move by more than the sub-millisecond effects worth
measuring (the VM's speed drifts over minutes). Here both versions run at once, each in its own
``mitmdump``, in front of one fake upstream, and every request of one is paired with the same
request of the other sent right after it (the order alternating): the paired differences cancel
the drift. Run it as ``scripts/abtest A/bridge.py B/bridge.py [--pairs N] [--chains N]``, e.g.
with ``A`` a ``git worktree`` of an older commit; a copy's ``responses_bridge`` package is imported
from beside its ``bridge.py``.

- first delta: a fresh request and a follow-up on a warm connection, as in the benchmark's
  figure 1 (50 ms between requests);
- chain: the wall time of 20-turn conversations that resend the whole history (figure 3's
  automatic chaining, input cost 0.2 ms/KB).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


def report(name: str, a: list[float], b: list[float], unit: str) -> None:
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    faster = sum(d < 0 for d in diffs)
    print(
        f"{name:<24} A {statistics.median(a):7.2f} {unit}  B {statistics.median(b):7.2f} {unit}"
        f"  paired median B-A {statistics.median(diffs):+.2f} {unit}"
        f"  (B faster in {faster}/{len(diffs)})"
    )


async def run(scripts: dict[str, Path], pairs: int, chains: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="abtest-"))
    fake = bench.FakeProcess(handshake_delay=0.02, input_cost=0.2, log=tmp / "fake.log")
    args = ["--mode", f"reverse:http://127.0.0.1:{fake.port}"]
    proxies = {}
    clients: dict[str, bench.Client] = {}
    try:
        for key, script in scripts.items():
            proxies[key] = bench.Mitmdump(args, tmp / key, addon=True, script=script)
            clients[key] = bench.Client("bridge", f"{proxies[key].base_url}/responses")
            await bench.Conversation(clients[key]).say("warm-up fake:deltas=8")
        fresh: dict[str, list[float]] = {"A": [], "B": []}
        follow: dict[str, list[float]] = {"A": [], "B": []}
        for index in range(pairs):
            for key in ("A", "B") if index % 2 == 0 else ("B", "A"):
                chain = bench.Conversation(clients[key], full_history=False)
                await asyncio.sleep(0.05)
                first = await chain.say(f"Hello {index}. fake:deltas=8")
                await asyncio.sleep(0.05)
                second = await chain.say(f"And a follow-up {index}. fake:deltas=8")
                fresh[key].append(first.ttfd * 1000)
                follow[key].append(second.ttfd * 1000)
        report("first delta, fresh", fresh["A"], fresh["B"], "ms")
        report("first delta, follow-up", follow["A"], follow["B"], "ms")
        walls: dict[str, list[float]] = {"A": [], "B": []}
        for index in range(chains):
            for key in ("A", "B") if index % 2 == 0 else ("B", "A"):
                conversation = bench.Conversation(clients[key], full_history=True)
                await asyncio.sleep(0.1)
                started = time.perf_counter()
                for turn in range(20):
                    await conversation.say(bench.turn_text(index, turn, 2048))
                walls[key].append((time.perf_counter() - started) * 1000)
        if chains:
            report("20-turn full history", walls["A"], walls["B"], "ms")
    finally:
        for client in clients.values():
            await client.close()
        for proxy in proxies.values():
            proxy.stop()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="bridge.py of version A")
    parser.add_argument("b", type=Path, help="bridge.py of version B")
    parser.add_argument("--pairs", type=int, default=100, help="request pairs (default 100)")
    parser.add_argument("--chains", type=int, default=10, help="chain pairs (default 10)")
    options = parser.parse_args()
    scripts = {"A": options.a.resolve(), "B": options.b.resolve()}
    for script in scripts.values():
        if not script.is_file():
            parser.error(f"no such file: {script}")
    asyncio.run(run(scripts, options.pairs, options.chains))


if __name__ == "__main__":
    main()
