"""Coming from the Perl WorkerManager: `compat: perl` reads a Perl config as Perl did, and
`workermanager migrate-config` prints the native config that runs the same workers (a real
daemon runs a job from it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from workermanager import config as cfg
from workermanager import perlcompat
from workermanager.theschwartz import Client

from support.daemon_harness import ROOT, Daemon
from support.helpers import wait_for

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "perl_workermanager")
PERL_CONFIG = os.path.join("examples", "bin", "worker.conf.yml")


def run(*args, cwd, env=None):
    env = dict(env or os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "workermanager", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=30)


@pytest.fixture
def perl_root(tmp_path):
    """A Perl install root: the fixture tree copied, with the folders the Perl example expects."""
    root = tmp_path / "perl-root"
    shutil.copytree(FIXTURE, root)
    (root / "examples" / "run").mkdir()
    (root / "examples" / "log").mkdir()
    return root


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- compat: perl -----------------------------------------------------------------------------

def test_compat_perl_resolves_paths_against_the_install_root_not_the_config_folder(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write(conf_dir / "worker.conf.yml", """
        compat: perl
        workers: [Sandbox::Worker::A]
        inc_path: [examples/lib]
        pidfile: run/wm.pid
        logfile: log/job.log
        errorlogfile: /var/log/wm-error.log
    """)
    config = cfg.load(path)
    assert config.compat == "perl"
    assert config.root == str(tmp_path)  # $ROOT/conf/worker.conf.yml -> $ROOT
    assert config.inc_path == (str(tmp_path / "examples" / "lib"),)
    assert config.pidfile == str(tmp_path / "run" / "wm.pid")
    assert config.logfile == str(tmp_path / "log" / "job.log")
    assert config.errorlogfile == "/var/log/wm-error.log"
    assert config.base_dir == str(tmp_path)


def test_compat_perl_root_key_names_the_install_root(tmp_path):
    path = write(tmp_path / "w.yml", """
        compat: perl
        root: install
        workers: [Sandbox::Worker::A]
        inc_path: examples/lib
    """)
    assert cfg.load(path).inc_path == (str(tmp_path / "install" / "examples" / "lib"),)


def test_compat_perl_defaults_databases_and_wait_as_perl_and_warns_on_ridge_env(tmp_path):
    path = write(tmp_path / "w.yml", """
        compat: perl
        workers: [Sandbox::Worker::A]
        ridge_env: production
        startupfile: script/startup.pl
    """)
    config = cfg.load(path)
    assert config.worker_options["databases"] == [
        {"dsn": "dbi:mysql:dbname=theschwartz;host=127.0.0.1", "user": "nobody", "pass": "nobody"}]
    assert config.graceful_timeout == 10  # Perl's wait_terminating default
    assert config.env == {}  # ridge_env is not exported
    warnings = "\n".join(config.warnings)
    assert "key 'ridge_env': ignored" in warnings and "RIDGE_ENV: production" in warnings
    assert "key 'startupfile': ignored" in warnings
    assert "no databases: Perl's default" in warnings


def test_compat_perl_gearman_defaults_job_servers_and_maps_wait_terminating(tmp_path):
    path = write(tmp_path / "w.yml", """
        compat: perl
        type: Gearman
        workers: [Sandbox::Worker::A]
        wait_terminating: 3
    """)
    config = cfg.load(path)
    assert config.worker_options["job_servers"] == ["127.0.0.1"]
    assert config.graceful_timeout == 3


@pytest.mark.parametrize("key", ["ridge_env", "wait_terminating", "root"])
def test_perl_keys_without_compat_say_how_to_keep_them(tmp_path, key):
    path = write(tmp_path / "w.yml", f"workers: [a.B]\n{key}: x\n")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(path)
    assert f"key {key!r} is a Perl WorkerManager key: add `compat: perl`" in str(caught.value)
    assert "migrate-config" in str(caught.value)


def test_native_config_keeps_its_own_folder_and_no_default_databases(tmp_path):
    path = write(tmp_path / "w.yml", "workers: [a.B]\ninc_path: lib\n")
    config = cfg.load(path)
    assert config.compat is None and config.inc_path == (str(tmp_path / "lib"),)
    assert "databases" not in config.worker_options


# --- migrate-config ---------------------------------------------------------------------------

def test_migrate_config_prints_the_native_config_with_a_comment_on_each_change(perl_root):
    result = run("migrate-config", "--root", str(perl_root), str(perl_root / PERL_CONFIG), cwd=perl_root)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    native = yaml.safe_load(text)
    assert native == {
        "workers": ["Sandbox::Worker::A", "Sandbox::Worker::B"],
        "worker_options": {"prioritize": 1, "databases": [dict(perlcompat.PERL_DATABASE)]},
        "inc_path": [str(perl_root / "examples" / "lib")],
        "pidfile": str(perl_root / "examples" / "run" / "workermanager.pid"),
        "logfile": str(perl_root / "examples" / "log" / "workermanager.log"),
        "errorlogfile": str(perl_root / "examples" / "log" / "workermanager_error.log"),
        "graceful_timeout": 10,
    }
    for said in ("# examples/lib was relative to the Perl install root",
                 "# examples/run/workermanager.pid was relative to the Perl install root",
                 "# no databases: Perl's default, MySQL dbi:mysql:dbname=theschwartz;host=127.0.0.1",
                 "# Perl's wait_terminating default, 10 s",
                 "is looked up as the Python class sandbox.worker.A",
                 "USR1 reopens the logs"):
        assert said in text
    assert result.stderr == ""


def test_migrate_config_drops_perl_only_keys_with_their_reason(perl_root):
    conf = perl_root / PERL_CONFIG
    conf.write_text(conf.read_text() + "ridge_env: staging\nworker_options:\n  - prioritize: 1\n")
    result = run("migrate-config", "--root", str(perl_root), str(conf), cwd=perl_root)
    assert result.returncode == 0, result.stderr
    assert "# ridge_env: 'staging' dropped: ignored" in result.stdout
    assert "# a list of mappings in the Perl config, one mapping here" in result.stdout
    assert yaml.safe_load(result.stdout)["worker_options"]["prioritize"] == 1


def test_migrate_config_keeps_perl_values_with_line_breaks_inside_their_comments(perl_root):
    """A value of a dropped key is quoted in a comment: a line break in it must not start a real
    key (here an inc_path that root's start would import from)."""
    conf = perl_root / PERL_CONFIG
    conf.write_text(conf.read_text() + 'startupfile: "x\\ninc_path: [/evil] #"\nridge_env: "a\\u2028b: 1"\n')
    result = run("migrate-config", "--root", str(perl_root), str(conf), cwd=perl_root)
    assert result.returncode == 0, result.stderr
    expected = perlcompat.adapt(yaml.safe_load(conf.read_text()), str(conf), str(perl_root)).raw
    assert yaml.safe_load(result.stdout) == expected
    assert "/evil" not in yaml.safe_load(result.stdout)["inc_path"]


def test_migrate_config_prints_nothing_that_does_not_read_back_as_the_adapted_config(perl_root, monkeypatch,
                                                                                   capsys):
    """The last guard: whatever slips into a comment, the printed text is read back before it is
    printed (here with the escaping of notes taken away)."""
    from workermanager.commands import migrate

    monkeypatch.setattr(perlcompat, "one_line", lambda text: text)
    conf = perl_root / PERL_CONFIG
    conf.write_text(conf.read_text() + 'ridge_env: "x\\ninc_path: [/evil] #"\n')
    assert migrate.main(["--root", str(perl_root), str(conf)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "does not read back" in err and len(err.strip().splitlines()) == 1


def test_compat_perl_start_warnings_are_one_line_each(tmp_path):
    path = write(tmp_path / "w.yml", """
        compat: perl
        workers: [Sandbox::Worker::A]
        ridge_env: "production\\nx: 1"
        startupfile: "a\\rb\\u2029c"
    """)
    warnings = cfg.load(path).warnings
    assert len(warnings) >= 2 and all("\n" not in w and "\r" not in w and "\u2029" not in w for w in warnings)
    assert any("production\\nx: 1" in w for w in warnings)


@pytest.mark.parametrize("text, complaint", [
    ("workers: [A]\nconcurrency: many\n", "key 'concurrency' must be an int"),
    ("workers: [A]\nwait_terminating: soon\n", "key 'wait_terminating' must be a number of seconds"),
    ("workers: [A\n", "malformed YAML"),
    ("- a\n", "must be a mapping"),
])
def test_migrate_config_errors_are_one_line(tmp_path, text, complaint):
    path = tmp_path / "perl.yml"
    path.write_text(text)
    result = run("migrate-config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert complaint in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_migrated_perl_example_config_runs_its_jobs_in_a_real_daemon(tmp_path, perl_root, daemons):
    """The Perl example plus the one key every Perl install since 2012 must add (databases: the
    Perl daemon refuses to start without it), here a SQLite file relative to the install root."""
    conf = perl_root / PERL_CONFIG
    conf.write_text(conf.read_text().replace(
        "  prioritize: 1\n", "  prioritize: 1\n  databases:\n    - dsn: dbi:SQLite:dbname=examples/var/q.db\n"))
    (perl_root / "examples" / "var").mkdir()
    migrated = run("migrate-config", "--root", str(perl_root), str(conf), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    elsewhere = tmp_path / "etc"  # saved away from the root: its paths must not depend on its folder
    elsewhere.mkdir()
    native = elsewhere / "workermanager.yml"
    native.write_text(migrated.stdout)
    assert run("init-db", "-f", str(native), cwd=tmp_path).returncode == 0

    queue = str(perl_root / "examples" / "var" / "q.db")
    client = Client([{"dsn": f"dbi:SQLite:dbname={queue}"}])
    client.insert("Sandbox::Worker::A", {"foo": 1})
    client.insert("Sandbox::Worker::B", {"foo": 2})
    client.close()
    daemon = Daemon(str(tmp_path), {"workers": ["unused"]})
    daemon.config_path = str(native)
    daemons.append(daemon.start())
    daemon.wait_ledger(lambda rows: len(rows) >= 2, what="both Perl example jobs")
    assert sorted(row.what for row in daemon.ledger_rows()) == ["Processed 'A' 1", "Processing 'B' arg foo:2"]
    joblog = perl_root / "examples" / "log" / "workermanager.log"
    wait_for(lambda: joblog.exists() and joblog.read_text().count(" job completed ") == 2, 15,
             what="two job lines in the Perl example's log file")
    assert (perl_root / "examples" / "run" / "workermanager.pid").read_text().strip() == str(daemon.pid)


def test_compat_perl_hup_reopens_the_logs_and_keeps_the_children(tmp_path, perl_root, daemons):
    """Perl's HUP reopened the log files; under compat it does that (as USR1), not a reload."""
    conf = perl_root / PERL_CONFIG
    conf.write_text("compat: perl\nroot: ../..\nconcurrency: 2\n" + conf.read_text().replace(
        "  prioritize: 1\n", "  prioritize: 1\n  databases:\n    - dsn: dbi:SQLite:dbname=examples/q.db\n"))
    assert run("init-db", "-f", str(conf), cwd=tmp_path).returncode == 0
    daemon = Daemon(str(tmp_path), {"workers": ["unused"]})
    daemon.config_path = str(conf)
    daemon.errorlog = str(perl_root / "examples" / "log" / "workermanager_error.log")
    daemons.append(daemon.start(wait_children=2))
    before = sorted(child.pid for child in daemon.children())
    rotated = daemon.errorlog + ".1"
    daemon.wait_error_log("started")
    os.rename(daemon.errorlog, rotated)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: os.path.exists(daemon.errorlog), 15, what="the error log reopened by HUP")
    with open(rotated) as handle:
        before_reopen = handle.read()
    assert "HUP under compat: perl reopens the log files" in before_reopen
    assert "reloading" not in before_reopen + daemon.error_log()
    assert sorted(child.pid for child in daemon.children()) == before


def test_check_shows_what_compat_perl_does_differently_as_warnings(tmp_path, perl_root):
    conf = perl_root / PERL_CONFIG
    conf.write_text("compat: perl\nroot: ../..\nridge_env: production\n" + conf.read_text().replace(
        "  prioritize: 1\n", "  prioritize: 1\n  databases:\n    - dsn: dbi:SQLite:dbname=examples/q.db\n"))
    assert run("init-db", "-f", str(conf), cwd=tmp_path).returncode == 0
    assert (perl_root / "examples" / "q.db").exists()  # relative to the install root
    result = run("check", "-f", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: config {conf}: key 'ridge_env': ignored" in result.stdout
