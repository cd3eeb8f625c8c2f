"""A fresh clone's notebooks find `shared` with no install step and nothing on PYTHONPATH.

The test venv has this repository installed in editable mode (a .pth file in site-packages adds an
import hook that serves `shared` from the checkout), and the test runner puts the checkout on
PYTHONPATH. Neither exists for a reader who clones and runs `jupyter lab`. So the notebook runs in a
kernel started with `python -S` (no site module: no .pth file is processed) whose only PYTHONPATH
entries are the venv's site-packages folders (folders on PYTHONPATH do not process .pth files), on a
copy of the repository in a temporary folder, with the working directory set to the copy's
chapters/ folder, as Jupyter does when a notebook is opened there.
"""
import json
import os
import shutil
import site
import sys

import nbformat
import pytest

from nbrun import REPO, cell_text

pytestmark = pytest.mark.slow

SMALL = {"max_length": 4, "batch_size": 8, "output_dim": 32}  # ch02's knobs, kept small
PROBE = ("import sys, shared\n"
         "print('shared imported from', shared.__file__)\n"
         "print('editable install hooks:', [m for m in sys.modules if m.startswith('__editable__')])")


@pytest.fixture
def bare_kernel(tmp_path, monkeypatch):
    """The name of a kernel that sees the venv's packages but neither the editable install nor
    the checkout."""
    folder = tmp_path / "jupyter" / "kernels" / "bare"
    folder.mkdir(parents=True)
    packages = site.getsitepackages()  # the venv's packages, reached without processing .pth files
    spec = {"argv": [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "bare", "language": "python",
            "env": {"PYTHONPATH": os.pathsep.join(packages), "MPLBACKEND": "Agg"}}
    (folder / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the kernel's env adds to the server's
    return "bare"


def with_probe(notebook, destination):
    """A copy of `notebook` with a last cell that prints where `shared` came from."""
    nb = nbformat.read(str(notebook), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nbformat.write(nb, str(destination))
    return destination


def execute(path, kernel, cwd, parameters=None):
    import papermill as pm

    return pm.execute_notebook(str(path), str(path.with_suffix(".out.ipynb")),
                               parameters=parameters or {}, cwd=str(cwd), kernel_name=kernel,
                               progress_bar=False, execution_timeout=600)


def test_chapter_runs_from_a_fresh_copy_without_install(tmp_path, bare_kernel):
    clone = tmp_path / "clone"
    for folder in ("chapters", "shared", "bundled"):  # what a clone holds
        shutil.copytree(REPO / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.executed.ipynb"))
    name = "ch02_working_with_text"
    notebook = with_probe(clone / "chapters" / f"{name}.ipynb", clone / "chapters" / "probe.ipynb")
    text = cell_text(execute(notebook, bare_kernel, clone / "chapters", SMALL))
    assert f"shared imported from {clone / 'shared' / '__init__.py'}" in text
    assert "editable install hooks: []" in text


def test_the_bare_kernel_cannot_import_shared_on_its_own(tmp_path, bare_kernel):
    """The check above can fail: outside a copy of the repository the same kernel finds no
    `shared`, so the notebook's own first lines are what found it."""
    probe = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)]), str(probe))
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match="No module named 'shared'"):
        execute(probe, bare_kernel, tmp_path)


NOTEBOOKS = sorted(p.relative_to(REPO).as_posix() for p in
                   [*REPO.glob("*.ipynb"), *REPO.glob("chapters/*.ipynb")])


def path_finder(name):
    """The statements of the notebook's first import cell up to the loop that puts a folder on
    sys.path: what runs before its first `import shared`."""
    import ast

    code = [c for c in nbformat.read(str(REPO / name), as_version=4).cells if c.cell_type == "code"]
    source = next(c.source for c in code if "import shared" in c.source)
    kept = []
    for node in ast.parse(source).body:
        kept.append(ast.get_source_segment(source, node))
        if isinstance(node, ast.For) and "sys.path.insert" in kept[-1]:
            return "\n".join(kept)
    raise AssertionError(f"{name}: no loop puts a folder on sys.path before `import shared`")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_finds_shared_from_its_folder_without_an_install(name, tmp_path):
    """Run each notebook's lines before its first `import shared` in a bare interpreter (-S: no
    site-packages, no .pth hook; -I: not even the working directory on the path), in the folder
    where Jupyter starts the notebook (its folder in a copy of the repository), then import shared:
    it must come from the copy. Without those lines the same interpreter finds no shared."""
    import subprocess

    clone = tmp_path / "clone"
    shutil.copytree(REPO / "shared", clone / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    folder = (clone / name).parent
    folder.mkdir(parents=True, exist_ok=True)
    probe = "import shared; print(shared.__file__)"

    def run(code):
        return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=folder,
                              capture_output=True, text=True, timeout=60)
    found = run(path_finder(name) + "\n" + probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(clone / "shared" / "__init__.py")
    assert "No module named 'shared'" in run(probe).stderr
