"""The README's relative links point at files (and headings) that exist; the docs site's
configuration names only pages that exist. (CI also builds the site with
``mkdocs build --strict``, which checks the links inside docs/.)"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading):
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text)


def _anchors(path):
    with open(path, encoding="utf-8") as f:
        return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*?)\s*$", f.read(), re.MULTILINE)}


def _relative_links(path):
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.DOTALL)  # not inside code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_in_the_readme_resolves():
    links = _relative_links(os.path.join(ROOT, "README.md"))
    assert links, "the README links to its documentation"
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(ROOT, path))
        if not os.path.exists(full):
            broken.append(f"{target}: no such file")
        elif anchor and full.endswith(".md") and anchor not in _anchors(full):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, broken


def test_slug_rule():
    assert _slug("climseg in your own model") == "climseg-in-your-own-model"
    assert _slug("CUDA kernels (`csrc/cuda`)") == "cuda-kernels-csrccuda"


def test_mkdocs_nav_names_existing_pages():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)

    def pages(entries):
        for entry in entries:
            for value in entry.values():
                yield from (pages(value) if isinstance(value, list) else [value])

    missing = [p for p in pages(config["nav"]) if not os.path.isfile(os.path.join(ROOT, "docs", p))]
    assert not missing, missing
