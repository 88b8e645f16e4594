"""The config loader: the Perl WorkerManager's keys, our additions, and one clear error each."""

import os
import textwrap
import zlib

import pytest

from workermanager import config as cfg

GOOD = """
type: TheSchwartz
workers:
  - sandbox.worker.A
  - sandbox.worker:B
worker_options:
  databases:
    - dsn: dbi:SQLite:dbname=var/q.db
inc_path: lib
pidfile: run/wm.pid
logfile: log/job.log
errorlogfile: /var/log/wm-error.log
env:
  LANG: C
"""


def write(tmp_path, text, name="conf.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_perl_keys_load_and_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = cfg.load(write(tmp_path, GOOD))
    assert config.type == "TheSchwartz"
    assert config.workers == ("sandbox.worker.A", "sandbox.worker:B")
    assert config.inc_path == (str(tmp_path / "lib"),)
    assert config.pidfile == str(tmp_path / "run/wm.pid")
    assert config.logfile == str(tmp_path / "log/job.log")
    assert config.errorlogfile == "/var/log/wm-error.log"
    assert config.env == {"LANG": "C"}
    assert config.worker_options["base_dir"] == str(tmp_path)
    assert (config.concurrency, config.works_per_child, config.log_format) == (4, 100, "classic")


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, GOOD + "concurrency: 8\nworks_per_child: 50\n")
    config = cfg.load(path, {"concurrency": 2, "works_per_child": None})
    assert (config.concurrency, config.works_per_child) == (2, 50)


@pytest.mark.parametrize("extra, message", [
    ("colour: blue\n", "unknown key 'colour'"),
    ("concurrency: many\n", "key 'concurrency' must be an int, not str"),
    ("concurrency: 0\n", "key 'concurrency' must be 1 or more"),
    ("works_per_child: true\n", "key 'works_per_child' must be an int, not bool"),
    ("log_format: xml\n", "key 'log_format' must be one of classic, ltsv, json"),
    ("type: Redis\n", "key 'type' must be one of theschwartz, gearman"),
    ("worker_options: [1, 2]\n", "key 'worker_options' must be a dict"),
    ("inc_path: [lib, 1]\n", "key 'inc_path' item 2 must be a path string, not int"),
    ("env: {PATHS: [a, b]}\n", "key 'env' entry 'PATHS' must be a string or number, not list"),
    ("keep_failed_max: 99999999999999999999999\n", "key 'keep_failed_max' must be more than 0 and at most 1000000000"),
])
def test_bad_values_name_the_key_and_the_file(tmp_path, extra, message):
    path = write(tmp_path, GOOD + extra)
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(path)


def test_missing_file_malformed_yaml_and_missing_workers(tmp_path):
    with pytest.raises(cfg.ConfigError, match="config file not found"):
        cfg.load(str(tmp_path / "nope.yml"))
    with pytest.raises(cfg.ConfigError, match=r"line \d+ malformed YAML"):
        cfg.load(write(tmp_path, "workers: [a\n  b: c\n"))
    with pytest.raises(cfg.ConfigError, match="key 'workers' is required"):
        cfg.load(write(tmp_path, "type: TheSchwartz\n"))
    with pytest.raises(cfg.ConfigError, match="must be a mapping"):
        cfg.load(write(tmp_path, "- a\n- b\n"))


def test_worker_classes_import_with_clear_errors(tmp_path):
    lib = tmp_path / "lib" / "mypkg"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "good.py").write_text(
        "from workermanager import Worker\n"
        "class W(Worker):\n    def work(self, job):\n        return 1\n"
        "class NotAWorker:\n    pass\n")
    (lib / "broken.py").write_text("import no_such_module_here\n")
    base = "inc_path: lib\nworkers:\n  - {}\n"

    config = cfg.load(write(tmp_path, base.format("mypkg.good.W")))
    cfg.apply_environment(config)
    classes = cfg.import_worker_classes(config)
    assert classes[0].function_name() == "mypkg.good.W"

    for written, message in [
        ("mypkg.broken.X", "does not import: ModuleNotFoundError: No module named 'no_such_module_here'"),
        ("mypkg.good.Missing", "module 'mypkg.good' has no 'Missing'"),
        ("mypkg.good.NotAWorker", "is not a subclass of workermanager.Worker"),
        ("nosuchpkg.Thing", "does not import"),
    ]:
        config = cfg.load(write(tmp_path, base.format(written), name="bad.yml"))
        with pytest.raises(cfg.ConfigError) as caught:
            cfg.import_worker_classes(config)
        assert written in str(caught.value) and message in str(caught.value)
        assert str(caught.value).startswith(os.path.join(str(tmp_path), "bad.yml"))


@pytest.mark.parametrize("attribute, message", [
    ("timeout = 'ten minutes'", "timeout = 'ten minutes': a number of seconds above 0"),
    ("timeout = 0", "timeout = 0: a number of seconds above 0"),
    ("timeout = float('inf')", "timeout = inf: a number of seconds above 0"),
    ("grab_for = None", "grab_for = None: a number of seconds above 0"),
    ("grab_for = True", "grab_for = True: a number of seconds above 0"),
    ("max_retries = 2.5", "max_retries = 2.5: a whole number, 0 or more"),
    ("max_retries = -1", "max_retries = -1: a whole number, 0 or more"),
    ("retry_delay = 'soon'", "retry_delay = 'soon': a number of seconds, 0 or more"),
    ("keep_exit_status_for = float('nan')", "keep_exit_status_for = nan: a number of seconds, 0 or more"),
    ("funcname = 'two\\nlines'", "funcname = 'two\\nlines': a non-empty name on one line"),
    ("funcname = ''", "funcname = '': a non-empty name on one line"),
])
def test_a_worker_class_attribute_the_daemon_reads_is_checked_at_import(tmp_path, attribute, message):
    """One line naming the class, the attribute and what it must be, at start and in `check`, not
    an error in every child (or in the master's lease arithmetic) at every job."""
    lib = tmp_path / "lib"
    lib.mkdir()
    module = f"odd_{zlib.crc32(attribute.encode()):08x}"  # one per case: imported modules stay cached
    (lib / f"{module}.py").write_text("from workermanager import Worker\n"
                                      f"class W(Worker):\n    {attribute}\n    def work(self, job):\n        return 1\n")
    path = write(tmp_path, f"inc_path: lib\nworkers: [{module}.W]\n")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.import_worker_classes(cfg.load(path))
    assert str(caught.value) == f"{path}: worker '{module}.W': {message}"


def test_a_worker_class_with_a_retry_delay_method_and_fractional_times_imports(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "fine.py").write_text("from workermanager import Worker\n"
                                 "class W(Worker):\n    timeout = 0.5\n    grab_for = 1.5\n    max_retries = 3\n"
                                 "    def retry_delay(self, failures):\n        return failures\n"
                                 "    def work(self, job):\n        return 1\n")
    classes = cfg.import_worker_classes(cfg.load(write(tmp_path, "inc_path: lib\nworkers: [fine.W]\n")))
    assert classes[0].job_timeout() == 0.5 and classes[0].retry_delay_for(2) == 2


@pytest.mark.parametrize("typo, meant", [("concurency", "concurrency"), ("work_per_child", "works_per_child"),
                                         ("log_fromat", "log_format"), ("workers_options", "worker_options")])
def test_an_unknown_key_near_a_known_one_says_which_was_meant(tmp_path, typo, meant):
    path = write(tmp_path, GOOD + f"{typo}: 8\n")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(path)
    assert str(caught.value) == f"{path}: unknown key {typo!r} (did you mean {meant!r}?)"


def test_a_missing_inc_path_folder_is_named_not_only_the_module(tmp_path):
    path = write(tmp_path, "workers: [sandbox.worker.A]\ninc_path: [no/such/lib]\n")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.import_worker_classes(cfg.load(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: key 'inc_path': folder {tmp_path / 'no/such/lib'} does not exist")
    assert "No module named 'sandbox'" in message


def test_the_worker_base_class_itself_is_refused(tmp_path):
    for written in ("workermanager.Worker", "workermanager.worker:Worker"):
        path = write(tmp_path, f"workers: [{written}]\n")
        with pytest.raises(cfg.ConfigError, match="is the base class workermanager.Worker itself"):
            cfg.import_worker_classes(cfg.load(path))
