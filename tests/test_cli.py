"""Bad flags and bad configs: one clear line, the right exit status, nothing half-started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workermanager.cli import SUBCOMMANDS

from support.daemon_harness import ROOT, TEST_WORKERS


def run(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "workermanager", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=30)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "conf.yml"
    path.write_text(f"workers: [testworkers.Noop]\ninc_path: {TEST_WORKERS}\n"
                    f"pidfile: {tmp_path}/wm.pid\n"
                    f"worker_options: {{databases: [{{dsn: 'dbi:SQLite:dbname={tmp_path}/q.db'}}]}}\n")
    return str(path)


@pytest.mark.parametrize("args, complaint", [
    (["-c", "0"], "argument -c/--concurrency: '0' must be 1 or more"),
    (["-w", "-1"], "argument -w/--works-per-child: '-1' must be 1 or more"),
    (["-c", "abc"], "argument -c/--concurrency: 'abc' is not a whole number"),
    (["--colour"], "unrecognized arguments: --colour"),
])
def test_bad_flags_print_one_line_and_the_usage_and_exit_2(tmp_path, conf, args, complaint):
    result = run([*args, "-f", conf], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: workermanager [-hdn] [-c concurrency] [-w works_per_child] -f conf_file")
    assert complaint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2
    assert not os.path.exists(tmp_path / "wm.pid")


def test_missing_f_is_a_usage_error(tmp_path):
    result = run(["-n"], tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: -f/--config" in result.stderr


def test_help_subcommand_prints_the_help_not_a_usage_error(tmp_path):
    result = run(["help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: workermanager [-hdn]" in result.stdout
    words = " ".join(result.stdout.split())  # as argparse wraps it
    assert all(name in words for name in SUBCOMMANDS) and "-f is needed to run the daemon only" in words
    assert "required" not in result.stdout + result.stderr
    sub = run(["help", "report"], tmp_path)
    assert sub.returncode == 0 and sub.stdout.startswith("usage: workermanager report")
    assert "required" not in sub.stdout + sub.stderr
    unknown = run(["help", "frobnicate"], tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == ("workermanager: help: no subcommand 'frobnicate' (subcommands: "
                                      f"{', '.join(SUBCOMMANDS)})")


def test_help_shows_the_usage(tmp_path):
    result = run(["-h"], tmp_path)
    assert result.returncode == 0
    assert "workermanager [-hdn] [-c concurrency] [-w works_per_child] -f conf_file" in result.stdout


@pytest.mark.parametrize("text, complaint", [
    ("workers: [testworkers.Nope]\n", "worker 'testworkers.Nope': module 'testworkers' has no 'Nope'"),
    ("workers: [nosuch.module.Class]\n", "worker 'nosuch.module.Class' does not import: ModuleNotFoundError"),
    ("workers: [testworkers.record]\n", "is not a subclass of workermanager.Worker"),
    ("workers: [testworkers.Noop]\nconcurrency: -3\n", "key 'concurrency' must be 1 or more"),
    ("workers: [testworkers.Noop]\nfoo: 1\n", "unknown key 'foo'"),
    ("workers: [testworkers.Noop\n", "malformed YAML"),
    ("workers: [testworkers.Noop]\ntype: Gearman\nworker_options: {job_servers: 7}\n", "job_servers"),
    ("workers: [testworkers.Noop]\n", "worker_options.databases"),
    ("workers: [testworkers.Noop]\nuser: no-such-user-here\nworker_options: {databases: [{path: x.db}]}\n", "key 'user': no such user 'no-such-user-here'"),
    ("workers: [testworkers.Noop]\ngroup: no-such-group-here\nworker_options: {databases: [{path: x.db}]}\n", "key 'group': no such group"),
])
def test_config_errors_name_the_key_and_file_exit_1_and_start_nothing(tmp_path, text, complaint):
    path = tmp_path / "bad.yml"
    path.write_text(f"inc_path: {TEST_WORKERS}\npidfile: {tmp_path}/wm.pid\n" + text)
    result = run(["-n", "-f", str(path)], tmp_path)
    assert result.returncode == 1, result.stderr
    assert complaint in result.stderr
    assert str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "wm.pid")


def test_missing_config_file(tmp_path):
    result = run(["-n", "-f", str(tmp_path / "none.yml")], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"workermanager: {tmp_path}/none.yml: config file not found"
