"""The wire protocol, pure: requests, headers, events, SSE, errors, content codings.

No I/O and no asyncio, mitmproxy or websockets here: values in, values out. Imports nothing of
the bridge outside this folder.
"""
