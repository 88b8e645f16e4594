"""The children's pipe lines: what a Reporter writes, the master's ChildState reads back."""

from __future__ import annotations

import os

from workermanager.scoreboard import ChildState, Reporter


def read_back(write) -> list[dict]:
    read_fd, write_fd = os.pipe()
    try:
        write(Reporter(write_fd))
        os.close(write_fd)
        data = os.read(read_fd, 65536)
    finally:
        os.close(read_fd)
    return ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1).feed(data)


def test_the_hand_spelled_job_lines_are_the_json_the_master_reads():
    messages = read_back(lambda r: (r.job_started('Sandbox::Worker::"Ä"\\', "abc-12", 3600),
                                    r.job_done("completed", "Sandbox::Worker::A", 7, 12, None, 2048),
                                    r.send("exiting", reason="recycled")))
    assert messages == [
        {"event": "start", "funcname": 'Sandbox::Worker::"Ä"\\', "job_id": "abc-12", "timeout": 3600.0},
        {"event": "done", "outcome": "completed", "funcname": "Sandbox::Worker::A", "works_done": 7,
         "process_ms": 12, "delay_ms": None, "rss": 2048},
        {"event": "exiting", "reason": "recycled"},
    ]


def test_garbled_lines_are_skipped_and_a_partial_line_waits_for_its_end():
    state = ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1)
    got = state.feed(b'{"event":"ready"}\n{not json}\n\xff\xfe\n[1, 2]\n{"event":"done"} tail\n\n{"event":"st')
    assert got == [{"event": "ready"}]
    assert state.feed(b'art"}\n') == [{"event": "start"}]


def test_a_reporter_whose_master_is_gone_says_so_instead_of_failing():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    reporter = Reporter(write_fd)
    try:
        reporter.job_started("A", "1", 1.0)  # EPIPE: SIGPIPE is ignored by Python
        assert reporter.broken
        reporter.job_done("completed", "A", 1, 0, 0, None)  # no more writes, no error
    finally:
        os.close(write_fd)
