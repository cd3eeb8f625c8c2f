"""The fingerprint of a notebook's committed run: the code it ran (its code cells without their
comments, the modules of shared/ they import and those import, all the way down, and the data in
bundled/) and the outputs that run printed.

    python scripts/fingerprint.py --record NOTEBOOK ...   # after a run: store it in the metadata
    python scripts/fingerprint.py --check NOTEBOOK ...    # is it still true? (exit status 1 if not)

scripts/commit_outputs.sh records it after each run; tests/notebooks/test_committed_outputs.py checks every
notebook that carries outputs. A check fails when the code changed since the run (re-run the
notebook) or when an output was edited by hand (its digest no longer matches).
"""
import ast
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = "committed_run"


def _cells(notebook: Path) -> list[dict]:
    return json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]


def shared_imports(source: str, repo: Path) -> set[str]:
    """Modules of shared/ that `source` imports, as paths relative to the repository."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics: read its import lines only
        tree = ast.parse("\n".join(line for line in source.splitlines()
                                   if line.startswith(("import ", "from "))))
    found = {"shared/__init__.py"}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            path = Path(*name.split(".")).with_suffix(".py")
            if name.split(".")[0] == "shared" and (repo / path).is_file():
                found.add(path.as_posix())
    return found


def library_files(notebook: Path, repo: Path = REPO) -> list[str]:
    """Every shared/ module the notebook needs, transitively."""
    todo = set().union(*(shared_imports("".join(c["source"]), repo)
                         for c in _cells(notebook) if c["cell_type"] == "code"))
    done = set()
    while todo:
        path = todo.pop()
        done.add(path)
        todo |= shared_imports((repo / path).read_text(encoding="utf-8"), repo) - done
    return sorted(done)


def _code(source: str) -> str:
    """What a cell runs, without its comments and layout (so a comment that quotes the run's own
    time can be written after the run); a cell with IPython magics is taken as it is."""
    try:
        return ast.dump(ast.parse(source))
    except SyntaxError:
        return source


def code_digest(notebook: Path, repo: Path = REPO) -> tuple[str, list[str]]:
    digest = hashlib.sha256()
    for cell in _cells(notebook):
        if cell["cell_type"] == "code":
            digest.update(_code("".join(cell["source"])).encode() + b"\0")
    files = library_files(notebook, repo) + sorted(  # the data, not its README
        p.relative_to(repo).as_posix() for p in (repo / "bundled").rglob("*")
        if p.is_file() and p.suffix != ".md")
    for name in files:
        digest.update(name.encode() + b"\0" + (repo / name).read_bytes() + b"\0")
    return digest.hexdigest(), files


def output_digest(notebook: Path) -> str:
    """The text the run printed and the figures it drew, cell by cell."""
    digest = hashlib.sha256()
    for cell in _cells(notebook):
        for out in cell.get("outputs", []):
            digest.update(json.dumps({k: out.get(k) for k in ("name", "text", "data", "ename")},
                                     sort_keys=True).encode() + b"\0")
    return digest.hexdigest()


def record(notebook: Path) -> None:
    import nbformat  # written as Jupyter and papermill write notebooks

    code, files = code_digest(notebook)
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata[KEY] = {"code_sha256": code, "outputs_sha256": output_digest(notebook),
                        "files": files}
    nbformat.write(nb, notebook)


def problems(notebook: Path, repo: Path = REPO) -> list[str]:
    """Why the notebook's outputs are not those of a run of the code beside it (empty: they are)."""
    meta = json.loads(Path(notebook).read_text(encoding="utf-8"))["metadata"].get(KEY)
    if meta is None:
        return ["it carries outputs but no record of the run that made them"]
    found = []
    if code_digest(notebook, repo)[0] != meta["code_sha256"]:
        found.append("its code or a file it uses changed since its outputs were made")
    if output_digest(notebook) != meta["outputs_sha256"]:
        found.append("its outputs differ from the ones its run printed (edited by hand?)")
    return found


if __name__ == "__main__":
    mode, names = sys.argv[1], sys.argv[2:]
    if mode == "--record":
        for name in names:
            record(Path(name).resolve())
    elif mode == "--check":
        bad = {name: problems(Path(name).resolve()) for name in names}
        for name, why in bad.items():
            for reason in why:
                print(f"{name}: {reason}; re-run it: bash scripts/commit_outputs.sh {name}")
        sys.exit(1 if any(bad.values()) else 0)
    else:
        sys.exit("usage: python scripts/fingerprint.py --record|--check NOTEBOOK ...")
