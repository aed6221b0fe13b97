"""The bridge's two network ends: the upstream websocket (the only ``websockets`` import) and
the embedded loopback HTTP server that mitmproxy streams answers from. May import ``protocol``.
"""
