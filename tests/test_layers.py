"""The layout holds: no module uses another module's private name, no Python file of the package
grows past 500 lines, and the layers of docs/architecture.md hold (import-linter's contracts in
pyproject.toml, run by .ci/run as ``lint-imports``; checked here too where import-linter is
installed). Read from the source with :mod:`ast`, nothing is imported."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("climseg", "kernels")
MAX_LINES = 500


def package_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def module_name(path):
    """The dotted name a file is imported under (``kernels/`` installs as ``climseg.kernels``)."""
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    if rel.startswith("kernels"):
        rel = "climseg." + rel
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path):
    """``(line, text)`` of every private name this file takes from another climseg module:
    ``from climseg.x import _name`` and ``alias._name`` where ``alias`` is an imported climseg module.
    Private modules (``climseg._C``, ``_cuda``) may be imported by the package they belong to."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    me = module_name(path)
    modules = {}  # local alias -> climseg module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("climseg"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if is_private(alias.name) and node.module != me and not is_private_module_of_parent(full, me):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                modules[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("climseg"):
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if is_private(node.attr) and modules[node.value.id] != me:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def is_private_module_of_parent(full, importer):
    """``climseg._C`` imported from inside ``climseg``: a compiled module of the package, private to it."""
    parent = full.rpartition(".")[0]
    return is_private(full.rpartition(".")[2]) and (importer == parent or importer.startswith(parent + "."))


def test_no_private_names_across_modules():
    offenders = [
        f"{os.path.relpath(path, ROOT)}:{line}: {text}" for path in package_files() for line, text in private_uses(path)
    ]
    assert not offenders, "private names used outside their module:\n" + "\n".join(offenders)


def test_the_checker_finds_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from climseg.data.netcdf import _find\nimport climseg.nn.atrous as a\na._fold(1)\n")
    assert [text for _, text in private_uses(str(bad))] == ["from climseg.data.netcdf import _find", "a._fold"]


def test_no_file_over_500_lines():
    long = [
        f"{os.path.relpath(p, ROOT)}: {n} lines"
        for p in package_files()
        if (n := sum(1 for _ in open(p, encoding="utf-8"))) > MAX_LINES
    ]
    assert not long, f"files over {MAX_LINES} lines:\n" + "\n".join(long)


@pytest.mark.skipif(
    shutil.which("lint-imports") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "lint-imports")),
    reason="import-linter is not installed",
)
def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
