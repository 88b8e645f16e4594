"""`workermanager report`: figures from classic, ltsv and json lines, gzip files, bad lines, windows."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from workermanager.commands.report import percentile
from workermanager.joblog import JobRecord, format_record
from workermanager.logparse import BadLine, parse_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))  # local time, as the daemon writes it


def record(n: int, funcname: str = "Sandbox::Worker::A", outcome: str = "completed",
           process: int = 10, delay: int | None = 100, at: float = BASE) -> JobRecord:
    return JobRecord(backend="TheSchwartz", outcome=outcome, funcname=funcname, process_ms=process,
                     delay_ms=delay, finished_at=at, pid=4242, job_id=f"abc-{n}", worker_class="x.A")


def report(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "workermanager", "report", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_each_format_parses_to_the_same_entry():
    entries = [parse_line(format_record(record(1, delay=155, process=2346), fmt))
               for fmt in ("classic", "ltsv", "json")]
    assert entries[0] == entries[1] == entries[2]
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
])
def test_bad_lines_are_rejected(line):
    with pytest.raises(BadLine):
        parse_line(line)


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
