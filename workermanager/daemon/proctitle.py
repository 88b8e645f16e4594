"""Process titles, so `ps` shows what each process of the pool is doing."""

from __future__ import annotations

try:
    from setproctitle import setproctitle
except ImportError:  # the daemon runs without it; ps then shows the command line
    def setproctitle(title: str) -> None:
        return None


def set_child_title(slot: int, state: str, works_done: int, works_limit: int) -> None:
    setproctitle(f"workermanager: child {slot} [{state} {works_done}/{works_limit}]")


def set_master_title(config_path: str, children: int, concurrency: int, state: str = "") -> None:
    suffix = f" {state}" if state else ""
    setproctitle(f"workermanager: master -f {config_path} [{children}/{concurrency} children]{suffix}")
