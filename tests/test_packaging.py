"""What `python -m build` makes: an sdist and a wheel that `twine check` passes, a wheel that holds
the service files, the examples, LICENSE and py.typed, and the extras the README names."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser

import pytest

from support.daemon_harness import ROOT
from support.wheel_build import Dists, build

#: every file the wheel must carry besides the code (install-service and the README use them)
SHIPPED = (
    "workermanager/py.typed",
    "workermanager/service/init.d/workermanager",
    "workermanager/service/systemd/workermanager.service",
    "workermanager/service/default/workermanager",
    "workermanager/service/logrotate.d/workermanager",
    "workermanager/service/workermanager.yml",
    "workermanager/examples/conf.yml",
    "workermanager/examples/gearman.yml",
    "workermanager/examples/client.py",
    "workermanager/examples/lib/sandbox/__init__.py",
    "workermanager/examples/lib/sandbox/worker.py",
)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Dists:
    return build(str(tmp_path_factory.mktemp("build")))


def wheel_metadata(wheel: str) -> tuple[list[str], dict[str, list[str]]]:
    """(names in the wheel, METADATA headers: each name -> its values)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(meta).decode())
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key, []).append(value)
    return names, headers


def test_twine_check_passes_on_the_sdist_and_the_wheel(dists):
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_holds_service_files_examples_license_and_py_typed(dists):
    names, headers = wheel_metadata(dists.wheel)
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert headers["License"] == ["MIT"]
    with zipfile.ZipFile(dists.wheel) as archive:
        for name in SHIPPED:  # the same bytes as the checkout: one copy of each file
            assert archive.read(name) == open(os.path.join(ROOT, name), "rb").read(), name
        license_name = next(n for n in names if n.endswith("LICENSE"))
        assert b"MIT License" in archive.read(license_name)
        assert b"the workermanager developers" in archive.read(license_name)
    # the init script keeps its execute bit for whoever copies it by hand
    with zipfile.ZipFile(dists.wheel) as archive:
        mode = archive.getinfo("workermanager/service/init.d/workermanager").external_attr >> 16
    assert mode & 0o111


def test_the_sdist_holds_license_and_service_files(dists):
    with tarfile.open(dists.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert "LICENSE" in names
    assert {name for name in SHIPPED} <= names


def test_every_extra_the_readme_names_exists_and_all_holds_them(dists):
    """The README names every runtime extra (all but the tools for tests and docs), names no extra
    that does not exist, and [all] is exactly the runtime extras together."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    named = set(re.findall(r"workermanager\[([a-z]+)\]", readme)) | set(re.findall(r"'\.\[([a-z]+)\]'", readme))
    _, headers = wheel_metadata(dists.wheel)
    extras = set(headers["Provides-Extra"])
    runtime = extras - {"all", "test", "docs"}
    assert {"postgres", "mysql", "metrics", "plot"} <= runtime
    assert runtime | {"all"} <= named, f"extras the README does not name: {runtime | {'all'} - named}"
    assert named <= extras, f"named in the README but not an extra: {named - extras}"
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    extra = setup["options.extras_require"]

    def requirements(name: str) -> set[str]:
        return {line.strip() for line in extra[name].splitlines() if line.strip() and not line.startswith("#")}

    assert set().union(*(requirements(name) for name in runtime)) == requirements("all")
