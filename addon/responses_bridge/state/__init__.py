"""The bridge's session state: who owns a socket, the socket pool, which response lives on
which socket, chain transcripts and the matching of full-history requests.

Runs on one event loop; never does I/O itself (sockets are only closed through their own
``close``). May import ``protocol``.
"""
