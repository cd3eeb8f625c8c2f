"""scripts/run_notebooks.sh on a fresh copy of the repository, on a machine without a network.

Every connection goes to a closed local port and LLM_MIRROR is unset: The Verdict and the
tokenizer come from bundled/, GPT-2's weights cannot be had. Chapter 5 must still run to its end,
and the script's summary must name what it skipped; with a mirror that holds GPT-2's files,
nothing is skipped.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from fake_gpt2 import write_fake_gpt2
from nbrun import REPO
from test_nb_ch05 import SMALL, TINY_HPARAMS

pytestmark = pytest.mark.slow


def fresh_copy(dest):
    """The files a clone would have (tracked, plus new files git does not ignore)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in names:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def run_script(repo, tmp_path, mirror=None):
    env = {k: v for k, v in os.environ.items() if k != "LLM_MIRROR"}
    env.update(NOTEBOOKS="ch05_pretraining.ipynb", SKIP_INSTALL="1", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"])
    if mirror:
        env["LLM_MIRROR"] = str(mirror)
    return subprocess.run(["bash", "scripts/run_notebooks.sh", "-y", json.dumps(SMALL)], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=900)


def test_without_a_network_chapter_5_runs_to_its_end_and_the_summary_names_the_skip(tmp_path):
    repo = fresh_copy(tmp_path / "repo")
    run = run_script(repo, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run.stdout.split("=== summary", 1)[1]
    assert "ch05_pretraining.ipynb: SKIPPED: OpenAI's GPT-2 124M weights" in summary
    assert "LLM_MIRROR" in summary and "gpt2/124M" in summary  # says how to provide them
    executed = json.loads((repo / "out" / "notebooks" / "ch05_pretraining.ipynb").read_text())
    last_code = [c for c in executed["cells"] if c["cell_type"] == "code"][-1]
    assert last_code["execution_count"] is not None  # ran to the end, not stopped at section 5
    assert not (repo / "gpt2" / "124M" / "model.ckpt.index").exists()


def test_with_a_mirror_holding_gpt2_nothing_is_skipped(tmp_path):
    repo = fresh_copy(tmp_path / "repo")
    mirror = tmp_path / "mirror"
    write_fake_gpt2(mirror, "124M", TINY_HPARAMS)
    run = run_script(repo, tmp_path, mirror)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "nothing was skipped" in run.stdout.split("=== summary", 1)[1]
