"""How many jobs a child leases at once: from each function's recent pace, within budget, quota and MOST."""

from __future__ import annotations

import dataclasses

from workermanager.backends.leaseahead import DECAY, MOST, LeaseAhead


@dataclasses.dataclass(eq=False)
class FakeJob:
    """A job of `funcname`: the policy reads nothing else (no backend is involved here)."""

    funcname: str


def run(ahead: LeaseAhead, funcname: str, start: float, seconds: float) -> float:
    """Hand out a job of `funcname` at `start`, back after `seconds`; returns when it came back."""
    ahead.handed_out(FakeJob(funcname), start)
    ahead.back(start + seconds)
    return start + seconds


def test_a_function_not_run_yet_is_leased_one_at_a_time():
    ahead = LeaseAhead(budget=0.005)
    assert ahead.sizes(["a"], 100) == {"a": 1}


def test_the_count_is_what_fits_in_the_budget_within_the_quota_and_most():
    ahead = LeaseAhead(budget=0.005)
    run(ahead, "a", 0.0, 0.001)  # 1 ms jobs: 5 more fit in 5 ms
    run(ahead, "b", 1.0, 0.0001)
    run(ahead, "c", 2.0, 0.010)
    assert ahead.sizes(["a", "b", "c"], 100) == {"a": 6, "b": MOST, "c": 1}
    assert ahead.sizes(["a", "b"], 3) == {"a": 3, "b": 3}  # the child is recycled after 3 more
    assert LeaseAhead(budget=0).sizes(["a"], 100) == {"a": 1}


def test_one_slow_job_shrinks_the_count_at_once_and_it_grows_back_slowly():
    ahead = LeaseAhead(budget=0.005)
    now = run(ahead, "a", 0.0, 0.0001)
    now = run(ahead, "a", now, 0.005)  # one slow job among quick ones
    assert ahead.sizes(["a"], 100) == {"a": 2}
    quick = 0
    while ahead.sizes(["a"], 100)["a"] < MOST:
        now = run(ahead, "a", now, 0.0001)
        quick += 1
    pace_needed = 0.005 / (MOST - 1)  # the pace at which MOST fit
    assert quick >= 5 and 0.005 * DECAY ** quick <= pace_needed < 0.005 * DECAY ** (quick - 1)


def test_held_jobs_are_handed_out_in_order_until_they_go_stale_then_given_back():
    ahead = LeaseAhead(stale=1.0)
    jobs = [FakeJob("a") for _ in range(3)]
    ahead.hold(jobs, 10.0)
    assert ahead.next(10.2) is jobs[0] and len(ahead) == 2
    assert ahead.next(11.5) is None  # waited past STALE behind a slow job
    assert ahead.give_back() == jobs[1:] and len(ahead) == 0 and ahead.next(11.6) is None
