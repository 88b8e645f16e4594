"""How many children keep the queue delay under a target, from the measured arrival rate and
process time (what operators of the Perl tool worked out by hand from its log).

Little's law: the children busy on average are L = λ·S (arrival rate times mean process time);
fewer children than that and the queue grows without end. Above it, how long jobs wait depends
on how close to L the concurrency is: the Erlang C formula (M/M/c queue: random arrivals, one
queue, c children) gives the mean wait, and the smallest c whose mean wait is under the target is
the answer. Every child of a master runs every function, so the children are sized for the
functions' load together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from workermanager.web.jobstats import FunctionHour

#: no answer above this: the load is beyond what one master keeps (config.MAX_CONCURRENCY)
MAX_CHILDREN = 1000


@dataclasses.dataclass(frozen=True)
class FunctionLoad:
    funcname: str
    arrival_rate: float  # jobs per second
    mean_process_seconds: float
    #: Little's law: children busy with this function on average
    busy: float


@dataclasses.dataclass(frozen=True)
class Sizing:
    functions: list[FunctionLoad]
    arrival_rate: float
    #: children busy on average, all functions (λ·S summed)
    busy: float
    delay_target: float
    #: the fewest children keeping the mean queue delay under the target; None: no jobs measured,
    #: or more than MAX_CHILDREN
    recommended: int | None
    #: the mean queue delay with `recommended` children, seconds
    expected_delay: float | None
    current: int | None
    #: the mean queue delay with the current children (inf: fewer than busy)
    current_delay: float | None


def erlang_c(children: int, load: float) -> float:
    """The chance that a job has to wait (M/M/c), for `load` = λ·S below `children`."""
    blocking = 1.0  # Erlang B, built up one child at a time (stable for large c)
    for k in range(1, children + 1):
        blocking = load * blocking / (k + load * blocking)
    return children * blocking / (children - load * (1 - blocking))


def mean_wait(children: int, load: float, mean_service: float) -> float:
    """Mean queue delay in seconds with `children`; inf when they cannot keep up."""
    if load <= 0:
        return 0.0
    if children <= load:
        return math.inf
    return erlang_c(children, load) * mean_service / (children - load)


def size(hours: Sequence[FunctionHour], delay_target: float, current: int | None) -> Sizing:
    loads = [FunctionLoad(h.funcname, h.arrival_rate, h.mean_process_seconds,
                          h.arrival_rate * h.mean_process_seconds) for h in hours]
    rate = sum(f.arrival_rate for f in loads)
    busy = sum(f.busy for f in loads)
    if rate <= 0:
        return Sizing(loads, 0.0, 0.0, delay_target, None, None, current, None)
    service = busy / rate
    recommended = expected = None
    for children in range(max(1, math.floor(busy) + 1), MAX_CHILDREN + 1):
        wait = mean_wait(children, busy, service)
        if wait <= delay_target:
            recommended, expected = children, wait
            break
    current_delay = mean_wait(current, busy, service) if current else None
    return Sizing(loads, rate, busy, delay_target, recommended, expected, current, current_delay)
