"""benchmarks/: the comparison with Hugging Face is fair (same weights, same outputs), the timing
helper alternates as it says, and `python -m benchmarks --size tiny` prints every table and ratio.

No speed is asserted here: speed goals live in the benchmark's own targets table.
"""
import re
import shutil

import pytest
import torch

from benchmarks import __main__ as runner
from benchmarks.common import Target, markdown_table, time_alternating
from benchmarks.hf import check_gpt2_layout, copy_weights_to_hf, hf_gpt2
from shared.model import GPTModel
from shared.speedups import sparse_tied_embedding_grad
from switches import one_switch_changed
from tiny import tiny_cfg
from weights import randomize_

TINY = tiny_cfg(vocab_size=300, context_length=32, emb_dim=32, num_heads=4, num_layers=2,
                qkv_bias=True, tie_weights=True)


def test_our_weights_in_hf_give_the_same_logits():
    torch.manual_seed(0)
    ours = randomize_(GPTModel(TINY)).eval()  # random biases and norms: a skipped copy shows
    hf = hf_gpt2(TINY).eval()
    copy_weights_to_hf(ours, hf)
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        got = ours(idx)
    assert expected.abs().max() > 0.1  # a real signal, not two zero tensors
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_gradients_equal_hf_with_tied_and_untied_heads(tie_weights):
    """The tied lookup's sparse gradient plus the head's dense one reach .grad as one dense tensor,
    equal to what GPT2LMHeadModel computes for the same matrix."""
    cfg = dict(TINY, tie_weights=tie_weights)
    torch.manual_seed(0)
    ours = sparse_tied_embedding_grad(randomize_(GPTModel(cfg)))
    assert ours.tok_emb.sparse == tie_weights  # AdamW needs an untied embedding's grad dense
    hf = hf_gpt2(cfg, attn_implementation="eager")
    copy_weights_to_hf(ours, hf)
    idx = torch.randint(0, cfg["vocab_size"], (2, 16))
    targets = torch.randint(0, cfg["vocab_size"], (2, 16))
    loss = torch.nn.functional.cross_entropy(ours(idx).flatten(0, 1), targets.flatten())
    hf_loss = torch.nn.functional.cross_entropy(hf(input_ids=idx).logits.flatten(0, 1),
                                                targets.flatten())
    loss.backward()
    hf_loss.backward()
    grad, hf_grad = ours.tok_emb.weight.grad, hf.transformer.wte.weight.grad
    assert grad.layout == torch.strided  # dense, as AdamW and clipping need
    assert hf_grad.abs().max() > 0
    torch.testing.assert_close(grad, hf_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.trf_blocks[0].att.W_query.weight.grad,
                               hf.transformer.h[0].attn.c_attn.weight.grad[:, :cfg["emb_dim"]].T,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("change", [{"qkv_bias": False}, *one_switch_changed(gpt2_only=True)])
def test_only_gpt2_layouts_have_an_hf_twin(change):
    with pytest.raises(ValueError, match="GPT2LMHeadModel has"):
        check_gpt2_layout(dict(TINY, **change))


@pytest.mark.parametrize("module, argv, flag", [
    ("bench_data", ["--prep-mb", "0"], "--prep-mb"),
    ("bench_data", ["--prep-mb", "nan"], "--prep-mb"),
    ("bench_data", ["--memmap-mb", "-1"], "--memmap-mb"),
    ("bench_data", ["--num-proc", "1", "0"], "--num-proc"),
    ("bench_data", ["--batches", "0"], "--batches"),
    ("bench_data", ["--repeats", "0"], "--repeats"),
    ("bench_generate", ["--new-tokens", "0"], "--new-tokens"),
    ("bench_generate", ["--no-cache-repeats", "0"], "--no-cache-repeats"),
    ("bench_generate", ["--num-heads", "5"], "--num-heads"),
    ("bench_train", ["--repeats", "0"], "--repeats"),
    ("bench_train", ["--batch-size", "0"], "--batch-size"),
    ("bench_train", ["--threads", "0"], "--threads"),
    ("bench_train", ["--dropout", "1"], "--dropout"),
    ("__main__", ["--threads", "0"], "--threads"),
    ("__main__", ["--device", "foo"], "--device"),
    ("bench_train", ["--device", "foo"], "--device"),
    ("bench_generate", ["--device", "gpu"], "--device"),
])
def test_bad_flags_are_usage_errors(module, argv, flag, capsys):
    """A count or size that cannot work stops in argparse, naming the flag, before any model or
    file is built (not as a traceback from an empty median or a zero-byte token file)."""
    import importlib
    parse_args = importlib.import_module(f"benchmarks.{module}").parse_args
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("tie_weights", [True, False])
def test_mfu_counts_the_output_head_once(tie_weights):
    """N in 6N: every matmul weight once, the head included, the lookups not; tied or untied, the
    same shape does the same matmuls."""
    from benchmarks.bench_train import matmul_params
    model = GPTModel(dict(TINY, tie_weights=tie_weights))
    head = TINY["vocab_size"] * TINY["emb_dim"]
    lookups = head + TINY["context_length"] * TINY["emb_dim"]
    everything = sum(p.numel() for p in model.parameters())
    assert matmul_params(model) == everything - lookups + (head if tie_weights else 0)


def test_time_alternating_warms_up_then_rotates_and_honours_per_variant_repeats():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_alternating(variants, {"a": 3, "b": 3, "c": 1}, warmup=1,
                             device=torch.device("cpu"))
    assert calls[:3] == ["a", "b", "c"]                     # one warm-up call each
    assert calls[3:] == ["a", "b", "c", "b", "a", "a", "b"]  # rounds rotate; c sits out later ones
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 1}
    assert all(s >= 0 for v in times.values() for s in v)


def test_markdown_table_and_targets():
    table = markdown_table(["x", "ratio"], [["ours", "1.20x"], ["HF", "1.00x"]]).splitlines()
    assert table[0] == "| x    | ratio |"
    assert table[1] == "|------|-------|"
    assert table[2] == "| ours | 1.20x |"
    assert Target("t", 1.2, 1.15).met and not Target("t", 1.1, 1.15).met
    assert Target("rss", 6.0, 100.0, higher_is_better=False).met
    assert not Target("rss", 300.0, 100.0, higher_is_better=False).met


def table(markdown: str, heading: str) -> list:
    """The rows of the first markdown table after `heading`, as {column: cell} dicts."""
    lines = markdown[markdown.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [dict(zip(rows[0], r)) for r in rows[2:]]


def number(cell: str) -> float:
    return float(cell.replace(",", "").lstrip("+"))


def as_ratio(cell: str) -> float:
    return number(cell.removesuffix("x"))


@pytest.mark.slow  # runs every benchmark (9 s on two busy cores)
def test_tiny_run_prints_every_table_and_ratio(tinystories_sample, capsys):
    targets = runner.main(["--size", "tiny", "--threads", "1", "--in-process"])
    out = capsys.readouterr().out

    for header in ["### Training step", "### Greedy generation", "### Data: preparation",
                   "### Targets"]:
        assert header in out
    for column in ["ratio vs HF", "MFU", "ratio vs no cache", "of floor", "ratio vs 1 process",
                   "RSS growth MB"]:
        assert f" {column} " in out
    ratio = r"\d+\.\d\dx"
    for row in ["ours: GPT-2, tied head", "ours: GPT-2, untied head",
                "ours: RoPE \\+ RMSNorm, tied head", "HF GPT2LMHeadModel \\(sdpa\\), tied head"]:
        assert re.search(rf"\| {row} +\| fp32 .*\| {ratio} +\| [\d.]+% +\|", out), row
    for row in ["ours, no cache", "ours, KV cache", "ours, KV cache, weights \\(in, out\\)",
                "HF GPT2LMHeadModel.generate"]:
        assert re.search(rf"\| {row} .*\| {ratio} +\| {ratio} +\| \d+% +\| (all|\(reference\))",
                         out), row
    assert re.search(rf"\| prepare_tinystories, num_proc=2 .*\| {ratio} +\|", out)
    assert re.search(r"\| datasets.map start-up, num_proc=2, no work +\| 16 empty rows +\| [\d.]+ ", out)
    assert re.search(rf"\| bound for num_proc=2: t1 / 2 \+ start-up .*\| {ratio} +\|", out)
    assert re.search(r"\| get_batch from load_tokens \(memmap\).*\| \d+ -> \d+ +\| [+-]\d+ +\|", out)
    # every target has a measured value and a verdict, and the runner returns them all
    assert len(targets) == 5
    assert len(re.findall(r"\| (yes|\*\*no\*\*) +\|", out)) == 5

    # The ratio columns are what the tokens/s columns say, and the targets are the tables' ratios.
    train = table(out, "### Training step")
    hf_row = next(r for r in train if r["model"].startswith("HF") and r["mode"] == "fp32")
    for r in train:
        assert as_ratio(r["ratio vs HF"]) == pytest.approx(
            number(r["tokens/s"]) / number(hf_row["tokens/s"]), rel=0.02), r["model"]
    gen = {r["method"]: r for r in table(out, "### Greedy generation")}
    cache, cache_io = gen["ours, KV cache"], gen["ours, KV cache, weights (in, out)"]
    floor = max(number(gen[name]["tokens/s"]) for name in [
        "floor: every weight matrix read once per token", "floor: the same, weights (in, out)"])
    for row in (cache, cache_io):
        for column, reference in [("ratio vs no cache", "ours, no cache"),
                                  ("ratio vs HF", "HF GPT2LMHeadModel.generate")]:
            assert as_ratio(row[column]) == pytest.approx(
                number(row["tokens/s"]) / number(gen[reference]["tokens/s"]), rel=0.02)
        assert number(row["of floor"].rstrip("%")) == pytest.approx(
            100 * number(row["tokens/s"]) / floor, abs=2)
    data = {r["step"]: r for r in table(out, "### Data")}
    prep2 = next(r for step, r in data.items() if step.startswith("prepare_tinystories, num_proc=2"))
    memmap = next(r for step, r in data.items() if step.startswith("get_batch"))
    assert [f"{t.value:.2f}x" for t in targets[:4]] == [
        train[0]["ratio vs HF"], cache["ratio vs no cache"], cache_io["ratio vs HF"],
        prep2["ratio vs 1 process"]]
    assert targets[4].value == pytest.approx(number(memmap["RSS growth MB"]), abs=0.5)


@pytest.mark.slow  # runs every benchmark, each in a fresh process (15 s on two busy cores)
def test_runner_gives_each_benchmark_a_fresh_process(tinystories_sample, capsys, monkeypatch):
    # The default: bench_data's resident-memory numbers must not include what another
    # benchmark left in this process's heap. A patch made in this process cannot reach a
    # benchmark that runs elsewhere; with --in-process it does.
    import benchmarks.bench_data

    def not_here():
        raise RuntimeError("bench_data ran in the test's own process")
    monkeypatch.setattr(benchmarks.bench_data, "rss_mb", not_here)
    with pytest.raises(RuntimeError, match="own process"):
        runner.main(["--size", "tiny", "--threads", "1", "--only", "data", "--in-process"])
    capsys.readouterr()
    (target_prep, target_rss) = runner.main(["--size", "tiny", "--threads", "1", "--only", "data"])
    out = capsys.readouterr().out
    assert "### Data: preparation" in out and "### Training step" not in out
    assert target_prep.value > 0 and target_rss.value < 100


@pytest.mark.slow  # three modes, one with torch.compile (10 s on two busy cores)
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_gpu_modes_run_on_the_cpu(capsys):
    """The rows a GPU adds (bf16 autocast, torch.compile) have never run on a GPU here; --all-modes
    runs the same code on the CPU at a tiny size, so a reader's first CUDA run does not meet a bug
    in them. Every mode gets a row per compared model, its ratio against HF in the same mode."""
    from benchmarks import bench_train

    bench_train.main(["--all-modes", "--emb-dim", "32", "--num-layers", "2", "--num-heads", "4",
                      "--vocab-size", "256", "--seq-len", "16", "--repeats", "1", "--threads", "1"])
    rows = table(capsys.readouterr().out, "### Training step")
    modes = {}
    for r in rows:
        modes.setdefault(r["mode"], {})[r["model"]] = r
    assert list(modes) == ["fp32", "bf16 autocast", "bf16 autocast + compile"]
    for mode in ["bf16 autocast", "bf16 autocast + compile"]:
        assert sorted(modes[mode]) == sorted(
            [bench_train.OURS, "ours: RoPE + RMSNorm, tied head", bench_train.HF])
        hf_rate = number(modes[mode][bench_train.HF]["tokens/s"])
        for r in modes[mode].values():
            assert as_ratio(r["ratio vs HF"]) == pytest.approx(
                number(r["tokens/s"]) / hf_rate, rel=0.02), (mode, r["model"])


# --- missing sample data is one line before any work ----------------------------------------------

def test_missing_sample_data_stops_the_runner_before_any_benchmark_runs(tmp_path, monkeypatch, capsys):
    """bench_data runs last, so its missing files are checked before the other benchmarks start."""
    import benchmarks.bench_data

    monkeypatch.setattr(benchmarks.bench_data, "SAMPLE_DIR", tmp_path / "no-such-folder")
    monkeypatch.setattr(runner, "run_benchmark", lambda *a: pytest.fail("a benchmark ran"))
    monkeypatch.setattr(runner, "run_in_fresh_process", lambda *a: pytest.fail("a benchmark ran"))
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--size", "tiny", "--only", "train", "generate", "data", "--in-process"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "tinystories-sample-train.txt" in err.strip().splitlines()[-1]
    assert "Traceback" not in err


@pytest.mark.slow  # a fresh process imports torch (5 s on two busy cores)
def test_bench_data_without_its_sample_is_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_data", "--sample-dir",
                             str(tmp_path / "missing"), "--prep-mb", "0.3", "--memmap-mb", "1"],
                            cwd=repo, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "tinystories-sample-train.txt" in result.stderr.strip().splitlines()[-1]
