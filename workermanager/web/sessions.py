"""The console's logged-in sessions, held server-side.

Flask's session is a signed cookie: on its own, a copy of it stays good after logout and for as
long as the console runs. So a login puts a random id in the cookie and in this process's set of
live ids; logout removes it, and an id older than SESSION_SECONDS is no longer live whatever the
cookie says. The set lives in the console process: a restart logs everyone out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

#: how long a login lasts (seconds), however active the session
SESSION_SECONDS = 4 * 3600
#: logins held at most; past it the oldest goes (logging in takes the token: this only bounds memory)
MAX_SESSIONS = 10000


class LiveSessions:
    """Ids of the sessions logged in, with when each began; safe across waitress's threads."""

    def __init__(self, lifetime: float = SESSION_SECONDS, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._began: OrderedDict[str, float] = OrderedDict()  # oldest first

    def start(self) -> str:
        """A new live id for a session that just logged in."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._drop_expired()
            while len(self._began) >= self.limit:
                self._began.popitem(last=False)
            self._began[session_id] = self._clock()
        return session_id

    def is_live(self, session_id: object) -> bool:
        """Whether `session_id` (what the cookie holds, of any type) is logged in now."""
        if not isinstance(session_id, str):
            return False
        with self._lock:
            self._drop_expired()
            return session_id in self._began

    def end(self, session_id: object) -> None:
        """Log the session out (an id not live is ignored)."""
        if isinstance(session_id, str):
            with self._lock:
                self._began.pop(session_id, None)

    def _drop_expired(self) -> None:
        oldest_live = self._clock() - self.lifetime
        while self._began and next(iter(self._began.values())) <= oldest_live:
            self._began.popitem(last=False)
