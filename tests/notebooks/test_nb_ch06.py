"""Chapter 6: the notebook builds each piece, checks it against the library, and runs top to bottom
on the TinyStories sample; its appendix and its solutions run too.

The notebook asserts on its own that its versions equal the library's (same batches, same RoPE,
same norm, same block, same schedule, same clipped step, same training history, same greedy
tokens with a KV cache). These tests check that those checks exist and pass, that they fail when
the library is broken on purpose (a copy of shared/ with a planted bug), and that printed numbers
agree with references computed here without the notebook's code. The numbers behind the chapter's
claims are read from the committed notebook's outputs, the run a reader sees.
"""
import math
import re
import shutil

import nbformat
import numpy as np
import papermill as pm
import pytest
import torch
import torch.nn.functional as F

from shared.model import GPT_CONFIG_124M, GPTModel

from nbrun import REPO, cell_text, run_notebook

NOTEBOOK = "ch06_modernizing.ipynb"
APPENDIX = "ch06_appendix_engineering.ipynb"
SOLUTIONS = "ch06_modernizing_solutions.ipynb"
TINY = {"emb_dim": 32, "num_layers": 1, "num_heads": 2, "context_length": 32}


def small_params(train_file=None, val_file=None):
    """Every size small: the whole chapter runs in about a minute on two cores. Without files it
    prepares the bundled excerpt, as a reader's "cpu" run does."""
    files = {} if train_file is None else dict(train_file=str(train_file), val_file=str(val_file))
    return dict(
        preset="cpu", num_proc=1, **files,
        verdict_model=TINY, verdict_iters=12, verdict_batch_size=2, verdict_eval_interval=3,
        verdict_patience=2, ablation_model=TINY, ablation_iters=4, ablation_batch_size=2,
        ablation_eval_interval=2, ablation_seeds=[1, 2],
        model_size={**TINY, "num_layers": 2, "context_length": 48}, train_iters=4, batch_size=2,
        eval_interval=2, eval_iters=1, warmup_iters=1, sample_tokens=8, kv_lengths=[4, 8],
        kv_model={"emb_dim": 64, "num_layers": 2, "num_heads": 2})


def read(name):
    return nbformat.read(REPO / name, as_version=4)


def code_source(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


# --- committed form ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [NOTEBOOK, APPENDIX, SOLUTIONS])
def test_committed_with_a_parameters_cell_first(name):
    """(That the committed outputs are those of the committed code: test_committed_outputs.py.)"""
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []) and nb.cells[1] is code[0]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Chapter 6")
    # (that it finds shared/ from its own folder: test_nb_open_anywhere.py)


def parameters(name=NOTEBOOK):
    """The names the committed parameters cell sets, PRESETS included, and its source."""
    source = [c for c in read(name).cells if c.cell_type == "code"][0].source
    knobs = {}
    exec(source, {}, knobs)
    return knobs, source


def test_presets_set_every_knob():
    knobs, _ = parameters()
    presets = knobs.pop("PRESETS")
    assert set(presets) == {"cpu", "gpu"} and knobs["preset"] is None
    unset = {name for name, value in knobs.items() if value is None} - {"preset", "train_file",
                                                                       "val_file", "device"}
    for name, values in presets.items():
        assert set(values) == unset, f"preset {name} misses {unset - set(values)}"
    # the GPU preset keeps the chapter's full sizes on the full data; the CPU one the bundled excerpt
    assert presets["gpu"]["model_size"] == {"emb_dim": 384, "num_layers": 6, "num_heads": 6,
                                            "context_length": 512}
    assert presets["gpu"]["tinystories_source"] == "download" and presets["gpu"]["max_mb"] is None
    assert presets["cpu"]["tinystories_source"] == "sample"
    assert len(presets["cpu"]["ablation_seeds"]) >= 3


def stated_minutes(comment: str) -> list[float]:
    """Every duration a comment states: '25 minutes', '24 min 8 s', '1.5 h'."""
    found = []
    for m in re.finditer(r"(\d+(?:\.\d+)?)\s*(h|hours?|min|minutes?)\b(?:\s*(\d+)\s*s\b)?", comment):
        value = float(m.group(1)) * (60 if m.group(2).startswith("h") else 1)
        found.append(value + int(m.group(3) or 0) / 60)
    return found


def test_the_time_the_parameters_cell_states_is_the_committed_runs():
    """A duration stated for a preset is the one the committed run measured (its last cell prints
    the whole notebook's time), rounded up by at most a minute and a half; a preset the committed run
    did not use has no stated duration, since nothing measured it."""
    _, source = parameters()
    used, printed = re.search(r"whole notebook: ([\d.]+) min on \w+ \(preset '(\w+)'\)",
                              cell_text(read(NOTEBOOK))).group(2, 1)
    comments = "\n".join(line for line in source.splitlines() if line.lstrip().startswith("#"))
    per_preset = dict(re.findall(r'"(\w+)":(.*?)(?=\n#\s+"\w+":|\Z)', comments, re.S))
    assert set(per_preset) == set(parameters()[0]["PRESETS"])
    for preset, comment in per_preset.items():
        if preset == used:
            assert stated_minutes(comment), f"the {preset} preset's time is not stated"
            for minutes in stated_minutes(comment):
                assert float(printed) - 0.5 <= minutes <= float(printed) + 1.5, (minutes, printed)
        else:
            assert stated_minutes(comment) == [], f"a time for {preset}, which nothing measured"
    assert stated_minutes('"cpu": 25 minutes (24 min 8 s)') == [25, 24 + 8 / 60]


def test_builds_each_piece_and_checks_it_against_the_library():
    source = code_source(read(NOTEBOOK))
    built = [r"^def get_batch\(", r"^def lr_at\(", r"^def clip_gradients\(", r"^def evaluate\(",
             r"^def train_by_hand\(", r"^def rope_angles\(", r"^def rotate_half\(",
             r"^def apply_rope\(", r"^def rms_norm\(", r"^class PreNormBlock\b",
             r"^class SeedBlock\b", r"^def forward_with_cache\(", r"^def greedy_with_cache\("]
    for pattern in built:
        assert re.search(pattern, source, re.M), pattern
    compared = ["shared.data.get_batch(", "shared.trainer.get_lr(", "shared.trainer.clip_and_step(",
                "shared.trainer.train(", "shared.model.RotaryEmbedding(", "shared.model.rotate_half(",
                "nn.RMSNorm(", 'shared.model.make_norm("rmsnorm"', "shared.model.TransformerBlock(",
                "use_cache=True"]
    for call in compared:
        assert call in source, call
    # the engineering demos live in the appendix, not in the lesson
    for demo in ("psutil", "build_parser", "use_decoding_layout", "st_mtime", "chunk_ranges",
                 "time_module"):
        assert demo not in source, demo
    appendix = code_source(read(APPENDIX))
    for demo in ("psutil", "build_parser().parse_args", "use_decoding_layout", "st_mtime_ns",
                 "chunk_ranges", "nn.LayerNorm"):
        assert demo in appendix, demo


def test_ends_with_exercises_and_links_solutions_and_appendix():
    nb = read(NOTEBOOK)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    numbers = re.findall(r"\*\*Exercise 6\.(\d)", text)
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)] and len(numbers) >= 3
    assert f"({SOLUTIONS})" in nb.cells[-1].source
    assert f"({APPENDIX})" in nb.cells[0].source
    assert (REPO / SOLUTIONS).is_file() and (REPO / APPENDIX).is_file()


def tiny_batch(tokenizer, verdict_text, length):
    """Eight windows of The Verdict (text the chapter's checks do not use), and their targets."""
    ids = torch.tensor(tokenizer.encode(verdict_text)[:8 * length + 1])
    return ids[:-1].view(8, length), ids[1:].view(8, length)


def test_the_untrained_losses_it_prints_are_a_uniform_guess_and_pytorchs_blow_up(tokenizer,
                                                                                 verdict_text):
    """Section 7 says GPT-2's initialisation starts at a uniform guess, ln(vocab), and PyTorch's
    default (N(0, 1) embeddings, tied head) predicts that each token repeats the one before it.
    The committed run's numbers say so, and a model built here, on other text, does the same."""
    text = cell_text(read(NOTEBOOK))
    start, vocab, uniform, gap = re.search(
        r"loss before training: ([\d.]+); a uniform guess over (\d+) ids costs ln \d+ = ([\d.]+) "
        r"\(([+-][\d.]+)\)", text).groups()
    assert int(vocab) == 64 * math.ceil(50257 / 64) and uniform == f"{math.log(int(vocab)):.2f}"
    assert abs(float(start) - float(uniform) - float(gap)) <= 0.011 and abs(float(gap)) < 0.1
    blown_up, gpt2_start = re.search(r"PyTorch default init: loss ([\d.]+); GPT-2 init: ([\d.]+)",
                                     text).groups()
    assert gpt2_start == start and float(blown_up) > 5 * float(uniform)
    repeats = int(re.search(r"the input token itself at (\d+)% of positions", text).group(1))
    assert repeats >= 90

    size = parameters()[0]["PRESETS"]["cpu"]["model_size"]  # the committed run's model
    cfg = {**GPT_CONFIG_124M, **size, "vocab_size": int(vocab), "drop_rate": 0.0,
           "qkv_bias": False, "norm": "rmsnorm", "pos_encoding": "rope", "tie_weights": True}
    x, y = tiny_batch(tokenizer, verdict_text, size["context_length"])
    for init in ("gpt2", "pytorch"):
        torch.manual_seed(0)
        with torch.no_grad():
            logits = GPTModel({**cfg, "init": init}).eval()(x)           # (8, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
        if init == "gpt2":
            assert abs(loss - math.log(int(vocab))) < 0.1
        else:
            assert loss > 5 * math.log(int(vocab))
            assert (logits.argmax(-1) == x).float().mean() >= 0.9


def test_the_verdict_model_is_as_large_as_it_prints(tokenizer, verdict_text):
    """Section 3's experiment: a model whose embedding alone has many times more parameters than
    The Verdict has training tokens; the counts it printed are those of its configuration and of
    the first 90% of The Verdict's tokens."""
    tokens, params, per_token = re.search(
        r"([\d,]+) training tokens, ([\d,]+) parameters \(([\d,]+) per training token\)",
        cell_text(read(NOTEBOOK))).groups()
    tokens, params, per_token = (int(v.replace(",", "")) for v in (tokens, params, per_token))
    assert tokens == int(0.9 * len(tokenizer.encode_ordinary(verdict_text)))
    size = parameters()[0]["PRESETS"]["cpu"]["verdict_model"]
    model = GPTModel({**GPT_CONFIG_124M, **size, "vocab_size": 64 * math.ceil(50257 / 64),
                      "drop_rate": 0.0, "tie_weights": True})
    assert params == sum(p.numel() for p in model.parameters())
    assert per_token == round(params / tokens)
    assert model.tok_emb.weight.numel() > 10 * tokens


# --- executed ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_runs_on_the_bundled_excerpt_and_every_check_passes(tmp_path, tokenizer, verdict_text):
    text = cell_text(run_notebook(NOTEBOOK, small_params(), tmp_path))

    for confirmation in [
            "get_batch == shared.data.get_batch (same seed, same windows)",
            "lr_at == shared.trainer.get_lr at all",
            "clip_gradients + step == shared.trainer.clip_and_step",
            "train_by_hand == shared.trainer.train: the same",
            "n_bytes and bits_per_byte == shared.metrics'",
            "rotate_half, rope_angles + apply_rope == shared.model.RotaryEmbedding",
            "rms_norm == torch.nn.RMSNorm == shared.model.make_norm('rmsnorm', ...)",
            "PreNormBlock == shared.model.TransformerBlock",
            "6 of the blog's blocks == a 6-layer Post-LN stack",
            "greedy_with_cache == no cache == shared.generate.generate(use_cache=True)",
            "correct block changes x by 0.0e+00"]:
        assert confirmation in text, confirmation

    # section 2: the memmap holds the first 90% of The Verdict's ids, two bytes each
    ids = tokenizer.encode_ordinary(verdict_text)
    train_bin = tmp_path / "runs" / "ch06" / "verdict-data" / "train.bin"
    assert train_bin.stat().st_size == 2 * int(0.9 * len(ids))
    assert np.array_equal(np.fromfile(train_bin, dtype=np.uint16), ids[:int(0.9 * len(ids))])

    # section 4: story and token counts, from a split of the bundled file written here
    raw = (REPO / "bundled" / "tinystories" / "TinyStories-train-excerpt.txt").read_text("utf-8")
    stories = [s.strip() for s in re.split(r"^<\|endoftext\|>$", raw, flags=re.M) if s.strip()]
    n_tokens = sum(len(tokenizer.encode_ordinary(s)) + 1 for s in stories)
    assert f"train: {len(stories):,} stories, {n_tokens:,} tokens" in text
    assert "<|endoftext|> ids (50256) in the blog's tokens: 0" in text

    # 4.3: the baselines and bits per byte, computed again from the prepared files
    data = tmp_path / "data" / "tinystories-sample"
    train, val = (np.fromfile(data / f"{s}.bin", dtype=np.uint16) for s in ("train", "val"))
    val_bytes = len(tokenizer.decode(val.tolist()).encode()) - 12 * int((val == 50256).sum())
    bigram = float(re.search(r"bigram baseline:\s+([\d.]+) nats per token = ([\d.]+)", text).group(1))
    assert math.isclose(bigram, shared_metrics().best_bigram_loss(train, val, 50304)[0], abs_tol=1e-3)
    bpb = float(re.search(r"bigram baseline:.*= ([\d.]+) bits per byte", text).group(1))
    assert math.isclose(bpb, bigram / math.log(2) * len(val) / val_bytes, abs_tol=1e-3)

    # 5.1: the relative-position property, printed score by score
    pairs = re.findall(r"\(offset ([+-]\d+)\): score ([+-][\d.]+)", text)
    scores = dict(pairs)
    assert pairs and len(pairs) > len(scores)  # some offset is printed at more than one place
    for offset, score in pairs:
        assert score == scores[offset]  # the same offset gives the same score anywhere

    # 5.3: the verdict on the blog's block agrees with the per-seed numbers printed above it
    gaps = [float(g) for g in re.findall(r"^seed \d+: correct block [\d.]+, blog's block [\d.]+ "
                                         r"\(blog - correct ([+-][\d.]+)\)", text, re.M)]
    assert len(gaps) == 2
    worse = sum(g > 0 for g in gaps)
    assert f"higher validation loss in {worse} of 2 seeds" in text

    # 6: the ablation's baselines on the renumbered ids, recomputed from the prepared files
    used = np.unique(np.concatenate([train, val]))
    renumber = np.zeros(50304, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    small_vocab = -(-len(used) // 64) * 64
    assert f"the ablation's vocabulary: {small_vocab:,}" in text
    small_bigram = shared_metrics().best_bigram_loss(renumber[train], renumber[val], small_vocab)[0]
    printed = float(re.search(r"baselines on the renumbered ids: .* bigram ([\d.]+)", text).group(1))
    assert math.isclose(printed, small_bigram, abs_tol=1e-3)

    # 6: the ablation table, and each verdict recomputed from it
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(.+?)\s+([\d.]+) \(([\d.]+)-([\d.]+)\)\s+[\d.]+$", text, re.M)}
    assert len(rows) == 6
    gpt2 = "GPT-2 (LayerNorm, learned positions)"
    references = {"RMSNorm": gpt2, "RoPE": gpt2, "RMSNorm + RoPE": gpt2,
                  "RMSNorm + RoPE + SwiGLU": "RMSNorm + RoPE", "RMSNorm + RoPE + QK-norm": "RMSNorm + RoPE"}
    for name, reference in references.items():
        base, (mean, lo, hi) = rows[reference], rows[name]
        apart = hi < base[1] or lo > base[2]
        line = re.search(rf"^{re.escape(name)}\s+[+-][\d.]+ mean validation loss: (.+)$", text, re.M)
        assert line.group(1).startswith("better" if apart and mean < base[0]
                                        else "worse" if apart else "no measurable difference")
        paired = re.search(r"seed by seed (.+) \(lower in (\d+) of (\d+)\)$", line.group(1))
        diffs = [float(d) for d in paired.group(1).split(", ")]
        assert int(paired.group(3)) == len(diffs) == 2
        assert int(paired.group(2)) == sum(d < 0 for d in diffs)
        assert math.isclose(sum(diffs) / len(diffs), mean - base[0], abs_tol=2e-3)  # mean of the pairs
    below = sum(hi < small_bigram for _, _, hi in rows.values())
    assert f"{below} of 6 variants ended below the bigram baseline" in text
    assert re.search(r"(Early stopping (fired|did not fire))", text)
    assert text.count("--- prompt") == 3
    assert (tmp_path / "runs" / "ch06" / "modern" / "best.pt").is_file()
    assert re.search(r"whole notebook: [\d.]+ min on cpu", text)


def shared_metrics():
    import shared.metrics
    return shared.metrics


PLANTED_BUGS = {
    # file, correct line, broken line, the notebook's check that must catch it
    "get_batch": ("data.py", "y = windows[:, 1:].contiguous()", "y = windows[:, :-1].contiguous()",
                  "shared.data.get_batch"),
    "get_lr": ("trainer.py", "return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)",
               "return cfg.learning_rate * it / cfg.warmup_iters", "shared.trainer.get_lr"),
    "rotate_half": ("model.py", "return torch.cat((-x2, x1), dim=-1)",
                    "return torch.cat((x2, -x1), dim=-1)", "shared.model.rotate_half"),
    "block": ("model.py", "x = x + self.drop_shortcut(self.ff(self.norm2(x)))",
              "x = self.norm2(x) + self.drop_shortcut(self.ff(self.norm2(x)))",
              "library_block"),
}


@pytest.mark.slow
@pytest.mark.parametrize("bug", list(PLANTED_BUGS))
def test_a_planted_library_bug_fails_the_notebooks_check(bug, tmp_path, monkeypatch):
    """Run the notebook against a copy of the repository whose shared/ has one bug planted."""
    file, good, bad, check = PLANTED_BUGS[bug]
    repo = tmp_path / "repo"
    for folder in ("shared", "bundled"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / NOTEBOOK, repo / NOTEBOOK)
    source = (repo / "shared" / file).read_text()
    assert source.count(good) == 1
    (repo / "shared" / file).write_text(source.replace(good, bad))
    monkeypatch.setenv("PYTHONPATH", str(repo))  # the kernel imports the broken copy
    with pytest.raises(pm.PapermillExecutionError) as failure:
        pm.execute_notebook(str(repo / NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(repo),
                            parameters=small_params(), kernel_name="python3",
                            progress_bar=False, execution_timeout=600)
    assert failure.value.ename == "AssertionError", failure.value.evalue
    assert check in failure.value.source  # the cell that compares with the library caught it


@pytest.mark.slow
def test_appendix_runs_and_shows_each_engineering_detail(tmp_path, tinystories_sample):
    train_file, val_file = tinystories_sample
    params = dict(train_file=str(train_file), val_file=str(val_file), num_proc=1, rss_demo_mb=32,
                  rss_batches=500, norm_shape=[4, 32, 64], norm_repeats=3,
                  model_size={**TINY, "num_layers": 2, "context_length": 48}, kv_new_tokens=8)
    text = cell_text(run_notebook(APPENDIX, params, tmp_path))
    ranges = [tuple(int(v.replace(",", "")) for v in m) for m in
              re.findall(r"bytes\s+([\d,]+) -\s+([\d,]+) \(", text)]
    assert len(ranges) >= 2 and ranges[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no byte skipped
    raw = train_file.read_bytes()
    # each range but one at the end of the file ends after a blank line: no story is cut
    assert all(raw[end - 2:end] == b"\n\n" for _, end in ranges if end < len(raw))
    assert "up to date; nothing to do" in text and "train.bin untouched" in text
    grew = dict(re.findall(r"(get_batch|long-lived map).*?RSS grew\s+([\d.]+) MB", text))
    assert float(grew["get_batch"]) < 8 < float(grew["long-lived map"])
    assert re.search(r"LayerNorm \d+ us, RMSNorm \d+ us per call", text)
    assert "== the chapter's modern_cfg plus the defaults" in text
    assert f"strides ({TINY['emb_dim']}, 1) -> (1, {4 * TINY['emb_dim']})" in text
    assert re.search(r"s with weights \(in, out\) \([\d.]+x\); same tokens", text)
    assert not (tmp_path / "runs" / "ch06-appendix" / "rss-demo.bin").exists()


@pytest.mark.slow
def test_solutions_compute_the_checkable_answers(tmp_path):
    size = {**TINY}
    params = dict(num_proc=1, model_size=size, iters=25, batch_size=2, eval_interval=5,
                  eval_iters=1, seeds=[1, 2], rope_distances=1500, kv_lengths=[4, 8],
                  timing_repeats=2, learning_rate=1e-3)
    text = cell_text(run_notebook(SOLUTIONS, params, tmp_path))
    # 6.1: the slowest pair's wavelength, 2*pi*theta^((d-2)/d), with the model's own head size
    head_dim = size["emb_dim"] // size["num_heads"]
    assert f"head_dim = {size['emb_dim']} / {size['num_heads']} = {head_dim}" in text
    for theta in (10000, 500):
        expected = 2 * math.pi * theta ** ((head_dim - 2) / head_dim)
        printed = re.search(rf"rope_theta\s+{theta:,}: the slowest pair turns once every ([\d,]+)",
                            text).group(1)
        assert int(printed.replace(",", "")) == round(expected)
    peaks = {int(t.replace(",", "")): float(v) for t, v in re.findall(
        r"rope_theta\s+([\d,]+): the highest score at distances >= 1,000 is ([\d.]+)", text)}
    assert f"With rope_theta {max(peaks, key=peaks.get):,} a far key" in text
    # every comparison of two trainings states a verdict over the seeds that fits its numbers
    for m in re.finditer(r"mean [\d.]+ \(min ([\d.]+), max ([\d.]+)\); .+?: mean [\d.]+ "
                         r"\(min ([\d.]+), max ([\d.]+)\)\n(.+)", text):
        lo_a, hi_a, lo_b, hi_b = map(float, m.groups()[:4])
        overlap = not (hi_a < lo_b or hi_b < lo_a)
        assert m.group(5).startswith("The ranges overlap") == overlap, m.group(0)
    # 6.2: the first step's learning rate with and without warmup
    assert "warmup 0 -> 0.001, warmup 20 -> 4.7619e-05" in text
    # 6.3: 47 spare rows of emb_dim parameters each (tied: counted once)
    assert f"padding adds {47 * size['emb_dim']:,} parameters" in text
    # 6.4: identical greedy tokens with and without the cache at every length
    assert "identical tokens at all 2 lengths" in text
