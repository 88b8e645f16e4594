"""The test workers' ledger (tests/workers: testworkers.record, leaseworkers), read as named rows,
and the runs of each job it shows."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from support.daemon_harness import Daemon


class LedgerRow(NamedTuple):
    """One line a test worker appended to the ledger (WM_TEST_LEDGER), one write each.

    testworkers.record (and chaosworkers, the Perl-migration example) write handle, pid, what and
    funcname; leaseworkers adds its clocks at the line and the children then holding the job."""

    handle: str
    pid: int
    what: str
    funcname: str
    mono: float | None = None  # time.monotonic() in the child (leaseworkers)
    wall: float | None = None  # time.time() in the child (leaseworkers)
    holders: tuple[int, ...] = ()  # pids that had started the job and not ended it (leaseworkers)

    @classmethod
    def parse(cls, line: str) -> LedgerRow:
        fields = line.rstrip("\n").split("\t")
        if len(fields) == 7:
            handle, pid, what, mono, wall, holders, funcname = fields
            return cls(handle, int(pid), what, funcname, float(mono), float(wall),
                       tuple(int(holder) for holder in holders.split(",") if holder))
        if len(fields) == 4:
            handle, pid, what, funcname = fields
            return cls(handle, int(pid), what, funcname)
        raise ValueError(f"ledger line with {len(fields)} fields (want 4 or 7): {line!r}")


def runs_by_job(daemon: Daemon, by_funcname: bool = False) -> dict[str, list[dict]]:
    """handle (or funcname) -> its runs in start order: {pid, start, end (monotonic, None: never
    ended), holders}."""
    runs: dict[str, list[dict]] = defaultdict(list)
    open_runs: dict[tuple[str, int], dict] = {}
    for row in daemon.ledger_rows():
        if row.what == "start":
            run = {"pid": row.pid, "start": row.mono, "wall": row.wall, "end": None, "holders": list(row.holders)}
            runs[row.funcname if by_funcname else row.handle].append(run)
            open_runs[(row.handle, row.pid)] = run
        else:
            open_runs[(row.handle, row.pid)]["end"] = row.mono
    for job_runs in runs.values():
        job_runs.sort(key=lambda run: run["start"])
    return runs
