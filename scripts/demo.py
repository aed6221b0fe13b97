"""The no-API-key demo: the bridge in front of the bundled fake upstream.

Starts the fake upstream (a local websocket server that speaks WebSocket mode), runs
``mitmdump -s addon/bridge.py`` in reverse mode in front of it, shows a streamed, a JSON and a
failing request made with the openai SDK, then keeps serving until Ctrl-C (``--once`` exits).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai

from tests.fake_upstream import FakeUpstreamThread
from tests.harness import Mitmdump


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="bridge port (default 8080)")
    parser.add_argument("--once", action="store_true", help="exit after the three requests")
    args = parser.parse_args()

    runner = FakeUpstreamThread()
    fake = runner.start()
    confdir = Path(tempfile.mkdtemp(prefix="responses-bridge-demo-"))
    bridge = Mitmdump(
        ["--mode", f"reverse:http://127.0.0.1:{fake.port}", "-p", str(args.port)], confdir
    )
    try:
        base = bridge.base_url
        print(f"bridge:   {base}  (mitmdump -s addon/bridge.py, reverse mode)")
        print(f"upstream: {fake.url()}  (the bundled fake, no API key needed)\n")
        client = openai.OpenAI(base_url=base, api_key="sk-demo", max_retries=0, timeout=30)

        # The openai SDK builds its event models the first time it parses them (~0.4 s here,
        # before the first response.completed): do that once, unshown, so the timings below
        # show the bridge, not the SDK's start-up.
        for _event in client.responses.create(model="gpt-demo", input="warm-up", stream=True):
            pass

        print("1. streamed (stream=true): deltas arrive as the upstream sends them")
        started = time.monotonic()
        for event in client.responses.create(
            model="gpt-demo", input="Hello through the bridge! fake:slow=150", stream=True
        ):
            elapsed = time.monotonic() - started
            if event.type == "response.output_text.delta":
                print(f"   +{elapsed:5.2f}s delta {event.delta!r}")
            else:
                print(f"   +{elapsed:5.2f}s {event.type}")

        print("\n2. JSON (stream=false): one Response object")
        response = client.responses.create(model="gpt-demo", input="A JSON answer, please.")
        print(f"   {response.id} status={response.status} output_text={response.output_text!r}")

        print("\n3. failing: the upstream answers with an error frame before response.created")
        try:
            client.responses.create(
                model="gpt-demo", input="fake:error_status_code=429:usage_limit_reached"
            )
        except openai.APIStatusError as exc:
            print(f"   HTTP {exc.status_code}: {exc.body}")
        if args.once:
            return 0
        print(
            f"\nThe bridge keeps running; try:\n  curl -N {base}/responses "
            "-H 'content-type: application/json' "
            '-d \'{"model":"m","input":"hi fake:slow=200","stream":true}\'\n'
            "Ctrl-C stops it."
        )
        while bridge.process.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        bridge.stop()
        runner.stop()


if __name__ == "__main__":
    sys.exit(main())
