"""The scoreboard's two channels: the job board a child writes and the master reads, and the
pipe lines (events, and per-job lines where the master listens for them)."""

from __future__ import annotations

import os
import time

from workermanager.daemon.scoreboard import BOARD_TEXT, MAX_MESSAGE, ChildState, JobBoard, Reporter


def read_back(write, report_jobs: bool = True) -> list[dict]:
    read_fd, write_fd = os.pipe()
    try:
        write(Reporter(write_fd, report_jobs=report_jobs))
        os.close(write_fd)
        data = os.read(read_fd, 65536)
    finally:
        os.close(read_fd)
    return ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1).feed(data)


def test_the_hand_spelled_lines_are_the_json_the_master_reads():
    messages = read_back(lambda r: (r.ready(100, 4096),
                                    r.job_done("completed", 'Sandbox::Worker::"Ä"\\', 7, 12, None, 2048),
                                    r.exiting('over "memory" limit\n'),
                                    r.send("exiting", reason="recycled")))
    assert messages == [
        {"event": "ready", "works_limit": 100, "rss": 4096},
        {"event": "done", "outcome": "completed", "funcname": 'Sandbox::Worker::"Ä"\\', "works_done": 7,
         "process_ms": 12, "delay_ms": None, "rss": 2048},
        {"event": "exiting", "reason": 'over "memory" limit\n'},
        {"event": "exiting", "reason": "recycled"},
    ]


def test_without_a_listener_jobs_go_to_the_board_only():
    messages = read_back(lambda r: (r.job_started("A", "1", 1.0, 0, time.monotonic(), time.time()),
                                    r.job_done("completed", "A", 1, 0, 0, None)), report_jobs=False)
    assert messages == []


def test_the_master_reads_the_job_a_forked_child_is_running_and_then_its_counts():
    board = JobBoard()
    state = ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1, board=board)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child writes; the page is shared, not copied
        reporter = Reporter(None, board)
        reporter.job_done("completed", "A", 1, 3, 0, 4096)
        reporter.job_done("failed", "A", 2, 3, 0, None)
        reporter.job_started("Sandbox::Worker::Ä", "h" * 300, 60.0, 2, started, 1234.5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert state.read_board() is True  # jobs got done since the last reading
    assert (state.job_funcname, state.job_id, state.job_timeout) == ("Sandbox::Worker::Ä", "h" * BOARD_TEXT, 60.0)
    assert (state.job_started, state.job_started_wall, state.state) == (started, 1234.5, "busy")
    assert (state.works_done, state.completed, state.failed, state.rss) == (2, 1, 1, 4096)
    assert state.read_board() is False
    Reporter(None, board).job_done("completed", "A", 3, 1, None, None)
    state.read_board()
    assert (state.state, state.job_id, state.job_started, state.works_done) == ("idle", None, None, 3)
    board.close()


def test_the_jobs_a_dead_child_claimed_ahead_and_never_started_are_read_from_its_board():
    board = JobBoard()
    pid = os.fork()
    if pid == 0:  # after 5 jobs the child claims 4: the first runs now, a b c after it
        Reporter(None, board).held(5, ["a@1", "b@2", "c@3"])
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.unstarted_held(5, running=True) == ["a@1", "b@2", "c@3"]  # died in the claim's first job
    assert board.unstarted_held(6, running=False) == ["a@1", "b@2", "c@3"]  # between it and a
    assert board.unstarted_held(6, running=True) == ["b@2", "c@3"]  # in a
    assert board.unstarted_held(8, running=False) == ["c@3"]
    assert board.unstarted_held(9, running=True) == []
    board.held(9, [])
    assert board.unstarted_held(9, running=True) == []
    board.held(0, [f"{n:0100d}" for n in range(100)])  # more than the page holds: whole tokens only
    kept = board.unstarted_held(0, running=False)
    assert 20 < len(kept) < 100 and kept == [f"{n:0100d}" for n in range(len(kept))]
    board.close()


def test_a_board_caught_in_mid_write_is_not_believed():
    board = JobBoard()
    board.job_done(5, 5, 0, 0)
    board._page[0:8] = (board._seq + 1).to_bytes(8, "little")  # as if the writer stopped half-way
    assert board.read() is None
    state = ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1, board=board, works_done=4)
    assert state.read_board() is False and state.works_done == 4  # what it knew before stands
    board.close()


def test_garbled_lines_are_skipped_and_a_partial_line_waits_for_its_end():
    state = ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1)
    got = state.feed(b'{"event":"ready"}\n{not json}\n\xff\xfe\n[1, 2]\n{"event":"done"} tail\n\n{"event":"st')
    assert got == [{"event": "ready"}]
    assert state.feed(b'art"}\n') == [{"event": "start"}]


def test_a_child_that_never_ends_its_line_cannot_grow_the_masters_memory():
    """Job code runs in the child and may write to the report pipe: a line without end is
    dropped once it outgrows any message, up to its end, and the next line is read again."""
    state = ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=-1)
    chunk = b"x" * 65536
    for _ in range(64):
        assert state.feed(chunk) == []
        assert len(state.buffer) <= MAX_MESSAGE
    assert state.feed(b'x"}\n{"event":"ready"}\n{"event":"st') == [{"event": "ready"}]
    assert state.feed(b'art"}\n') == [{"event": "start"}]


def test_a_reporter_whose_master_is_gone_says_so_instead_of_failing():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    reporter = Reporter(write_fd, report_jobs=True)
    try:
        reporter.job_done("completed", "A", 1, 0, 0, None)  # EPIPE: SIGPIPE is ignored by Python
        assert reporter.broken
        reporter.job_done("completed", "A", 2, 0, 0, None)  # no more writes, no error
    finally:
        os.close(write_fd)
