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

from fake_gpt2 import REAL_HPARAMS, hf_parameter_count, write_fake_gpt2, write_trained_gpt2
from nbrun import REPO, cell_text, run_notebook

NOTEBOOK = "ch05_pretraining.ipynb"
SOLUTIONS = "ch05_pretraining_solutions.ipynb"
INLINE = "module://matplotlib_inline.backend_inline"  # figures become outputs, as in Jupyter
# Tiny width, few tokens per step: the 50257-wide output head dominates the cost on a CPU.
SMALL = {"context_length": 64, "emb_dim": 16, "num_layers": 2, "num_heads": 2, "batch_size": 4,
         "num_epochs": 2, "learning_rate": 5e-3, "eval_freq": 4, "eval_iter": 1,
         "extra_epochs": 1, "num_samples": 2000, "device_name": "cpu", "gpt2_new_tokens": 8,
         "gpt2_eval_batches": 1}
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
    """Parameters first; the chapter builds its own pieces (and checks them against shared/);
    no test knob and no TensorFlow in the chapter; exercises at the end, linked to the solutions.
    The committed notebook may carry the outputs of a real run (scripts/commit_outputs.sh)."""
    nb = nbformat.read(str(REPO / NOTEBOOK), as_version=4)
    cells = code_cells(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1] is cells[0]
    assert "parameters" in cells[0].metadata.get("tags", [])
    knobs = set(re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.M))
    assert set(SMALL) | {"data_dir", "models_dir", "gpt2_size", "loss_plot_path", "init"} <= knobs
    source = "\n".join(c.source for c in cells)
    for name in ("calc_loss_batch", "calc_loss_loader", "evaluate_model", "generate_and_print_sample",
                 "train_model_simple", "top_k_mask", "sample_next_token", "generate", "assign",
                 "load_weights_into_gpt"):
        assert f"def {name}(" in source, f"the chapter must build {name} itself"
    for banned in ("gpt2_weights_note", "import tensorflow", "read_tf_checkpoint", "PARAMS_CACHE",
                   "load_params_cache", "use_cache"):
        assert banned not in source, banned
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert len(set(re.findall(r"Exercise 5\.(\d+)", prose))) >= 3
    assert SOLUTIONS in nb.cells[-1].source and (REPO / SOLUTIONS).is_file()


@pytest.mark.slow
def test_runs_top_to_bottom(tmp_path, monkeypatch, gpt2_124m_mirror, tokenizer, verdict_text):
    bases = [str(gpt2_124m_mirror), os.environ["LLM_MIRROR"]]
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join(bases))
    monkeypatch.setenv("MPLBACKEND", INLINE)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only wait on each other
    params = {**SMALL, "data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path / "gpt2"),
              "loss_plot_path": str(tmp_path / "loss.png")}
    nb = run_notebook(NOTEBOOK, params, tmp_path)
    text = cell_text(nb)
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

    # 5. GPT-2: loaded, checked, and reported as not OpenAI's by the chapter's own loss check.
    assert "gpt2_config(gpt2_size) matches hparams.json: True" in text
    assert "c_attn == [W_query | W_key | W_value]: equal" in text
    (count,) = printed(r"([\d,]+) parameters \(the head shares", text, int)
    assert count == hf_parameter_count(REAL_HPARAMS["124M"])
    (gpt2_val, baseline) = printed(r"GPT-2 124M validation loss ([\d.]+), unigram baseline ([\d.]+)", text)
    assert gpt2_val > baseline  # random weights
    assert "NOTE: these weights predict the text no better than word frequencies, so they are not " \
           "OpenAI's trained GPT-2" in text
    assert "this run, NOT GPT-2 (random stand-in weights): 'Every effort moves you" in text
    assert "the same text as the book's" not in text  # no comparison for a stand-in
    assert (tmp_path / "gpt2" / "124M" / "model.ckpt.index").exists()
    assert re.search(r"GPT-2 124M \(NOT GPT-2: random stand-in\)\s+[\d.]+\s+[\d.]+", text)
    # The unigram row of the final table is the baseline recomputed above.
    assert printed(r"unigram baseline\s+([\d.]+)\s+([\d.]+)", text) == pytest.approx(expected, abs=1e-3)

    # 6. Every piece the chapter builds equals the library's, and the claims are shown by cells.
    for confirmation in ("cross-entropy by hand == F.cross_entropy",
                         "calc_loss_batch == shared.train.calc_loss_batch",
                         "calc_loss_loader == shared.train.calc_loss_loader",
                         "train_model_simple == shared.train.train_model_simple: same losses, log and weights",
                         "sample_next_token == shared.generate.sample_next_token: same draws",
                         "generate == shared.generate.generate: same tokens",
                         "gather == picking table[row, wanted[row]] row by row",
                         "torch.save + load_state_dict == save_checkpoint + load_checkpoint: same weights and AdamW state",
                         "load_weights_into_gpt == shared.gpt2.load_weights_into_gpt: same logits"):
        assert confirmation in text, confirmation
    assert f"validation split: {n_val} tokens" in text
    assert f"max_length + 1 = 1025" in text  # a 1024-token window does not fit the validation split
    figures = sum("image/png" in output.get("data", {}) for cell in nb.cells
                  for output in cell.get("outputs", []))
    assert figures >= 4  # the loss curves, the per-token probabilities, two temperature plots


# -- section 5 with trained weights: the comparison branch runs ----------------------------------

@pytest.fixture(scope="session")
def trained_gpt2_mirror(tmp_path_factory, verdict_text):
    """A mirror serving, under the name "124M", a tiny GPT-2 trained on the validation split of The
    Verdict (so its validation loss is far below a unigram model's, as OpenAI's is); returns
    (mirror, tf variables)."""
    mirror = tmp_path_factory.mktemp("trained-gpt2-mirror")
    val_text = verdict_text[int(0.9 * len(verdict_text)):]
    return mirror, write_trained_gpt2(mirror, "124M", TINY_HPARAMS, val_text)


@pytest.mark.slow
def test_trained_weights_are_compared_with_the_book_and_the_baselines(tmp_path, monkeypatch,
                                                                       trained_gpt2_mirror, tokenizer,
                                                                       verdict_text):
    """With weights that beat the unigram baseline, section 5 takes its real-weights branch: GPT-2's
    validation loss (checked against Hugging Face's GPT-2 on the same weights) is compared with the
    chapter's model and the baseline, and the sample with the book's quoted one."""
    import torch
    from fake_gpt2 import hf_gpt2_from_tf_variables

    mirror, tf_vars = trained_gpt2_mirror
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join([str(mirror), os.environ["LLM_MIRROR"]]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = {**SMALL, "data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path / "gpt2"),
              "gpt2_new_tokens": 25}
    nb = run_notebook(NOTEBOOK, params, tmp_path)
    text = cell_text(nb)

    # GPT-2's validation loss on the first batch, from Hugging Face's model on the same weights.
    ctx, batch = SMALL["context_length"], SMALL["batch_size"]
    ids = torch.tensor(tokenizer.encode(verdict_text[int(0.9 * len(verdict_text)):]))
    inputs = torch.stack([ids[i * ctx:i * ctx + ctx] for i in range(batch)])
    targets = torch.stack([ids[i * ctx + 1:i * ctx + ctx + 1] for i in range(batch)])
    with torch.no_grad():
        logits = hf_gpt2_from_tf_variables(tf_vars, TINY_HPARAMS)(inputs).logits
    expected_val = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    (gpt2_val, baseline) = printed(r"GPT-2 124M validation loss ([\d.]+), unigram baseline ([\d.]+)", text)
    assert gpt2_val == pytest.approx(expected_val, abs=2e-3) and gpt2_val < baseline
    (margin,) = printed(r"predict the text ([\d.]+) nats per token better", text)
    assert margin == pytest.approx(baseline - gpt2_val, abs=0.011)

    # The final table and the verdict computed from it.
    (scratch_val,) = printed(r"from scratch\s+[\d.]+\s+([\d.]+)", text)
    (table_val,) = printed(r"GPT-2 124M\s+[\d.]+\s+([\d.]+)", text)
    assert table_val == pytest.approx(gpt2_val, abs=1e-3)
    below_scratch, below_unigram = printed(
        r"validation loss is (-?[\d.]+) below the from-scratch model's and (-?[\d.]+) below the unigram", text)
    assert below_scratch == pytest.approx(scratch_val - table_val, abs=2e-3)
    assert below_unigram == pytest.approx(baseline - table_val, abs=2e-3)
    assert "the book's numbers are for 124M at context 256, batch 2, all batches; this run differs" in text
    assert re.search(r"GPT-2 124M, quoted from the book\s+3\.755\s+3\.560", text)

    # The sample: compared with the book's, and the verdict is the truth about the two strings.
    (sample,) = re.findall(r"this run, the loaded GPT-2 124M: (['\"].*['\"])", text)
    (book,) = re.findall(r"the book, OpenAI's GPT-2 124M: (['\"].*['\"])", text)
    (verdict,) = re.findall(r"the same text as the book's: (True|False)", text)
    assert verdict == str(sample == book) == "False"
    assert "NOT GPT-2" not in text


# -- a library with a planted bug: the chapter's own equality checks must catch it -----------------

TINY_HPARAMS = {"n_vocab": 50257, "n_ctx": 128, "n_embd": 32, "n_head": 2, "n_layer": 2}


@pytest.fixture(scope="session")
def tiny_gpt2_mirror(tmp_path_factory):
    """A mirror serving a tiny random GPT-2 under the name "124M"; returns (mirror, tf variables)."""
    mirror = tmp_path_factory.mktemp("tiny-gpt2-mirror")
    return mirror, write_fake_gpt2(mirror, "124M", TINY_HPARAMS)


PLANTED_BUGS = {  # file in shared/, (correct text, broken text), the failing check's message
    "calc_loss_batch": ("train.py", ("target_batch.flatten())", "target_batch.flatten(), label_smoothing=0.1)"),
                        "calc_loss_batch differs from shared.train.calc_loss_batch"),
    "sample_next_token": ("generate.py", ("probs = torch.softmax(logits / temperature, dim=-1)",
                                          "probs = torch.softmax(logits / (1.1 * temperature), dim=-1)"),
                          "sample_next_token differs from shared.generate's"),
    "load_weights_into_gpt": ("gpt2.py", ('("att.W_query.weight", "attn.c_attn.w", 0, True)',
                                          '("att.W_query.weight", "attn.c_attn.w", 1, True)'),
                              "Tensor-likes are not close"),
}


@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_planted_library_bug_fails_the_chapters_check(bug, tmp_path, monkeypatch, tiny_gpt2_mirror):
    """Run the chapter against a copy of shared/ with one bug planted: the notebook's first code cell
    puts the folder holding shared/ (here the temporary copy) first on sys.path, and the chapter's
    check of that piece must stop the run."""
    import papermill as pm

    filename, (correct, broken), message = PLANTED_BUGS[bug]
    shutil.copytree(REPO / "shared", tmp_path / "shared",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bundled", tmp_path / "bundled")  # the tokenizer's files
    library_file = tmp_path / "shared" / filename
    source = library_file.read_text(encoding="utf-8")
    assert source.count(correct) == 1, f"the planted bug no longer fits shared/{filename}"
    library_file.write_text(source.replace(correct, broken), encoding="utf-8")

    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join([str(tiny_gpt2_mirror[0]), os.environ["LLM_MIRROR"]]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = {**SMALL, "data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path / "gpt2")}
    with pytest.raises(pm.PapermillExecutionError) as failure:
        run_notebook(NOTEBOOK, params, tmp_path)
    assert message in str(failure.value)


# -- the solutions notebook ----------------------------------------------------------------------

SOLUTIONS_SMALL = {"context_length": 64, "emb_dim": 16, "num_layers": 2, "num_heads": 2,
                   "batch_size": 4, "num_epochs": 2, "learning_rate": 5e-3, "eval_freq": 4,
                   "eval_iter": 1, "new_tokens": 12, "init_seeds": [123, 124]}


@pytest.mark.slow
def test_solutions_run_and_answers_check(tmp_path, monkeypatch, trained_gpt2_mirror, tokenizer,
                                         verdict_text):
    import torch
    from fake_gpt2 import hf_gpt2_from_tf_variables

    mirror, tf_vars = trained_gpt2_mirror  # trained weights: exercise 5.3 takes its comparison branch
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join([str(mirror), os.environ["LLM_MIRROR"]]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = {**SOLUTIONS_SMALL, "data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path / "gpt2")}
    nb = run_notebook(SOLUTIONS, params, tmp_path)
    assert "parameters" in code_cells(nb)[0].metadata.get("tags", [])
    text = cell_text(nb)

    # 5.1: restoring AdamW's state (and the RNG's) continues the run bit for bit; a fresh AdamW does not.
    assert "resuming with the optimizer state reproduces the uninterrupted run exactly: True" in text
    assert "resuming with a fresh AdamW reproduces it: False" in text

    # 5.2: the two initialisations' embedding scales, and both start near ln(V).
    summary = r"\s+([\d.]+) \([\d.]+-[\d.]+\)\s+([\d.]+) \([\d.]+-[\d.]+\)"
    assert printed(r"embedding std" + summary, text) == pytest.approx([1.0, 0.02], rel=0.05)
    initial = printed(r"initial val loss" + summary, text)
    assert all(abs(loss - math.log(50257)) < 0.5 for loss in initial)
    # The verdict follows from the per-seed losses: one winner only if every seed agrees.
    per_seed = [(float(p), float(g)) for p, g in
                re.findall(r"seed \d+: final training loss pytorch ([\d.]+), gpt2 ([\d.]+)", text)]
    assert len(per_seed) == len(SOLUTIONS_SMALL["init_seeds"])
    gpt2_lower = sum(p - g > 0 for p, g in per_seed)
    if gpt2_lower in (0, len(per_seed)):
        winner = "gpt2" if gpt2_lower else "pytorch"
        assert f"init={winner!r} ends with the lower training loss on every one of the" in text
    else:
        assert f"init='gpt2' ends lower on {gpt2_lower} of {len(per_seed)} seeds: the seeds disagree" in text

    # 5.3: GPT-2's validation loss equals Hugging Face's GPT2LMHeadModel on the same weights and
    # windows (non-overlapping windows of context_length tokens, equal-sized batches).
    (val_loss,) = printed(r"(?m)^GPT-2 124M: training loss [\d.]+, validation loss ([\d.]+)", text)
    ctx = SOLUTIONS_SMALL["context_length"]
    ids = torch.tensor(tokenizer.encode(verdict_text[int(0.9 * len(verdict_text)):]))
    windows = (len(ids) - ctx - 1) // ctx + 1
    assert windows % SOLUTIONS_SMALL["batch_size"] == 0  # so the mean of batch means is the mean
    inputs = torch.stack([ids[i * ctx:i * ctx + ctx] for i in range(windows)])
    targets = torch.stack([ids[i * ctx + 1:i * ctx + ctx + 1] for i in range(windows)])
    hf = hf_gpt2_from_tf_variables(tf_vars, TINY_HPARAMS)
    with torch.no_grad():
        reference = hf(inputs, labels=None).logits
    expected = torch.nn.functional.cross_entropy(reference.flatten(0, 1), targets.flatten()).item()
    assert val_loss == pytest.approx(expected, abs=2e-4)
    # Trained weights: the differences to the baselines are computed from the printed losses.
    (unigram_val,) = printed(r"unigram baseline \(validation\): ([\d.]+)", text)
    (scratch_val,) = printed(r"validation: ([\d.]+)\n", text)
    below_unigram, below_scratch = printed(
        r"validation loss ([\d.]+) below the unigram baseline and (-?[\d.]+) below the from-scratch", text)
    assert below_unigram == pytest.approx(unigram_val - val_loss, abs=2e-3)
    assert below_scratch == pytest.approx(scratch_val - val_loss, abs=2e-3)
    assert "the book's numbers are for 124M at context 256, batch 2: not this run's setup" in text
    assert "NOTE: these weights are no better" not in text

    # 5.4: greedy and top-k 1 are deterministic and identical; plain sampling varies with the seed.
    assert re.search(r"greedy \(temperature 0\)\s+same text for seeds 1, 2, 3: True", text)
    assert re.search(r"top_k=1, temperature 1.5\s+same text for seeds 1, 2, 3: True", text)
    assert re.search(r"temperature 1.0, no top-k\s+same text for seeds 1, 2, 3: False", text)
    # 5.4's verdict on repetition follows from the two shares it printed
    share = {name: int(value) for name, value in re.findall(
        r"^(greedy \(temperature 0\)|temperature 1.0, no top-k)\s+same text .*distinct 4-token "
        r"sequences: (\d+)%", text, re.M)}
    greedy, sampled = share["greedy (temperature 0)"], share["temperature 1.0, no top-k"]
    verdict = re.search(r"sampling at temperature 1 repeats (less|no less) than greedy", text).group(1)
    if greedy != sampled:  # equal after rounding: either verdict can be right
        assert verdict == ("less" if sampled > greedy else "no less")
    assert "top_k=1 gives exactly the greedy text: True" in text
