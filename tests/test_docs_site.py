"""The documentation site (mkdocs.yml, docs/) builds with no warning, its links are checked, and its
reference pages are written from the code: a key added to SETTINGS or a subcommand added to the
CLI appears in the built site without anyone editing a page.

The site is built in this process (mkdocs's own build, strict as in mkdocs.yml) into a temporary
folder: once for the whole module with a probe setting and a probe subcommand added to the code,
and in a few small sites that exercise the link checking and the hooks alone.
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort

from workermanager import cli
from workermanager import config as config_module
from workermanager.backends import REGISTRY, backend_class
from workermanager.backends.base import COMMON_OPTIONS
from workermanager.metrics import METRICS_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
PROBE_KEY = "zz_docs_probe_key"
PROBE_HELP = "a setting that exists only while this test builds the site"
PROBE_COMMAND = "zz-docs-probe"
PROBE_MODULE = "wm_docs_probe_command"
PROBE_FLAG = "--probe-flag-xyz"


class BuildResult:
    """A built site: its folder and the warnings the build logged."""

    def __init__(self, site_dir: Path, warnings: list[str]) -> None:
        self.site_dir = site_dir
        self.warnings = warnings

    def page(self, uri: str) -> str:
        """The HTML of the page at `uri` (e.g. "reference/config/")."""
        return (self.site_dir / uri / "index.html").read_text(encoding="utf-8")

    def text(self, uri: str) -> str:
        """The visible text of a page's article, tags dropped."""
        page = self.page(uri)
        article = page[page.index("<article"):page.index("</article>")]
        return html.unescape(re.sub(r"<[^>]+>", "", article))


def build_site(config_file: Path, site_dir: Path) -> BuildResult:
    """Build with mkdocs (strict: Abort on any warning); the warnings are kept either way."""
    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    handler = Keep(logging.WARNING)
    mkdocs_log = logging.getLogger("mkdocs")
    level = mkdocs_log.level
    # a logger quieter than WARNING (what `mkdocs build -q` sets) makes no warning records, so
    # strict mode would count none: the build is only strict with warnings switched on
    mkdocs_log.setLevel(logging.WARNING)
    mkdocs_log.addHandler(handler)
    try:
        build(load_config(config_file=str(config_file), site_dir=str(site_dir), strict=True))
    except Abort as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(warnings)) from None
    finally:
        mkdocs_log.removeHandler(handler)
        mkdocs_log.setLevel(level)
    return BuildResult(site_dir, warnings)


def probe_command_module() -> types.ModuleType:
    """A subcommand module as cli.SUBCOMMANDS expects one: main(argv) builds its parser."""
    module = types.ModuleType(PROBE_MODULE)

    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=f"workermanager {PROBE_COMMAND}", description="probe command")
        parser.add_argument(PROBE_FLAG, help="a flag that exists only while this test builds the site")
        parser.parse_args(argv)
        return 0

    module.main = main  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildResult]:
    """The real site, built once, with a probe setting and a probe subcommand in the code."""
    probe = config_module.Setting(PROBE_KEY, int, 7, PROBE_HELP)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_MKDOCS_2_WARNING", "1")  # mkdocs-material's banner about its successor
        patch.setattr(config_module, "SETTINGS", (*config_module.SETTINGS, probe))
        patch.setitem(cli.SUBCOMMANDS, PROBE_COMMAND, PROBE_MODULE)
        patch.setitem(sys.modules, PROBE_MODULE, probe_command_module())
        yield build_site(ROOT / "mkdocs.yml", tmp_path_factory.mktemp("site"))


def test_site_builds_in_strict_mode_without_warnings(site: BuildResult) -> None:
    assert site.warnings == []
    assert (site.site_dir / "index.html").is_file()


def test_config_reference_lists_every_setting_and_every_nested_key(site: BuildResult) -> None:
    page = site.page("reference/config/")
    for setting in config_module.SETTINGS:
        assert f'id="{setting.key}"' in page, f"no heading for key {setting.key!r}"
    text = site.text("reference/config/")
    options = [option.key for option in COMMON_OPTIONS]
    for type_name in REGISTRY:
        options += [option.key for option in backend_class(type_name).OPTIONS]
    options += [option.key for option in METRICS_OPTIONS]
    assert options, "the backends declare their worker_options keys"
    for key in options:
        assert f"\n{key}\n" in text, f"nested key {key!r} (worker_options: or metrics:) missing"


def test_config_reference_is_written_from_the_code(site: BuildResult) -> None:
    """A key that exists only in SETTINGS (no page mentions it) is in the built reference."""
    assert f'id="{PROBE_KEY}"' in site.page("reference/config/")
    assert PROBE_HELP[1:] in site.text("reference/config/")


def test_cli_reference_lists_every_subcommand_and_flag(site: BuildResult) -> None:
    page = site.page("reference/cli/")
    text = site.text("reference/cli/")
    assert "usage: workermanager [-hdn]" in text
    for flag in ("--debug", "--foreground", "--concurrency", "--works-per-child", "--config"):
        assert flag in text
    for name in cli.SUBCOMMANDS:
        assert f'id="cmd-{name}"' in page, f"no section for subcommand {name!r}"
        assert f"usage: workermanager {name}" in text, f"no usage line for subcommand {name!r}"


def test_cli_reference_is_written_from_the_code(site: BuildResult) -> None:
    """A subcommand that exists only in cli.SUBCOMMANDS, and its flag, are in the built reference."""
    assert f'id="cmd-{PROBE_COMMAND}"' in site.page("reference/cli/")
    assert PROBE_FLAG in site.text("reference/cli/")


def test_library_api_pages_come_from_docstrings(site: BuildResult) -> None:
    from workermanager.gearman import Client as GearmanClient
    from workermanager.theschwartz import Client as SchwartzClient

    first_line = (SchwartzClient.insert.__doc__ or "").strip().splitlines()[0]
    assert first_line and first_line in site.text("api/theschwartz/")
    first_line = (GearmanClient.__doc__ or "").strip().splitlines()[0]
    assert first_line and first_line in site.text("api/gearman/")


def test_links_to_files_outside_docs_lead_to_site_pages(site: BuildResult) -> None:
    """docs/README.md links ../README.md, the README links docs/gearman.md#...: both work in the site,
    and a link to a source file leads to a page that shows it."""
    index = site.page("")
    assert 'href="project-readme/"' in index
    readme = site.page("project-readme/")
    assert 'href="../gearman/#job-arguments-plain-bytes"' in readme
    benchmarks = site.page("benchmarks/")
    assert 'href="../source/bench/run_all.py/"' in benchmarks
    assert "def main() -> int:" in site.text("source/bench/run_all.py/")


# --- small sites: the link checking and the hooks alone ----------------------------------------

def small_site(tmp_path: Path, pages: dict[str, str]) -> Path:
    """A site in `tmp_path` with the real mkdocs.yml's validation and strictness and the real hooks,
    no API pages, and `pages` in its docs/; returns its mkdocs.yml."""
    real = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "workermanager" / "theschwartz").mkdir(parents=True)
    (tmp_path / "README.md").write_text("# readme\n", encoding="utf-8")
    (tmp_path / "workermanager" / "theschwartz" / "README.md").write_text("# queue\n", encoding="utf-8")
    (tmp_path / "tool.py").write_text("print('shown')\n", encoding="utf-8")
    for name, text in pages.items():
        (tmp_path / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / name).write_text(textwrap.dedent(text), encoding="utf-8")
    config = {
        "site_name": "probe",
        "docs_dir": "docs",
        "strict": real["strict"],
        "validation": real["validation"],
        "exclude_docs": real["exclude_docs"],
        "theme": real["theme"],
        "markdown_extensions": real["markdown_extensions"],
        "hooks": [str(ROOT / hook) for hook in real["hooks"]],
        "nav": [*pages, "project-readme.md", "theschwartz-queue.md", "reference/config.md", "reference/cli.md"],
    }
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_broken_links_fail_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing page, a missing anchor and a missing repository file each fail a strict build."""
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    broken = {"missing.md": "[a](missing.md)", "no-such-heading": "[b](other.md#no-such-heading)",
              "no-such-file.py": "[c](../no-such-file.py)"}
    config_file = small_site(tmp_path, {"index.md": "# home\n\n" + " ".join(broken.values()) + "\n",
                                        "other.md": "# other\n\n## there\n"})
    with pytest.raises(AssertionError) as failure:
        build_site(config_file, tmp_path / "site")
    for target in broken:
        assert target in str(failure.value), f"a broken link to {target} passed"


def test_working_links_of_every_kind_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    config_file = small_site(tmp_path, {
        "index.md": "# home\n\n[a](other.md#there) [b](../README.md) [c](../tool.py) "
                    "[d](../workermanager/theschwartz/README.md) [e](../workermanager/) "
                    "`[not a link](../nowhere.py)`\n",
        "other.md": "# other\n\n## there\n",
    })
    result = build_site(config_file, tmp_path / "site")
    assert result.warnings == []
    index = result.page("")
    assert 'href="other/#there"' in index and 'href="project-readme/"' in index
    assert 'href="source/tool.py/"' in index and 'href="theschwartz-queue/"' in index
    assert "print('shown')" in result.text("source/tool.py/")
    assert 'href="source/workermanager/"' in index and "theschwartz/" in result.text("source/workermanager/")


def test_a_hand_written_reference_page_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/reference/config.md written by hand would replace the generated page and drift."""
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    keys = "\n".join(f"## `{setting.key}`" for setting in config_module.SETTINGS)
    config_file = small_site(tmp_path, {"index.md": "# home\n", "reference/config.md": f"# Config\n\n{keys}\n"})
    with pytest.raises(AssertionError, match="written at build time"):
        build_site(config_file, tmp_path / "site")
