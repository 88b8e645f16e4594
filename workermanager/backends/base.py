"""The interface every backend implements: the daemon's children talk to job servers only here.

A backend object is built in the master (so bad options fail before any fork) and `open`ed in
each child after fork, so that no socket or database connection is ever shared between
processes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workermanager.config import Option
from workermanager.worker import Job, Worker

if TYPE_CHECKING:
    from workermanager.daemon.scoreboard import DeadJob, DeathNotes
    from workermanager.startcheck import Finding


class BackendError(Exception):
    """A backend cannot do its work now (server down, bad options); the message says which."""


class BackendBroken(BackendError):
    """The backend can never work again in this process (a connection broken for good): the
    child exits and the master forks a fresh one."""


#: keys every backend accepts: the config loader sets base_dir itself
COMMON_OPTIONS: tuple[Option, ...] = (
    Option("base_dir", None, "the folder relative database paths are resolved against; the config loader "
                             "sets it to the config file's folder"),
)


class Backend(abc.ABC):
    #: the name the per-job log line shows ("TheSchwartz", "Gearman")
    log_name: str = ""
    #: the worker_options keys this backend reads, besides COMMON_OPTIONS; any other key is refused
    OPTIONS: tuple[Option, ...] = ()
    #: the backend's jobs log one line per failed attempt themselves (worker.failure_line); the
    #: child then adds none of its own when it fails a job that timed out
    logs_failures: bool = False

    def __init__(self, options: Mapping[str, Any], worker_classes: Sequence[type[Worker]]) -> None:
        """Validate `options` (the config's worker_options) without connecting anywhere.

        Raise ValueError naming the option for bad options; a key not declared in OPTIONS or
        COMMON_OPTIONS is one.
        """
        self.options = dict(options)
        known = {option.key for option in (*COMMON_OPTIONS, *self.OPTIONS)}
        unknown = sorted(str(key) for key in set(self.options) - known)
        if unknown:
            raise ValueError(f"worker_options: unknown option(s) for {self.log_name}: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        self.worker_classes = list(worker_classes)
        self.worker_by_funcname = {cls.function_name(): cls for cls in self.worker_classes}

    #: called by a backend that claims jobs ahead, each time it claims some or gives them back,
    #: with the tokens (`release_held` understands them) of those claimed and not started yet.
    #: The child notes them on its job board, whence the master hands them to the next child if
    #: this one dies. A hook, not an attribute the child looks at: most grabs claim nothing ahead.
    on_held: Callable[[Sequence[str]], None] | None = None

    def release_held(self, tokens: Sequence[str]) -> None:
        """In a fresh child: give back jobs that a child which died had claimed ahead and never
        started (what it last told `on_held`, minus those it started), so that they need not wait
        out their claim."""

    def fail_dead(self, notes: Sequence[DeadJob]) -> None:
        """In a fresh child, for each job whose child died running it, but only while the dead
        child's hand-out of the job (`DeadJob.claim`) is still the current one: a timeout kill
        (`DeadJob.timed_out`) is recorded as a failed attempt (an error row, then a retry or the end
        per the worker's max_retries); any other death gives the job back uncounted, to run again
        soon. Errors are logged, not raised. The default does nothing: see `deaths` for job
        servers that hand the job to any worker."""

    #: jobs that fail for good are kept (the config's keep_failed; docs/failed-jobs.md)
    keep_failed: bool = True
    #: where a backend whose job server keeps nothing (Gearman) keeps them: a `databases:` entry
    failed_store: Mapping[str, Any] | None = None

    #: the master's DeathNotes page (set before it forks), for backends whose job server hands a
    #: dead child's job to any worker at once (Gearman): the backend looks each job it grabs up there
    deaths: DeathNotes | None = None

    def prepare(self) -> None:
        """In the master, before it forks children (and after it dropped privileges): build what
        every child would otherwise build again for itself after fork. Objects only: never a
        connection or a socket, and nothing that names the master's pid."""

    def check(self, config_path: str) -> list[Finding]:
        """At start and in `workermanager check`, in a process that runs as the children will:
        can the job servers or databases be used? One startcheck.Finding per thing checked, each
        a line naming it; nothing may wait unbounded. `config_path` is for hints such as "run
        `workermanager init-db -f ...`". The default checks nothing."""
        return []

    @abc.abstractmethod
    def open(self) -> None:
        """Connect, in the child after fork. May raise BackendError; the child then backs off."""

    @abc.abstractmethod
    def grab(self, timeout: float, most: int = 1) -> Job | None:
        """Wait up to `timeout` seconds for one job of our worker classes and claim it.

        `most`: how many more jobs the child will run before it exits (it is recycled after
        works_per_child): a backend that claims jobs ahead never claims more than that.

        Returns None when nothing came in time. A server outage is reported as BackendError;
        the caller backs off and calls again. The returned job has `worker_class` set.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Drop connections. Jobs grabbed and not finished come back per the backend's rules."""

    def release(self, job: Job) -> None:
        """Give up a grabbed job that will not be run (fast shutdown): the server hands it out again.

        The default does nothing: the lease or the dropped connection brings the job back.
        """
