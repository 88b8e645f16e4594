"""Gearman peers for the interop tests: the Perl scripts' folder and our library worker serving in
a thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from workermanager.gearman import GrabbedJob, Worker

#: the Perl peers (Gearman::Client/Worker, TheSchwartz) the interop tests run: tests/perl
PERL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perl")


class WorkerThread:
    """Our library worker serving in a thread until the test ends."""

    def __init__(self, servers: list[str], functions: dict[str, Callable[[GrabbedJob], object]],
                 prefix: str | None = None, **options: object) -> None:
        self.worker = Worker(servers, prefix=prefix, max_backoff=0.2, **options)  # type: ignore[arg-type]
        for name, func in functions.items():
            self.worker.register(name, func)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.work,
                                       kwargs={"stop_if": self.stop.is_set, "poll": 0.1}, daemon=True)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.worker.close()
