"""TheSchwartz edge cases (issue 14, items 9-15): a replaced SQLite file, a connection broken for
good, dead databases among several, coalesce prefixes with LIKE's special characters, handles
whatever the DSN's spelling, NULL priorities, and Perl-style worker names."""

from __future__ import annotations

import pytest

from workermanager.theschwartz import Client

# --- coalesce prefixes (item 12) ----------------------------------------------------------------

CODES = ["50%off", "50xoff", "5", "a_b", "axb", "x!y", "x!!y", "x\\y", "xzy"]


@pytest.mark.parametrize("by_names", [True, False], ids=["lease-by-names", "candidates"])
def test_coalesce_prefix_is_taken_literally(queue_db, by_names):
    """`%`, `_`, the escape character and a backslash in a prefix match only themselves."""
    client = Client([queue_db], lease_by_names=by_names)
    for code in CODES:
        client.insert("coal", code, coalesce=code)

    def leased(prefix):
        found = []
        while (job := client.find_job_with_coalescing_prefix("coal", prefix)) is not None:
            found.append(job.arg)
            job.completed()
        return sorted(found)
    assert leased("50%") == ["50%off"]
    assert leased("a_") == ["a_b"]
    assert leased("x!") == ["x!!y", "x!y"]
    assert leased("x\\") == ["x\\y"]
    assert leased("5") == ["5", "50xoff"]
    client.close()


# --- NULL priorities (item 14) ------------------------------------------------------------------

@pytest.mark.parametrize("by_names", [True, False], ids=["lease-by-names", "candidates"])
def test_null_priority_runs_last_on_every_database(queue_db, by_names):
    """With `prioritize`, a job without a priority runs after every prioritized one, on all three
    databases (Perl's plain `priority DESC` puts it first on PostgreSQL only)."""
    client = Client([queue_db], prioritize=True, lease_by_names=by_names)
    for priority in (None, 1, None, 7):
        client.insert("prio", priority, priority=priority)
    assert [j.priority for j in client.list_jobs("prio")] == [7, 1, None, None]
    order = []
    while (job := client.find_job_for_workers(["prio"])) is not None:
        order.append(job.priority)
        job.completed()
    assert order == [7, 1, None, None]
    client.close()
