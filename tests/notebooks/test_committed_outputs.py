"""Committed notebooks carry the outputs of a real run of the committed code.

scripts/commit_outputs.sh runs a notebook in place and records a fingerprint of the code it ran
(its code cells, the shared/ modules it imports, the bundled data) and of the outputs it printed.
Every notebook with outputs must carry that record, and both digests must still match.
"""
import json
import shutil
import sys

import pytest

from nbrun import REPO

sys.path.insert(0, str(REPO / "scripts"))
import fingerprint  # noqa: E402  (scripts/ is not a package)

NOTEBOOKS = sorted(p.relative_to(REPO).as_posix() for p in
                   [*REPO.glob("*.ipynb"), *REPO.glob("chapters/*.ipynb")])


def has_outputs(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return any(c.get("outputs") for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_is_committed_with_the_outputs_of_its_current_code(name):
    path = REPO / name
    assert has_outputs(path), f"{name} is committed without outputs: bash scripts/commit_outputs.sh {name}"
    assert fingerprint.problems(path) == [], f"bash scripts/commit_outputs.sh {name}"
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))  # one whole run
    assert not any(o.get("output_type") == "error" for c in cells for o in c["outputs"])


@pytest.fixture
def copy_of_repo(tmp_path):
    """The notebook with the fewest library files, with shared/ and bundled/, in a temporary copy."""
    name = "chapters/ch03_attention.ipynb"
    for folder in ("shared", "bundled"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "chapters").mkdir()
    shutil.copy(REPO / name, tmp_path / name)
    return tmp_path, tmp_path / name


def test_the_check_sees_a_number_edited_by_hand(copy_of_repo):
    repo, path = copy_of_repo
    assert fingerprint.problems(path, repo) == []
    nb = json.loads(path.read_text())
    stream = next(o for c in nb["cells"] for o in c.get("outputs", []) if o.get("text"))
    text = "".join(stream["text"])
    digit = next(ch for ch in text if ch.isdigit())
    stream["text"] = text.replace(digit, str((int(digit) + 1) % 10), 1)
    path.write_text(json.dumps(nb))
    assert fingerprint.problems(path, repo) == [
        "its outputs differ from the ones its run printed (edited by hand?)"]


def test_the_check_sees_a_change_in_a_library_file_the_notebook_imports(copy_of_repo):
    repo, path = copy_of_repo
    used = fingerprint.library_files(path, repo)
    assert "shared/model.py" in used and "shared/trainer.py" not in used  # only what it imports
    (repo / "shared" / "trainer.py").write_text("# not imported by chapter 3\n")
    assert fingerprint.problems(path, repo) == []
    with open(repo / "shared" / "model.py", "a") as f:
        f.write("\n# a change\n")
    assert fingerprint.problems(path, repo) == [
        "its code or a file it uses changed since its outputs were made"]
