"""What recycling costs, as the benchmarks report it, over the timed part of a run only:

  * a child's life from fork to its first job (p50/p99, from the WM_BENCH_LIVES file the bench
    workers write, see bench/workers/benchworkers.py);
  * the master's own CPU per child forked;
  * the CPU of the whole daemon (master and every child, live or reaped) per job: on a shared
    machine the one figure that holds still while wall-clock rates swing by half. Recycling's
    cost per child is the difference of this figure at -w 100 and at -w 1000000, times 100.
"""

from __future__ import annotations

import dataclasses
import os

import psutil


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@dataclasses.dataclass
class RunFigures:
    """One contender's run: throughput and, for our daemon, what its children's starts cost."""

    jobs_per_s: float
    #: children that started a job within the timed window
    children: int = 0
    life_p50_ms: float | None = None
    life_p99_ms: float | None = None
    #: the master's own CPU (user + system) in the timed window, divided by `children`
    master_cpu_ms_per_child: float | None = None
    #: the whole daemon's CPU in the timed window per job (microseconds)
    cpu_us_per_job: float | None = None

    def lives_text(self) -> str:
        if self.life_p50_ms is None:
            return "-"
        return f"{self.life_p50_ms:.1f}/{self.life_p99_ms:.1f}"

    def cpu_text(self) -> str:
        return "-" if self.cpu_us_per_job is None else f"{self.cpu_us_per_job:.0f}"

    def master_text(self) -> str:
        return "-" if self.master_cpu_ms_per_child is None else f"{self.master_cpu_ms_per_child:.2f}"


class LifeWatch:
    """Set WM_BENCH_LIVES for a daemon, then mark the timed window with start() and stop()."""

    def __init__(self, folder: str, name: str) -> None:
        self.path = os.path.join(folder, f"lives-{name}.txt")
        self.env = {"WM_BENCH_LIVES": self.path}
        #: jobs run in the timed window (set by whoever times it)
        self.jobs = 0
        self._master: psutil.Process | None = None
        self._window: list[float] = []
        self._cpu: list[float] = []
        self._tree_cpu: list[float] = []

    def _master_cpu(self) -> float:
        times = self._master.cpu_times()
        return times.user + times.system

    def _daemon_cpu(self) -> float:
        """The master's CPU, its reaped children's, and its live children's."""
        times = self._master.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self._master.children():
            try:
                live = child.cpu_times()
                total += live.user + live.system
            except psutil.NoSuchProcess:  # reaped meanwhile: children_* may or may not hold it
                pass
        return total

    def start(self, master_pid: int, wall: float) -> None:
        self._master = psutil.Process(master_pid)
        self._window, self._cpu, self._tree_cpu = [wall], [self._master_cpu()], [self._daemon_cpu()]

    def stop(self, wall: float) -> None:
        self._window.append(wall)
        self._cpu.append(self._master_cpu())
        self._tree_cpu.append(self._daemon_cpu())

    def figures(self, jobs_per_s: float, jobs: int | None = None) -> RunFigures:
        """`jobs`: how many ran in the timed window (for the CPU per job)."""
        per_job = None
        if jobs and len(self._tree_cpu) == 2:
            per_job = (self._tree_cpu[1] - self._tree_cpu[0]) * 1e6 / jobs
        lives = []
        if os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    forked, first_job = map(float, line.split())
                    if self._window[0] <= forked <= self._window[1]:
                        lives.append((first_job - forked) * 1000)
        if not lives:
            return RunFigures(jobs_per_s, cpu_us_per_job=per_job)
        return RunFigures(jobs_per_s, len(lives), percentile(lives, 0.5), percentile(lives, 0.99),
                          (self._cpu[1] - self._cpu[0]) * 1000 / len(lives), per_job)
