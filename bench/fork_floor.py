"""The floor under `-w 1` and under any recycling: how many children per second one process can
fork and reap when each child does nothing at all (it calls os._exit(0) at once), and what each
costs in CPU and page faults.

Run it bare (`python bench/fork_floor.py`) and with the daemon's modules imported (`--daemon`, the
master's size): a daemon child does everything this child does and more, so its rate bounds
`-w 1` from above, and its CPU per child bounds what any recycle costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_daemon() -> None:
    """What the master holds when it forks: the daemon, both backends, logging with a handler."""
    import logging

    sys.path.insert(0, ROOT)
    import workermanager.backends.gearman  # noqa: F401
    import workermanager.backends.theschwartz  # noqa: F401
    import workermanager.daemon.master  # noqa: F401

    logging.getLogger().addHandler(logging.NullHandler())


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def fork_and_reap(count: int) -> str:
    started = time.perf_counter()
    parent_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    parent = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    parent_ms = (cpu_seconds(parent) - cpu_seconds(parent_before)) / count * 1000
    child_ms = (cpu_seconds(children) - cpu_seconds(children_before)) / count * 1000
    faults = (children.ru_minflt - children_before.ru_minflt) / count
    return (f"{count / elapsed:,.0f} children/s; per child: the parent's CPU {parent_ms:.2f} ms, the child's "
            f"{child_ms:.2f} ms, {faults:.0f} minor faults in the child (parent RSS {parent.ru_maxrss / 1024:.0f} MiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daemon", action="store_true", help="import the daemon's modules first (the master's size)")
    parser.add_argument("--children", type=int, default=500)
    options = parser.parse_args()
    if options.daemon:
        import_daemon()
    label = "a process with the daemon's modules" if options.daemon else "a bare Python"
    print(f"{label}, {options.children} do-nothing children: {fork_and_reap(options.children)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
