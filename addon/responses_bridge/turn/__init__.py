"""One bridged request, from its body to its answer: the exchange's record, the plan of what
is sent on which socket, and the relay of the upstream's events to the client.

May import ``state``, ``io`` and ``protocol``; knows nothing of mitmproxy.
"""
