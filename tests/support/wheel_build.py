"""Building this project's sdist and wheel, and installing the wheel into a fresh virtual
environment, for the packaging tests: what a pip user gets, not the checkout.

The build runs on a copy of the files an sdist needs (so parallel builds never share `build/` or
the `.egg-info` folder, and nothing is written into the checkout) with this interpreter's
setuptools (`--no-isolation`: `build` and `wheel` are in the test extra), which is seconds instead
of the twenty an isolated build spends installing setuptools. The venv gets the wheel and its
dependencies from pip (its cache, or the index); the project itself comes from the wheel alone.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import sys

from support.daemon_harness import ROOT

#: what an sdist is made of; everything else in the checkout (tests, bench, .venv) stays out
SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")


@dataclasses.dataclass(frozen=True)
class Dists:
    sdist: str
    wheel: str


def build(folder: str) -> Dists:
    """`python -m build` (sdist, then the wheel from the sdist) into `folder`/dist."""
    source = os.path.join(folder, "source")
    os.mkdir(source)
    for name in SOURCE_FILES:
        shutil.copy2(os.path.join(ROOT, name), source)
    shutil.copytree(os.path.join(ROOT, "workermanager"), os.path.join(source, "workermanager"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = os.path.join(folder, "dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = glob.glob(os.path.join(out, "*.tar.gz"))
    (wheel,) = glob.glob(os.path.join(out, "*.whl"))
    return Dists(sdist, wheel)


def fresh_venv(folder: str, wheel: str) -> str:
    """A new virtual environment in `folder` with `wheel` installed; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", folder], check=True, timeout=120)
    python = os.path.join(folder, "bin", "python")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                             "--disable-pip-version-check", wheel],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return os.path.join(folder, "bin")
