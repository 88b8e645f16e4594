"""Serving the console with waitress, bounded: a slow or flooding client cannot exhaust it.

waitress reads each request whole in its event loop before a worker thread sees it, so a client
that trickles bytes holds a connection, never a thread; connections are capped
(CONNECTION_LIMIT, more wait in the kernel's backlog), idle ones dropped after CHANNEL_TIMEOUT,
and request heads and bodies are size-limited.
"""

from __future__ import annotations

from typing import Any

from workermanager.web.app import MAX_FORM_BYTES
from workermanager.web.settings import WebSettings

#: an idle or trickling connection costs a descriptor and a few KiB in the event loop, never a
#: thread: many are kept, well under the usual 1,024 descriptors
CONNECTION_LIMIT = 256
CHANNEL_TIMEOUT = 15
BACKLOG = 128
MAX_HEADER_BYTES = 16 * 1024


def create_server(app: Any, settings: WebSettings) -> Any:
    """A waitress server bound to settings.host:port (OSError when it cannot listen), not yet
    serving: the caller may drop privileges between the bind and run()."""
    from waitress import create_server as waitress_server

    return waitress_server(
        app, host=settings.host, port=settings.port, threads=settings.threads,
        connection_limit=CONNECTION_LIMIT, channel_timeout=CHANNEL_TIMEOUT, backlog=BACKLOG,
        max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=MAX_FORM_BYTES,
        asyncore_use_poll=True, expose_tracebacks=False, ident="workermanager", clear_untrusted_proxy_headers=True)
