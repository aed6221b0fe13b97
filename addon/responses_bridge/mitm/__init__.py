"""The mitmproxy side: options, the hop to the loopback server and back, HTTP pass-through,
the garbage-collector freeze, the contentview and counters. Everything that imports mitmproxy
lives here or in ``addon/bridge.py``; may import every other folder.
"""
