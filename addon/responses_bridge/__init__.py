"""responses-bridge: OpenAI Responses API over HTTP, replayed on the API's WebSocket mode.

The package is imported as ``responses_bridge`` everywhere (addon, tests, mypy): ``addon/`` is the
import root, which is also what ``mitmdump -s addon/bridge.py`` puts on ``sys.path``.
"""

__version__ = "0.1.0"
