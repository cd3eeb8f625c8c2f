"""ch06_modernizing.ipynb: committed clean, imports the library, and runs top to bottom on the sample."""
import re

import nbformat
import numpy as np
import pytest
import torch

from nbrun import REPO, cell_text, run_notebook
from shared.train_tinystories import build_parser, model_config

NOTEBOOK = "ch06_modernizing.ipynb"
TINY = {"emb_dim": 32, "num_layers": 1, "num_heads": 2, "context_length": 32}


def notebook():
    return nbformat.read(REPO / NOTEBOOK, as_version=4)


def test_committed_without_outputs_and_with_a_parameters_cell():
    nb = notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Chapter 6")


def test_final_pieces_are_imported_not_pasted():
    source = "\n".join(c.source for c in notebook().cells if c.cell_type == "code")
    for name in ("get_batch", "load_tokens", "prepare", "iter_stories", "train", "generate"):
        assert not re.search(rf"^def {name}\(", source, re.M), f"{name} is redefined in the notebook"
    for name in ("RotaryEmbedding", "GPTModel", "KVCache", "TransformerBlock"):
        assert not re.search(rf"^class {name}\b", source, re.M)
    assert "from shared.prepare_tinystories import" in source and "from shared.trainer import" in source
    # section 6's model is the command line's, from the function that builds it there
    assert re.search(r"^modern_cfg = model_config\(", source, re.M)


@pytest.mark.slow
def test_runs_on_the_tinystories_sample(tmp_path, tinystories_sample, tokenizer):
    train_file, val_file = tinystories_sample
    params = dict(
        train_file=str(train_file), val_file=str(val_file), num_proc=2, rss_demo_mb=32,
        verdict_model=TINY, verdict_iters=6, verdict_batch_size=2, verdict_eval_interval=3,
        ablation_model=TINY, ablation_iters=2, ablation_batch_size=2, ablation_eval_interval=2,
        model_size={**TINY, "num_layers": 2, "context_length": 48}, train_iters=4, batch_size=2,
        eval_interval=2, eval_iters=1, warmup_iters=1, sample_tokens=8, kv_new_tokens=8)
    nb = run_notebook(NOTEBOOK, params, tmp_path)
    text = cell_text(nb)

    # 3.1: the blog's line loader loses every boundary; the story splitter keeps one per story
    assert "<|endoftext|> ids (50256) in the blog's tokens: 0" in text
    assert "<|endoftext|> ids: 2 for 2 stories" in text

    # 3.2: story and token counts, against an independent split and encoding of the sample
    stories = [s.strip() for s in re.split(r"\n\s*\n", train_file.read_text(encoding="utf-8")) if s.strip()]
    n_tokens = sum(len(tokenizer.encode_ordinary(s)) + 1 for s in stories)
    assert f"train: {len(stories):,} stories, {n_tokens:,} tokens" in text
    assert "up to date; nothing to do" in text
    train_bin = np.fromfile(tmp_path / "data" / "tinystories" / "train.bin", dtype=np.uint16)
    assert len(train_bin) == n_tokens and (train_bin == 50256).sum() == len(stories)

    # 3.3: resident memory flat with get_batch, growing with a long-lived map
    grew = dict(re.findall(r"(get_batch|long-lived map).*?RSS grew\s+([\d.]+) MB", text))
    assert float(grew["get_batch"]) < 8 < float(grew["long-lived map"])

    # 4: the checks print what they found (the notebook asserts them too)
    assert re.search(r"RoPE on q, k:\s+output changes by \d\.\de-0[5-9]", text)
    assert "correct block changes x by 0.0e+00" in text

    # 6: GPT-2's init starts near ln(50304); PyTorch's default init with a tied N(0, 1) embedding
    # starts far above it (the blog's 143)
    initial = float(re.search(r"loss before training: ([\d.]+)", text).group(1))
    default = float(re.search(r"PyTorch default init: loss ([\d.]+)", text).group(1))
    assert abs(initial - np.log(50304)) < 0.3 and default > initial + 5
    # (the tied head: the input token gets a logit near emb_dim, the others ~±sqrt(emb_dim))
    own, emb_dim, spread = map(int, re.search(
        r"input token itself: (-?\d+) on average \(emb_dim = (\d+)\); spread of all logits: ±(\d+)",
        text).groups())
    assert own > 0.75 * emb_dim and 0.5 < spread / emb_dim ** 0.5 < 2
    best = torch.load(tmp_path / "runs" / "ch06" / "modern" / "best.pt", weights_only=True)
    size = params["model_size"]  # the model trained is the command line's, at this size
    cli = build_parser().parse_args([
        "--data-dir", "d", "--out-dir", "o", "--emb-dim", str(size["emb_dim"]),
        "--num-layers", str(size["num_layers"]), "--num-heads", str(size["num_heads"]),
        "--block-size", str(size["context_length"])])
    assert best["extra"]["model_config"] == model_config(cli)
    assert text.count("--- prompt") == 3

    # 7: the KV cache gives the same tokens, and so does the decoding layout (transposed strides)
    assert re.search(r"without cache [\d.]+ s, with cache [\d.]+ s .*; same tokens", text)
    ff = 4 * params["model_size"]["emb_dim"]
    assert f"strides ({params['model_size']['emb_dim']}, 1) -> (1, {ff})" in text
    assert re.search(r"s with weights \(in, out\) \([\d.]+x\); same tokens", text)
    assert not (tmp_path / "runs" / "ch06" / "rss-demo.bin").exists()  # the demo cleans up
