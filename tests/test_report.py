"""`workermanager report`: figures from classic, ltsv and json lines, gzip files, bad lines, windows."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import time

import pytest

from workermanager.daemon.joblog import JobRecord, format_record
from workermanager.logparse import BadLine, OtherLine, parse_line, percentile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))  # local time, as the daemon writes it


def record(n: int, funcname: str = "Sandbox::Worker::A", outcome: str = "completed",
           process: int = 10, delay: int | None = 100, at: float = BASE, retry: bool = False) -> JobRecord:
    return JobRecord(backend="TheSchwartz", outcome=outcome, funcname=funcname, process_ms=process,
                     delay_ms=delay, finished_at=at, pid=4242, job_id=f"abc-{n}", worker_class="x.A",
                     retry=retry)


def report(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "workermanager", "report", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_each_format_parses_to_the_same_entry():
    entries = [parse_line(format_record(record(1, delay=155, process=2346), fmt)) for fmt in ("classic", "ltsv", "json")]
    assert entries[0] == entries[1] == entries[2]
    for retry in (True, False):
        failed = [parse_line(format_record(record(1, outcome="failed", retry=retry), fmt))
                  for fmt in ("classic", "ltsv", "json")]
        assert [entry.retry for entry in failed] == [retry] * 3
    assert (entries[0].process_ms, entries[0].delay_ms, entries[0].time) == (2346, 155, BASE)
    no_delay = [parse_line(format_record(record(1, delay=None), fmt)).delay_ms for fmt in ("classic", "ltsv", "json")]
    assert no_delay == [None, None, None]
    perl_line = "2009-10-21T22:21:40 TheSchwartz job completed Sandbox::Worker::A process:2346 delay:155"
    assert parse_line(perl_line).funcname == "Sandbox::Worker::A"


@pytest.mark.parametrize("line", [
    "garbage", "{not json", "[1, 2]", '{"time": "2024-05-01T12:00:00", "outcome": "completed"}',
    "time:2024-05-01T12:00:00\tfuncname:A\tprocess:x\toutcome:completed",
    "2024-05-01T12:00:00 TheSchwartz job completed A process:-5 delay:1",
    '{"time": "yesterday", "outcome": "completed", "funcname": "A", "process": 1}',
    "2024-01-01T00:00:01 TheSchwartz job failed. considering retry. is max_retries of " + "9" * 5000
    + " >= failures of 1? F process:1 delay:1",  # past int()'s digits
])
def test_bad_lines_are_rejected(line):
    with pytest.raises(BadLine) as caught:
        parse_line(line)
    assert not isinstance(caught.value, OtherLine)  # counted as unreadable, not as a Perl daemon line


def test_a_completed_classic_line_is_still_perls_byte_for_byte_and_a_failed_one_says_retry():
    line = format_record(record(1, delay=155, process=2346, at=BASE), "classic")
    assert line == "2024-05-01T12:00:00 TheSchwartz job completed Sandbox::Worker::A process:2346 delay:155\n"
    failed = format_record(record(1, outcome="failed", retry=True, at=BASE), "classic")
    assert failed.endswith(" job failed Sandbox::Worker::A process:10 delay:100 retry:yes\n")


def test_perl_workermanager_failure_lines_say_whether_the_job_is_retried():
    """Perl's log line for a failed attempt is TheSchwartz's debug text: 'is max_retries of M >=
    failures of F?' (yes: retried), then the funcname and times; its second line (the message)
    and the daemon's other lines are not job lines, and not unreadable either."""
    stamp = "2009-10-21T22:21:40 TheSchwartz "
    retried = parse_line(stamp + "job failed.  considering retry.  is max_retries of 3 >= failures of 1? "
                                 "Sandbox::Worker::A process:2346 delay:155")
    assert (retried.outcome, retried.funcname, retried.process_ms, retried.delay_ms, retried.retry) == \
        ("failed", "Sandbox::Worker::A", 2346, 155, True)
    last = parse_line(stamp + "job failed.  considering retry.  is max_retries of 3 >= failures of 4? "
                              "Sandbox::Worker::A process:12 delay:9")
    assert last.retry is False
    for other in (stamp + "job failed: Failed 'A' 1256131300 Sandbox::Worker::A",
                  "2009-10-21T22:21:40 WorkerManager 3 started with PID 2346"):
        with pytest.raises(OtherLine):
            parse_line(other)


def test_jobs_and_attempts_are_counted_apart(tmp_path):
    """Job 1 fails twice (retried) then completes; job 2 fails, is retried, fails for good; job 3
    completes at once; one line from an old log does not say (unknown, counted as a failed job)."""
    lines = [record(1, outcome="failed", retry=True), record(1, outcome="failed", retry=True), record(1),
             record(2, outcome="failed", retry=True), record(2, outcome="failed", retry=False), record(3)]
    path = tmp_path / "job.log"
    path.write_text("".join(format_record(r, fmt) for r, fmt in zip(lines, ["classic", "json", "ltsv"] * 2, strict=True))
                    + "2024-05-01T12:00:00 TheSchwartz job failed Sandbox::Worker::A process:10 delay:100\n"
                    + "2024-05-01T12:00:00 TheSchwartz job failed: the message Sandbox::Worker::A\n")
    data = json.loads(report("--json", str(path)).stdout)
    row = data["funcnames"]["Sandbox::Worker::A"]
    assert {key: row[key] for key in ("jobs", "attempts", "completed", "failed", "retried", "unknown")} == \
        {"jobs": 4, "attempts": 7, "completed": 2, "failed": 1, "retried": 3, "unknown": 1}
    assert (data["skipped"], data["other"]) == (0, 1)
    text = report(str(path)).stdout
    assert next(line for line in text.splitlines() if line.startswith("Sandbox")).split()[1:6] == \
        ["4", "2", "1", "7", "3"]
    assert "1 failed attempt(s) from lines that do not say" in text


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7], 99) == 7


def test_report_over_mixed_formats_gzip_and_bad_lines(tmp_path):
    # funcname A: 100 jobs with process 1..100 ms and delay 10x that, spread over three files in
    # three formats (the middle one gzipped, as logrotate leaves it); B: 3 failures, no delay.
    records = [record(i, process=i + 1, delay=(i + 1) * 10, at=BASE + i) for i in range(100)]
    records += [record(100 + i, funcname="B", outcome="failed", process=5, delay=None, at=BASE + i) for i in range(3)]
    plain = tmp_path / "job.log"
    rotated = tmp_path / "job.log.1.gz"
    ltsv = tmp_path / "job.log.2"
    with open(ltsv, "w") as handle:
        handle.writelines(format_record(r, "ltsv") for r in records[:30])
    with gzip.open(rotated, "wt") as handle:
        handle.writelines(format_record(r, "classic") for r in records[30:70])
        handle.write("this is not a job line\n\n")
    with open(plain, "w") as handle:
        handle.writelines(format_record(r, "json") for r in records[70:])
        handle.write('{"truncated": \n')

    result = report("--json", str(ltsv), str(rotated), str(plain))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["lines"] == 105 and data["skipped"] == 2
    a, b = data["funcnames"]["Sandbox::Worker::A"], data["funcnames"]["B"]
    assert (a["jobs"], a["completed"], a["failed"]) == (100, 100, 0)
    assert a["process_ms"] == {"count": 100, "p50": 50, "p95": 95, "p99": 99, "max": 100}
    assert a["delay_ms"] == {"count": 100, "p50": 500, "p95": 950, "p99": 990, "max": 1000}
    assert (b["jobs"], b["completed"], b["failed"], b["delay_ms"]) == (3, 0, 3, None)

    text = report(str(ltsv), str(rotated), str(plain))
    assert text.returncode == 0
    row = next(line for line in text.stdout.splitlines() if line.startswith("Sandbox::Worker::A"))
    assert row.split()[1:4] == ["100", "100", "0"]
    assert "50/95/99/100" in row and "500/950/990/1000" in row
    assert "2 unreadable lines skipped" in text.stdout


def test_since_and_until_window(tmp_path):
    path = tmp_path / "job.log"
    with open(path, "w") as handle:
        handle.writelines(format_record(record(i, process=i, at=BASE + 60 * i), "classic") for i in range(10))
    # minutes 3, 4, 5, 6 of the ten: since is inclusive, until exclusive
    result = report("--json", "--since", "2024-05-01T12:03:00", "--until", "2024-05-01T12:07:00", str(path))
    data = json.loads(result.stdout)
    row = data["funcnames"]["Sandbox::Worker::A"]
    assert row["jobs"] == 4 and row["process_ms"]["max"] == 6 and row["process_ms"]["p50"] == 4
    assert row["first"] == "2024-05-01T12:03:00" and row["last"] == "2024-05-01T12:06:00"


def test_usage_and_file_errors(tmp_path):
    bad_time = report("--since", "last tuesday", str(tmp_path / "x"))
    assert bad_time.returncode == 2 and "not an ISO date" in bad_time.stderr
    missing = report(str(tmp_path / "nope.log"))
    assert missing.returncode == 1 and "nope.log" in missing.stderr
    empty = tmp_path / "empty.log"
    empty.write_text("")
    result = report(str(empty))
    assert result.returncode == 0 and "no job lines" in result.stdout


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "job.log"
    with open(path, "w") as handle:
        for i in range(600):  # ten minutes; the fleet falls behind in the middle
            delay = 50 + (4000 if 200 <= i < 400 else 0) + i % 7
            handle.write(format_record(record(i, process=20 + i % 5, delay=delay, at=BASE + i), "json"))
            handle.write(format_record(record(i, funcname="B", process=80, delay=30, at=BASE + i), "json"))
    png = tmp_path / "fleet.png"
    result = report("--plot", str(png), str(path))
    assert result.returncode == 0, result.stderr
    assert "plot written" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_has_four_panels_breaks_lines_at_idle_gaps_and_its_legend_covers_no_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from workermanager.reportplot import build_figure

    busy = [i for i in range(0, 3000, 10) if not 1000 <= i < 2000]  # idle for the middle third
    entries = [parse_line(format_record(record(i, delay=100 + i, at=BASE + i, process=5 + i % 3,
                                               outcome="failed" if i % 50 == 0 else "completed",
                                               retry=i % 100 == 0), "json")) for i in busy]
    figure = build_figure(entries)
    delay, process, rate, failures = figure.axes
    assert [axes.get_ylabel() for axes in (delay, process, rate)] == \
        ["queue delay (ms)", "process time (ms)", "jobs finished / s"]
    assert failures.get_ylabel().startswith("failures per")
    assert len(delay.get_lines()) == 3  # p50, p95, p99 of the one function
    for line in delay.get_lines() + process.get_lines():
        ys = list(line.get_ydata())
        gap = [i for i, y in enumerate(ys) if math.isnan(y)]
        assert gap, "no break in the line across the idle third"
        assert not math.isnan(ys[gap[0] - 1]) and not math.isnan(ys[gap[-1] + 1])
    assert len(failures.patches) > 0
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    box = legend.get_window_extent(renderer)
    for axes in figure.axes:
        assert not box.overlaps(axes.get_window_extent(renderer))
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[:4] == ["Sandbox::Worker::A", "p50 (delay, process)", "p95 (delay, process)", "p99 (delay, process)"]


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path):
    path = tmp_path / "job.log"
    path.write_text(format_record(record(1), "classic"))
    code = ("import sys; sys.modules['matplotlib'] = None; from workermanager.cli import main; "
            f"sys.exit(main(['report', '--plot', {str(tmp_path / 'x.png')!r}, {str(path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert result.returncode == 1 and "needs matplotlib" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_planted_logs_cannot_hang_or_exhaust_the_report(tmp_path):
    """`report` may run as root over the service account's folder: a FIFO, a link to /dev/zero
    and a gzip of one endless line are each skipped with a problem line, in bounded time and
    memory, and the real log beside them is still reported."""
    good = tmp_path / "job.log"
    good.write_text("".join(format_record(record(i, process=i + 1, delay=1, at=BASE + i)) for i in range(5)))
    fifo = tmp_path / "job.log.1"
    os.mkfifo(fifo)
    zero = tmp_path / "job.log.2"
    os.symlink("/dev/zero", zero)
    bomb = tmp_path / "job.log.3.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as handle:
        for _ in range(640):  # 640 MiB of zeros without a newline (past the limit below), 640 KiB on disk
            handle.write(b"\0" * (1 << 20))
    env = dict(os.environ, PYTHONPATH=ROOT)
    limit = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20)); " \
            "sys.argv = ['workermanager', 'report', '--json', *sys.argv[1:]]; " \
            "runpy.run_module('workermanager', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", limit, str(fifo), str(zero), str(bomb), str(good)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    data = json.loads(result.stdout)
    assert data["funcnames"]["Sandbox::Worker::A"]["jobs"] == 5
    problems = "\n".join(data.get("problems", [])) + result.stderr
    assert "job.log.1" in problems and "job.log.2" in problems


def test_a_real_daemons_log_counts_a_retried_job_once(tmp_path, sqlite_queue, daemons):
    """The daemon's own classic lines say retry:yes for the attempt that runs again and retry:no
    for the last, so the report counts one failed job from two failed attempts."""
    from support.daemon_harness import Daemon
    from support.helpers import wait_for

    client, path = sqlite_queue
    client.insert("Lease::FailsTwice", {"n": 1})
    daemon = Daemon(str(tmp_path), {"workers": ["leaseworkers.FailsTwice"], "log_format": "classic",
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]}},
                    ("-n", "-c", "1"))
    daemons.append(daemon.start())

    def lines():
        with open(daemon.joblog) as handle:
            return handle.read().splitlines()
    wait_for(lambda: os.path.exists(daemon.joblog) and len(lines()) == 2, 20, what="two job lines")
    assert [line.rsplit(" ", 1)[1] for line in lines()] == ["retry:yes", "retry:no"]
    row = json.loads(report("--json", daemon.joblog).stdout)["funcnames"]["Lease::FailsTwice"]
    assert (row["jobs"], row["attempts"], row["failed"], row["retried"]) == (1, 2, 1, 1)


def test_a_teed_job_log_writes_the_same_line_to_the_file_and_the_terminal(tmp_path):
    from workermanager.daemon import joblog

    read_fd, write_fd = os.pipe()
    joblog.tee_to(write_fd)
    try:
        log = joblog.JobLog(str(tmp_path / "jobs.log"), "ltsv")
    finally:
        joblog.tee_to(None)
    try:
        log.write(record(1))
        log.close()
        on_file = (tmp_path / "jobs.log").read_bytes()
        assert on_file == format_record(record(1), "ltsv").encode()
        assert os.read(read_fd, 65536) == on_file
    finally:
        os.close(read_fd)
        os.close(write_fd)
