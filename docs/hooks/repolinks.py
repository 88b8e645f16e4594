"""MkDocs hook: links between the site and the rest of the repository work in both places.

The pages are written for GitHub readers too, so they link files outside docs/ by their path in
the repository (`../README.md`, `../examples/client.py`). In the site:

- a few markdown files outside docs/ are pages of their own (MIRRORED), and a link to one of them
  becomes a link to its page;
- a link to any other file of the repository becomes a link to a generated page that shows the
  file (source/<its path>.md, not in the navigation), and a link to a folder one to a page that
  lists its files (source/<its path>/index.md);
- a link to a file that does not exist is left alone, so that MkDocs's link validation reports
  it and `mkdocs build --strict` fails.

Links are rewritten in the parsed page (a Markdown tree processor that runs just before MkDocs's
own link resolution), so a link-like text inside code is never touched.
"""

from __future__ import annotations

import os
import posixpath
import re
import xml.etree.ElementTree as etree
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import markdown
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

#: markdown files outside docs/ shown as pages: repository path -> page (relative to docs/)
MIRRORED = {
    "README.md": "project-readme.md",
    "workermanager/theschwartz/README.md": "theschwartz-queue.md",
}
#: where the pages that show other repository files go (relative to docs/)
SOURCE_FOLDER = "source"
#: inline and reference-style link targets, for finding which repository files the pages link to
LINK_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?[^)]*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
#: how a shown file's text is highlighted, by its name's ending
LANGUAGES = {".py": "python", ".yml": "yaml", ".yaml": "yaml", ".sh": "bash", ".service": "ini",
             ".cfg": "ini", ".toml": "toml", ".json": "json", ".sql": "sql", ".pl": "perl", ".pm": "perl"}


class _Links:
    """What the hooks share during one build."""

    def __init__(self) -> None:
        self.root = ""
        #: repository path (posix, relative to the root) -> the site File that stands for it
        self.by_repo_path: dict[str, File] = {}
        #: the page being rendered, and its repository path
        self.page: Page | None = None
        self.page_repo_path = ""


LINKS = _Links()


def on_config(config: Any) -> Any:
    LINKS.root = os.path.dirname(os.path.abspath(config.config_file_path))
    config.markdown_extensions.append(_RepositoryLinksExtension())
    return config


def on_files(files: Files, config: Any) -> Files:
    LINKS.by_repo_path = {}
    docs_folder = _repo_path(config.docs_dir)
    for file in files.documentation_pages():
        LINKS.by_repo_path[posixpath.join(docs_folder, file.src_uri)] = file
    for repo_path, uri in MIRRORED.items():
        mirrored = File.generated(config, uri, abs_src_path=os.path.join(LINKS.root, repo_path))
        files.append(mirrored)
        LINKS.by_repo_path[repo_path] = mirrored
    for repo_path in sorted(_linked_repository_files(list(LINKS.by_repo_path.items()))):
        if os.path.isdir(os.path.join(LINKS.root, repo_path)):
            uri, content = f"{SOURCE_FOLDER}/{repo_path}/index.md", _folder_page(repo_path)
        else:
            uri, content = f"{SOURCE_FOLDER}/{repo_path}.md", _source_page(repo_path)
        shown = File.generated(config, uri, content=content, inclusion=InclusionLevel.NOT_IN_NAV)
        files.append(shown)
        LINKS.by_repo_path[repo_path] = shown
    return files


def on_page_markdown(markdown_text: str, page: Page, config: Any, files: Files) -> str:
    LINKS.page = page
    LINKS.page_repo_path = next((path for path, file in LINKS.by_repo_path.items() if file is page.file),
                                posixpath.join(_repo_path(config.docs_dir), page.file.src_uri))
    return markdown_text


def _repo_path(absolute: str) -> str:
    return os.path.relpath(absolute, LINKS.root).replace(os.sep, "/")


def _linked_repository_files(pages: list[tuple[str, File]]) -> set[str]:
    """Repository files (not pages) that some page links to. Read from the markdown text, so it
    may also find a link-like text in code: that only adds a page nobody links to."""
    found = set()
    for repo_path, file in pages:
        for match in LINK_TARGET.finditer(file.content_string):
            target = _target(repo_path, match.group(1) or match.group(2))
            if target is not None and target not in LINKS.by_repo_path:
                found.add(target)
    return found


def _target(from_repo_path: str, href: str) -> str | None:
    """The repository file `href`, written in the file at `from_repo_path`, points to; None for a
    URL, an anchor, or anything that is not an existing file or folder inside the repository."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return None
    target = posixpath.normpath(posixpath.join(posixpath.dirname(from_repo_path), unquote(parts.path)))
    if target.startswith("../") or target in ("..", ".") or target.split("/")[0] == ".git":
        return None
    if target in LINKS.by_repo_path or os.path.exists(os.path.join(LINKS.root, target)):
        return target
    return None


def _source_page(repo_path: str) -> str:
    with open(os.path.join(LINKS.root, repo_path), encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    longest_run = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest_run + 1)
    language = LANGUAGES.get(os.path.splitext(repo_path)[1], "text")
    return (f"# `{repo_path}`\n\nThe file `{repo_path}` of the repository, as this site was built.\n\n"
            f"{fence}{language}\n{text.rstrip()}\n{fence}\n")


def _folder_page(repo_path: str) -> str:
    """A folder of the repository: the names of its files and folders (caches and dot files left out)."""
    names = sorted(name + ("/" if os.path.isdir(os.path.join(LINKS.root, repo_path, name)) else "")
                   for name in os.listdir(os.path.join(LINKS.root, repo_path))
                   if not name.startswith(".") and name != "__pycache__")
    listing = "\n".join(f"- `{name}`" for name in names)
    return f"# `{repo_path}/`\n\nThe folder `{repo_path}/` of the repository, as this site was built.\n\n{listing}\n"


class _RepositoryLinksTreeprocessor(markdown.treeprocessors.Treeprocessor):
    """Points each link to a repository file at the site page that stands for it."""

    def run(self, root: etree.Element) -> None:
        page = LINKS.page
        if page is None:
            return
        for element in root.iter("a"):
            href = element.get("href")
            if not href:
                continue
            target = _target(LINKS.page_repo_path, href)
            if target is None or target not in LINKS.by_repo_path:
                continue
            site_file = LINKS.by_repo_path[target]
            relative = posixpath.relpath(site_file.src_uri, posixpath.dirname(page.file.src_uri) or ".")
            parts = urlsplit(href)
            element.set("href", urlunsplit(("", "", relative, parts.query, parts.fragment)))


class _RepositoryLinksExtension(markdown.Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (Markdown's name)
        md.treeprocessors.register(_RepositoryLinksTreeprocessor(md), "repository_links", 1)
