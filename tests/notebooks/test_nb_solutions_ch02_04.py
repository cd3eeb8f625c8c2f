"""Solutions to the exercises of chapters 2-4: each notebook runs top to bottom with small
parameters, draws its figures, and prints answers that match references computed here without
the notebooks' code: tiktoken called directly, numpy, closed forms, Hugging Face's GPT-2.
"""
import ast
import re
from collections import Counter

import nbformat
import numpy as np
import pytest

from nbrun import REPO, cell_text, run_notebook
from test_nb_chapters import check_committed_outputs, code_cells, count_figures

SOLUTIONS = ["ch02_working_with_text_solutions", "ch03_attention_solutions",
             "ch04_gpt_model_solutions"]
SYS_PATH_LINES = "for folder in (Path.cwd(), *Path.cwd().parents):"

# Texts chosen here, not in the notebook: the token counts must hold for any text.
SAMPLES = {"accents and emoji": "naïve café 🦙 déjà vu", "digits": "2024-11-29 12:34:56",
           "plain": "Every effort moves you forward."}
SMALL = {
    "ch02_working_with_text_solutions": {"samples": SAMPLES, "max_length": 4, "strides": [1, 3, 4, 9],
                                         "num_merges": 300, "merge_step": 100},
    "ch03_attention_solutions": {"emb_dim": 64, "head_counts": [1, 2, 4], "num_tokens": 16},
    "ch04_gpt_model_solutions": {"gpu_memory_gib": 16, "emb_dim": 16, "num_heads": 2,
                                 "num_layers": 1, "context_size": 8, "prompt_tokens": 5,
                                 "new_tokens": 7},
}


def read(name):
    return nbformat.read(str(REPO / "chapters" / f"{name}.ipynb"), as_version=4)


def run(name, tmp_path, monkeypatch, **extra):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = run_notebook(f"chapters/{name}.ipynb", {**SMALL[name], **extra}, tmp_path)
    return cell_text(nb), count_figures(nb)


def number(text):
    return int(text.replace(",", ""))


@pytest.mark.parametrize("name", SOLUTIONS)
def test_committed_form(name):
    nb = read(name)
    cells = code_cells(nb)
    check_committed_outputs(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1] is cells[0]
    assert "parameters" in cells[0].metadata.get("tags", [])
    assert cells[1].source.startswith("import sys\nfrom pathlib import Path\n")
    assert SYS_PATH_LINES in cells[1].source
    knobs = set(re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.M))
    assert set(SMALL[name]) <= knobs
    chapter = name.removesuffix("_solutions") + ".ipynb"
    assert f"]({chapter})" in nb.cells[0].source


@pytest.mark.slow
def test_ch02_solutions(tmp_path, monkeypatch, tokenizer, verdict_text):
    p = SMALL["ch02_working_with_text_solutions"]
    text, figures = run("ch02_working_with_text_solutions", tmp_path, monkeypatch,
                        data_dir=str(tmp_path / "data"))
    assert figures >= 3

    # 2.1: characters, bytes and tokens, straight from tiktoken
    for label, sample in {"The Verdict": verdict_text, **SAMPLES}.items():
        n_tokens = len(tokenizer.encode(sample))
        assert (f"{label:>18}: {len(sample):>6,} characters, {len(sample.encode('utf-8')):>6,} bytes, "
                f"{n_tokens:>5,} tokens") in text

    # 2.2: windows and how often each position is a target, from the definition
    ids = tokenizer.encode(verdict_text)
    L = p["max_length"]
    for stride in p["strides"]:
        starts = range(0, len(ids) - L, stride)
        counts = np.zeros(len(ids), dtype=int)
        for start in starts:
            counts[start + 1:start + L + 1] += 1
        c = counts[1:]
        assert (f"stride {stride}: {len(starts):,} windows; tokens predicted 0 times: {(c == 0).sum():,}, "
                f"once: {(c == 1).sum():,}, more often: {(c > 1).sum():,} (at most {c.max()}x)") in text
        # the verdict follows the counts: repeated targets, a gap inside the covered span, or neither
        covered = c[:np.nonzero(c)[0].max() + 1]
        kind = "repeats" if c.max() > 1 else "skips" if (covered == 0).any() else "tiles the text"
        relation = "<" if stride < L else "=" if stride == L else ">"
        assert f"stride {stride} ({relation} max_length): {kind}:" in text
    assert f"stride {L} (= max_length): tiles the text: every token is a target at most once" in text

    # 2.3: before any merge, one symbol per non-space character; merging never adds symbols
    counts = [number(v) for v in re.findall(r"^\s*\d+ merges:\s+([\d,]+) symbols", text, re.M)]
    assert len(counts) == p["num_merges"] // p["merge_step"] + 1
    assert counts[0] == sum(not ch.isspace() for ch in verdict_text)
    assert all(a > b for a, b in zip(counts, counts[1:]))
    # The exact number of merges that halves the symbols, replayed here from the characters with
    # the chapter's own functions (the solution narrows the table's bracket step by step).
    found = re.search(r"After (\d+) merges they need fewer than half as many symbols \(([\d,]+) < "
                      r"[\d,]+; \d+ merges leave ([\d,]+)\)", text)
    assert found, "300 merges halve The Verdict's symbols; the solution must say after how many"
    k, printed, printed_before = int(found.group(1)), number(found.group(2)), number(found.group(3))
    chapter = {"re": re, "Counter": Counter}
    for cell in code_cells(nbformat.read(REPO / "chapters/ch02_working_with_text.ipynb", as_version=4)):
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef) and node.name in {"split_words", "merge_pair",
                                                                    "learn_bpe_merges"}:
                exec(compile(ast.Module([node], type_ignores=[]), "ch02", "exec"), chapter)
    words = Counter(chapter["split_words"](verdict_text))
    merges = chapter["learn_bpe_merges"](chapter["split_words"](verdict_text), k)

    def symbols_after(n):
        total = 0
        for word, count in words.items():
            symbols = tuple(word)
            for pair in merges[:n]:
                symbols = chapter["merge_pair"](symbols, pair)
            total += len(symbols) * count
        return total
    half = counts[0] / 2
    assert symbols_after(k) == printed < half <= symbols_after(k - 1) == printed_before
    # "the first merges pay the most": the first step of the table removes more symbols than the last
    first_gain, last_gain = counts[0] - counts[1], counts[-2] - counts[-1]
    assert first_gain > last_gain
    assert (f"The first {p['merge_step']} merges remove {first_gain:,} symbols, "
            f"the last {p['merge_step']} remove {last_gain:,}.") in text


@pytest.mark.slow
def test_ch03_solutions(tmp_path, monkeypatch):
    import torch
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    p = SMALL["ch03_attention_solutions"]
    text, figures = run("ch03_attention_solutions", tmp_path, monkeypatch)
    assert figures >= 2

    x = np.array([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                  [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])
    dot = x @ x.T
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    # 3.1: which key wins each row, and the cosine context vector of "journey"
    for label, scores in (("dot product", dot), ("cosine", cos)):
        itself = int((scores.argmax(axis=1) == np.arange(6)).sum())
        assert f"{itself} of 6 tokens score themselves highest" in text.split(f"{label:>11}:")[1]
    assert "cosine: best key per query ['Your', 'journey', 'starts', 'with', 'one', 'step']" in text
    weights = np.exp(cos[1]) / np.exp(cos[1]).sum()
    printed = re.search(r"'journey', cosine scores: ([-\d. ]+)", text).group(1).split()
    np.testing.assert_allclose([float(v) for v in printed], weights @ x, atol=6e-5)
    # ... and, row by row, whether cosine weights pull the context vector towards the mean input
    soft = lambda s: np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    mean = x.mean(axis=0)
    closer = (np.linalg.norm(soft(cos) @ x - mean, axis=1) < np.linalg.norm(soft(dot) @ x - mean, axis=1))
    assert f"closer to the mean input for {closer.sum()} of 6 rows" in text
    # cosines differ by at most 2, so within a row no softmax weight exceeds e^2 times another
    ratio = lambda w: (w.max(axis=1) / w.min(axis=1)).max()
    assert ratio(soft(cos)) <= np.exp(2)
    assert (f"largest weight / smallest weight in any row: cosine {ratio(soft(cos)):.2f} "
            f"(at most e^2 = {np.exp(2):.2f}), dot product {ratio(soft(dot)):.2f}") in text

    # 3.2: a 0 in the future scores still gets e^0 of the weight
    future = np.triu(np.ones((6, 6), dtype=bool), k=1)
    exp = np.exp(np.where(future, 0.0, dot))
    leak = (exp * future).sum(1) / exp.sum(1)
    printed = re.search(r"fill 0.0: weight on the future per row \[([^\]]+)\]", text).group(1)
    np.testing.assert_allclose([float(v) for v in printed.split(",")], leak, atol=1e-4)
    assert "fill -inf: weight on the future per row [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]; " \
           "changing tokens 4-5 moves the outputs at positions [4, 5]" in text
    assert "changing tokens 4-5 moves the outputs at positions [0, 1, 2, 3, 4, 5]" in text

    # 3.3: Hugging Face's GPT-2 attention (query/key/value biases) has the same count, any heads
    C = p["emb_dim"]
    for heads in p["head_counts"]:
        with torch.device("meta"):
            hf = GPT2Attention(GPT2Config(n_embd=C, n_head=heads), layer_idx=0)
        hf_count = sum(t.numel() for t in hf.parameters())
        assert f"qkv_bias=True   {heads:>2} heads: MultiHeadAttention {hf_count:,} " in text
        assert f"qkv_bias=False  {heads:>2} heads: MultiHeadAttention {hf_count - 3 * C:,} " in text
        assert f"wrapper {hf_count - (C * C + C):,} (no out_proj)" in text
        assert f"score tensor for {p['num_tokens']} tokens {heads * p['num_tokens'] ** 2:,} floats" in text


@pytest.mark.slow
def test_ch04_solutions(tmp_path, monkeypatch):
    import torch
    from transformers import GPT2LMHeadModel

    from fake_gpt2 import REAL_HPARAMS, hf_gpt2_config

    p = SMALL["ch04_gpt_model_solutions"]
    text, figures = run("ch04_gpt_model_solutions", tmp_path, monkeypatch)
    assert figures >= 2

    # 4.1: AdamW keeps two numbers per parameter (plus a step count), read off PyTorch's optimizer
    layer = torch.nn.Linear(3, 5)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    state = optimizer.state[layer.weight]
    per_parameter = sum(t.numel() for t in state.values() if t.dim() > 0) / layer.weight.numel()
    assert f"AdamW state: {per_parameter:.0f} numbers per parameter ({sorted(state)})" in text

    # 4.1 and 4.2: counts and shares of Hugging Face's GPT-2 at OpenAI's four sizes
    for size, hparams in REAL_HPARAMS.items():
        with torch.device("meta"):
            hf = GPT2LMHeadModel(hf_gpt2_config(hparams))
        total = sum(t.numel() for t in hf.parameters())
        training_gib = 4 * total * 4 / 2**30
        fits = "fits" if training_gib <= p["gpu_memory_gib"] else "does not fit"
        assert (f"{size:>6}: {total:>13,} parameters; weights {total * 4 / 2**30:5.2f} GiB float32, "
                f"{total * 2 / 2**30:5.2f} GiB bfloat16; AdamW training {training_gib:5.1f} GiB: "
                f"{fits} in {p['gpu_memory_gib']} GiB") in text
        embeddings = sum(t.numel() for t in hf.transformer.wte.parameters()) + \
            sum(t.numel() for t in hf.transformer.wpe.parameters())
        block = hf.transformer.h[0]
        ff = sum(t.numel() for t in block.mlp.parameters()) / sum(t.numel() for t in block.parameters())
        assert (f"{size:>6}: embeddings {embeddings / total:.2%} of the model; "
                f"feed-forward {ff:.2%} of each block") in text
    assert "1558M: 1,557,611,200 parameters" in text and "does not fit in 16 GiB" in text

    # 4.3: positions per forward call, without and with the KV cache
    prompt, new, ctx = p["prompt_tokens"], p["new_tokens"], p["context_size"]
    greedy = [min(prompt + i, ctx) for i in range(new)]
    # the cache runs the prompt once, then one token per step, and is rebuilt from the whole
    # window at every step once the sequence no longer fits
    cached = [min(prompt, ctx)] + [ctx if prompt + i > ctx else 1 for i in range(1, new)]
    assert f"generate_greedy: {new} calls, positions per call {greedy}, {sum(greedy)} in all " \
           f"(formula: {sum(greedy)})" in text
    assert f"generate(use_cache=True): {new} calls, positions per call {cached}, {sum(cached)} in all" in text
    # once the sequence outgrows the context, the cache processes as many positions as no cache
    outgrown = next(i for i in range(new) if prompt + i > ctx)
    assert (f"{sum(cached[outgrown:])} positions there with the cache, {sum(greedy[outgrown:])} without, "
            f"so it saves nothing there.") in text
