"""The library keeps README's map: import-linter's contracts in pyproject.toml hold for shared/.

The layers (commands > trainer > io > pieces > rules) allow a module to import only from its own
layer and those below; a second contract forbids the pieces any io module. The contracts are
checked on the code as it is, and once on a copy of the package with one bad import added, to
show that a piece importing io is caught.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package `shared` under `root`, with root's pyproject.toml."""
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (requirements-dev.txt)")
    env = {**os.environ, "PYTHONPATH": str(root)}  # this `shared`, not the installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_library_keeps_its_import_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout, result.stdout


def test_a_piece_that_imports_io_breaks_the_contracts(tmp_path):
    """The check can fail: model.py (a piece) importing shared.download (io) breaks both the
    layers and the forbidden contract, and the report names that import."""
    shutil.copytree(REPO / "shared", tmp_path / "shared",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    model = tmp_path / "shared" / "model.py"
    model.write_text(model.read_text(encoding="utf-8") + "\nimport shared.download\n",
                     encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout, result.stdout
    assert "shared.model -> shared.download" in result.stdout, result.stdout


def contract_layers() -> list[tuple[str, set]]:
    """[(layer name, its modules that exist)], top to bottom, from pyproject.toml: the names from
    the contract's name, the modules from its layers (a module in parentheses may be absent)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    names = contract["name"].split(":", 1)[1].split(">")
    layers = []
    for name, line in zip(names, contract["layers"], strict=True):
        modules = {m.strip().strip("()") for m in re.split(r"[|:]", line)}
        layers.append((name.strip(), {m for m in modules if (REPO / "shared" / f"{m}.py").exists()}))
    return layers


def test_readme_draws_the_map_the_contract_enforces():
    """README's "Layout" lists the same layers, in the same order, with the same modules."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index("\nshared/ "):text.index("\nbundled/ ")]
    readme = []
    for line in block.splitlines():
        if heading := re.match(r"  (\w+): ", line):
            readme.append((heading.group(1), set()))
        elif module := re.match(r"  (\w+)\.py ", line):
            readme[-1][1].add(module.group(1))
    assert readme == contract_layers()
    every_module = {path.stem for path in (REPO / "shared").glob("*.py")} - {"__init__"}
    assert set().union(*(modules for _, modules in readme)) == every_module
