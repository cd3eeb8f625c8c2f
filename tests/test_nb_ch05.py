"""ch05_pretraining.ipynb: its committed form, and one run top to bottom with small parameters.

Section 5 downloads GPT-2 "124M". Here a random checkpoint of the real 124M shapes, in OpenAI's
TensorFlow layout, stands in for it: written once per test session into a temporary mirror that
LLM_MIRROR lists before ../shared/mirror (which serves the tokenizer files and The Verdict), so the
whole notebook runs offline. Printed numbers are checked against values computed here, without
the notebook's code: token counts from tiktoken, ln(vocab size), softmax probabilities with numpy,
the parameter count of Hugging Face's GPT-2.
"""
import math
import os
import re
import shutil

import nbformat
import numpy as np
import pytest

from fake_gpt2 import REAL_HPARAMS, hf_parameter_count, write_fake_gpt2
from nbrun import REPO, cell_text, run_notebook

NOTEBOOK = "ch05_pretraining.ipynb"
# Tiny width, few tokens per step: the 50257-wide output head dominates the cost on a CPU.
SMALL = {"context_length": 64, "emb_dim": 16, "num_layers": 2, "num_heads": 2, "batch_size": 4,
         "num_epochs": 2, "learning_rate": 5e-3, "eval_freq": 4, "eval_iter": 1,
         "extra_epochs": 1, "num_samples": 2000, "device_name": "cpu", "gpt2_new_tokens": 8,
         "gpt2_eval_batches": 1,
         "gpt2_weights_note": "random weights written by tests/fake_gpt2.py, not OpenAI's"}
TOY_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]
TOY_VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]


@pytest.fixture(scope="session")
def gpt2_124m_mirror(tmp_path_factory):
    """A mirror holding a random GPT-2 of the real 124M shapes (about 500 MB); removed after."""
    mirror = tmp_path_factory.mktemp("gpt2-124M-mirror")
    write_fake_gpt2(mirror, "124M", REAL_HPARAMS["124M"])
    yield mirror
    shutil.rmtree(mirror, ignore_errors=True)


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def printed(pattern, text, cast=float):
    match = re.search(pattern, text)
    assert match, f"not printed: {pattern}"
    return [cast(group.replace(",", "")) for group in match.groups()]


def test_committed_form():
    nb = nbformat.read(str(REPO / NOTEBOOK), as_version=4)
    cells = code_cells(nb)
    assert all(c.outputs == [] and c.execution_count is None for c in cells), \
        "commit the notebook without outputs (rebuild it from its builder script)"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1] is cells[0]
    assert "parameters" in cells[0].metadata.get("tags", [])
    knobs = set(re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.M))
    assert set(SMALL) | {"data_dir", "models_dir", "gpt2_size", "loss_plot_path", "init"} <= knobs
    # The final pieces are imported from shared/, never pasted again.
    source = "\n".join(c.source for c in cells)
    for name in ("train_model_simple", "calc_loss_loader", "generate", "load_weights_into_gpt",
                 "assign", "download_and_load_gpt2", "GPTModel"):
        assert f"def {name}(" not in source and f"class {name}(" not in source


@pytest.mark.slow
def test_runs_top_to_bottom(tmp_path, monkeypatch, gpt2_124m_mirror, tokenizer, verdict_text):
    bases = [str(gpt2_124m_mirror), os.environ["LLM_MIRROR"]]
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join(bases))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only wait on each other
    params = {**SMALL, "data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path / "gpt2"),
              "loss_plot_path": str(tmp_path / "loss.png")}
    text = cell_text(run_notebook(NOTEBOOK, params, tmp_path))
    ctx, batch = SMALL["context_length"], SMALL["batch_size"]

    # 1. An untrained model is close to a uniform guess: loss ~ ln(50257).
    for split in ("training", "validation"):
        (loss,) = printed(rf"initial {split} loss:\s+([\d.]+)", text)
        assert abs(loss - math.log(50257)) < 0.5

    # Token counts, recomputed with tiktoken: non-overlapping windows of ctx tokens, each with
    # one more token for its target; training drops the incomplete last batch.
    split = int(0.9 * len(verdict_text))
    n_train = len(tokenizer.encode(verdict_text[:split]))
    n_val = len(tokenizer.encode(verdict_text[split:]))
    train_windows = (n_train - ctx - 1) // ctx + 1
    val_windows = (n_val - ctx - 1) // ctx + 1
    train_tokens = train_windows // batch * batch * ctx
    assert printed(r"training tokens:\s+([\d,]+)", text, int) == [train_tokens]
    assert printed(r"validation tokens:\s+([\d,]+)", text, int) == [val_windows * ctx]
    total = len(tokenizer.encode(verdict_text))
    assert f"{len(verdict_text):,} characters, {total:,} tokens" in text

    # 2. Training lowers the loss, and the plot was saved.
    evals = re.findall(r"Train loss ([\d.]+), Val loss ([\d.]+)", text)
    assert float(evals[-1][0]) < float(evals[0][0]) - 1.0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The unigram baseline the prose compares with: recomputed with numpy from tiktoken's ids
    # (training-text frequencies plus 0.01 per vocabulary entry).
    train_ids = np.array(tokenizer.encode(verdict_text[:split]))
    val_ids = np.array(tokenizer.encode(verdict_text[split:]))
    freq = np.bincount(train_ids, minlength=50257) + 0.01
    freq /= freq.sum()
    unigram = printed(r"unigram baseline: training ([\d.]+), validation ([\d.]+)", text)
    expected = [-np.log(freq[ids]).mean() for ids in (train_ids, val_ids)]
    assert unigram == pytest.approx(expected, abs=1e-3)

    # 3. Toy sampling: the counts follow softmax(logits / T), computed here with numpy.
    rows = (line.split() for line in text.splitlines())
    table = {r[0]: [int(v) for v in r[1:]] for r in rows if len(r) == 4 and r[0] in TOY_VOCAB}
    n = SMALL["num_samples"]
    for column, T in enumerate((1.0, 0.1, 5.0)):
        p = np.exp(np.array(TOY_LOGITS) / T)
        p /= p.sum()
        counts = np.array([table[word][column] for word in TOY_VOCAB])
        assert counts.sum() == n
        assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1)

    # 4. The checkpoint restores the model exactly.
    assert "identical logits: True" in text

    # 5. GPT-2: loaded, checked, timed, and labelled as random here.
    assert "NOTE: random weights written by tests/fake_gpt2.py" in text
    assert "gpt2_config(gpt2_size) matches hparams.json: True" in text
    assert "c_attn == [W_query | W_key | W_value]: equal" in text
    (count,) = printed(r"([\d,]+) parameters \(the head shares", text, int)
    assert count == hf_parameter_count(REAL_HPARAMS["124M"])
    tf_s, cache_s = printed(r"On this machine: TensorFlow checkpoint ([\d.]+) s, "
                            r"safetensors cache ([\d.]+) s", text)
    assert tf_s > 0 and cache_s >= 0
    assert (tmp_path / "gpt2" / "124M" / "params.safetensors").exists()
    assert re.search(r"GPT-2 124M\s+[\d.]+\s+[\d.]+", text)
