"""Chapters 2-4: each notebook runs top to bottom (small parameters), prints what an
independent reference computes, and draws its figures.

The notebooks assert on their own that what they build equals what `shared` exports (same weights,
equal outputs); a failing assert fails the run here. On top of that, these tests check printed
numbers and verdicts against references that do not go through the notebook's code: tiktoken
called directly, OpenAI's vocab.bpe and encoder.json read as files, numpy, an independent rebuild
of chapter 4's shortcut experiment, and Hugging Face's GPT-2 for the parameter count.
"""
import json
import re

import nbformat
import numpy as np
import pytest

from nbrun import REPO, cell_text, run_notebook

CHAPTERS = ["ch02_working_with_text", "ch03_attention", "ch04_gpt_model"]
PATH = ["ch02_working_with_text", "ch03_attention", "ch04_gpt_model", "ch05_pretraining",
        "ch06_modernizing"]

# Small settings that keep each run well under a minute on two CPU cores.
SMALL = {
    "ch02_working_with_text": {"max_length": 4, "batch_size": 8, "output_dim": 32},
    "ch03_attention": {"batch_size": 2, "num_tokens": 32, "emb_dim": 64, "num_heads": 4,
                       "timing_repeats": 2},
    # vocab_size stays 50257: the prompts are real GPT-2 token ids.
    "ch04_gpt_model": {"context_length": 32, "emb_dim": 64, "num_heads": 4, "num_layers": 2,
                       "qkv_bias": True, "max_new_tokens": 3, "shortcut_seeds": 6},
}


def bytes_to_unicode_inverse():
    """OpenAI's vocab.bpe writes bytes as printable characters (bytes_to_unicode in the gpt-2
    repository's src/encoder.py): printable bytes stand for themselves, the rest are shifted
    to 256 and up in byte order. Returns character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


def read(name):
    return nbformat.read(str(REPO / "chapters" / f"{name}.ipynb"), as_version=4)


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def parameter_names(nb):
    """Names assigned at the top level of the cell tagged `parameters`."""
    source = code_cells(nb)[0].source
    return set(re.findall(r"^([A-Za-z_]\w*)\s*=", source, flags=re.M))


def run(name, tmp_path, monkeypatch, **extra):
    """Run a chapter with the inline backend (as scripts/commit_outputs.sh does): figures become
    image/png outputs. Returns (printed text, number of figures)."""
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = run_notebook(f"chapters/{name}.ipynb", {**SMALL[name], **extra}, tmp_path)
    return cell_text(nb), count_figures(nb)


def as_number(text):
    return int(text.replace(",", ""))


def count_figures(nb):
    """Figures an executed notebook drew: its image/png outputs."""
    return sum("image/png" in output.get("data", {})
               for cell in code_cells(nb) for output in cell.get("outputs", []))


def check_committed_outputs(nb):
    """A committed notebook is either output-free or the record of one run top to bottom
    (scripts/commit_outputs.sh): execution counts 1..n in order, no error output."""
    cells = code_cells(nb)
    if all(cell.outputs == [] and cell.execution_count is None for cell in cells):
        return
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), \
        "outputs must come from one run top to bottom (scripts/commit_outputs.sh)"
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors[0].get("ename")


# --- committed form ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_form_with_parameters_cell(name):
    nb = read(name)
    cells = code_cells(nb)
    check_committed_outputs(nb)
    assert "parameters" in cells[0].metadata.get("tags", []), "first code cell must be tagged"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1] is cells[0], \
        "the parameters cell must come right after the title"
    # every knob the tests turn must exist, or papermill would silently ignore it
    assert set(SMALL[name]) <= parameter_names(nb)


@pytest.mark.parametrize("name", CHAPTERS)
def test_links_the_whole_path_in_reading_order(name):
    """The opening cell links every chapter, in reading order, and each link opens a file."""
    intro = read(name).cells[0].source
    positions = [intro.find(f"{chapter}.ipynb") for chapter in PATH]
    assert -1 not in positions and positions == sorted(positions), intro[:400]
    for target in re.findall(r"\]\(([^)]+\.ipynb)\)", intro):
        assert (REPO / "chapters" / target).resolve().is_file(), target


@pytest.mark.parametrize("name", CHAPTERS)
def test_ends_with_exercises_linking_the_solutions(name):
    nb = read(name)
    last = nb.cells[-1]
    number = int(name[2:4])
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises")
    for k in (1, 2, 3):
        assert f"**Exercise {number}.{k} \u00b7" in last.source
    solutions = f"{name}_solutions.ipynb"
    assert f"]({solutions})" in last.source
    assert (REPO / "chapters" / solutions).is_file()


# --- executed ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_ch02_runs_and_matches_tiktoken(tmp_path, monkeypatch, tokenizer, verdict_text):
    text, figures = run("ch02_working_with_text", tmp_path, monkeypatch, data_dir=str(tmp_path / "data"))
    assert figures >= 4  # token spans, sliding windows, the embedding lookup, positions

    bpe_ids = tokenizer.encode(verdict_text)
    match = re.search(r"The Verdict: ([\d,]+) regex tokens, ([\d,]+) BPE tokens", text)
    assert match and as_number(match.group(2)) == len(bpe_ids)
    assert f"{len(verdict_text):,} characters" in text
    assert f"{len(verdict_text) / len(bpe_ids):.1f} characters per BPE token" in text

    # the vocabulary's make-up: byte tokens, merged tokens, end of text
    single = sum(len(tokenizer.decode_single_token_bytes(i)) == 1 for i in range(tokenizer.n_vocab - 1))
    assert f"{single} single bytes + {tokenizer.n_vocab - 1 - single:,} merged tokens" in text

    # ids 0-255 are the single bytes, and merged token 256 + i is line i of OpenAI's vocab.bpe
    # (read here from the bundled file and encoder.json, not through tiktoken)
    encodings = REPO / "bundled/mirror/openaipublic.blob.core.windows.net/gpt-2/encodings/main"
    merges = [tuple(line.split()) for line in
              (encodings / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line]
    encoder = json.loads((encodings / "encoder.json").read_text(encoding="utf-8"))
    assert len(merges) == 50_000
    assert all(encoder["".join(pair)] == 256 + i for i, pair in enumerate(merges))
    assert "ids 0-255 are single bytes: True" in text
    first = [bytes(bytes_to_unicode_inverse()[ch] for ch in "".join(pair)) for pair in merges[:7]]
    assert f"the first merged tokens, ids 256-262: {first}" in text
    # tiktoken refuses the special token's text unless it is allowed
    with pytest.raises(ValueError) as refusal:
        tokenizer.encode("a document <|endoftext|> another")
    assert f"without allowed_special: {str(refusal.value).splitlines()[0]}" in text

    # how an unknown word splits, straight from tiktoken
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("someunknownPlace")]
    assert f"'someunknownPlace'   -> {pieces}" in text

    # window counts: a window starts every `stride` tokens while its shifted target still fits
    max_length = SMALL["ch02_working_with_text"]["max_length"]
    for stride in (1, 3, max_length):
        expected = len(range(0, len(bpe_ids) - max_length, stride))
        assert f"stride {stride}: {expected:,} windows" in text

    # the first batch the notebook prints is the first tokens of the text, cut every max_length
    batch_size = SMALL["ch02_working_with_text"]["batch_size"]
    assert f"Inputs: ({batch_size}, {max_length})" in text
    first_row = re.search(r"Inputs: .*?\s+tensor\(\[\[([\d,\s]+)\]", text).group(1)
    assert [int(v) for v in first_row.replace(",", " ").split()] == bpe_ids[:max_length]
    assert "shared.model.GPTModel starts from the same token + position embeddings" in text


@pytest.mark.slow
def test_ch03_runs_and_matches_numpy(tmp_path, monkeypatch):
    text, figures = run("ch03_attention", tmp_path, monkeypatch)
    assert figures >= 3  # weights heatmap, largest weight vs d_k, before/after the mask

    # the simplified self-attention of "journey", recomputed with numpy
    inputs = np.array([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                       [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])
    scores = inputs @ inputs[1]
    weights = np.exp(scores) / np.exp(scores).sum()
    expected = weights @ inputs
    printed = re.search(r"context vector of 'journey': ([-\d. ]+)", text).group(1).split()
    np.testing.assert_allclose([float(v) for v in printed], expected, atol=6e-5)

    # dot-product scores: a token does not always score itself highest
    all_scores = inputs @ inputs.T
    beaten = int((all_scores.argmax(axis=1) != np.arange(6)).sum())
    assert beaten > 0
    assert f"{beaten} of 6 tokens score another token higher than themselves" in text

    # The two masks, recomputed with numpy in float32 from the chapter's weights (torch.rand under
    # seed 123, drawn for W_query, W_key, W_value in that order): with one future score of 1000
    # the zero-after-softmax row is 0/0 everywhere, the -inf row is the ordinary causal row.
    import torch
    torch.manual_seed(123)
    w_query, w_key = torch.rand(3, 2).numpy(), torch.rand(3, 2).numpy()
    scores = ((inputs @ w_query) @ (inputs @ w_key).T).astype(np.float32)
    scores[2, 5] = 1000.0
    with np.errstate(invalid="ignore"):
        shifted = np.exp(scores[2] / np.float32(np.sqrt(2)) - (scores[2] / np.float32(np.sqrt(2))).max())
        after = shifted * (np.arange(6) <= 2)
        after = after / after.sum()
    past = np.exp(scores[2, :3] / np.sqrt(2))
    before = np.concatenate([past / past.sum(), np.zeros(3)])
    assert np.isnan(after).all()
    printed = re.search(r"zero after the softmax, row 2:\s+\[([^\]]+)\]", text).group(1)
    assert [v.strip() for v in printed.split(",")] == ["nan"] * 6
    printed = re.search(r"-inf before the softmax, row 2:\s+\[([^\]]+)\]", text).group(1)
    np.testing.assert_allclose([float(v) for v in printed.split(",")], before, atol=6e-5)

    # Causal attention with random projections, in numpy: a shuffle is not a permutation of the
    # outputs, and reordering the tokens before the last one leaves the last output unchanged.
    rng = np.random.default_rng(0)
    wq, wk, wv = (rng.normal(size=(3, 2)) for _ in range(3))

    def causal(x):
        s = (x @ wq) @ (x @ wk).T / np.sqrt(2)
        s = np.where(np.triu(np.ones((6, 6), dtype=bool), k=1), -np.inf, s)
        w = np.exp(s - s.max(axis=1, keepdims=True))
        return (w / w.sum(axis=1, keepdims=True)) @ (x @ wv)
    perm, reordered = [5, 2, 0, 4, 1, 3], [3, 0, 4, 2, 1, 5]
    equivariant = np.allclose(causal(inputs[perm]), causal(inputs)[perm])
    last_same = np.allclose(causal(inputs[reordered])[5], causal(inputs)[5])
    assert f"causal attention: shuffled inputs give the shuffled outputs: {equivariant}" in text
    assert f"reordering tokens 0-4 leaves the output at position 5 unchanged: {last_same}" in text

    # the final comparison and the timing ran at the requested size
    p = SMALL["ch03_attention"]
    shape = f"({p['batch_size']}, {p['num_tokens']}, {p['emb_dim']})"
    assert f"input {shape}: shared.model.MultiHeadAttention == this notebook's" in text
    assert "scaled_dot_product_attention(is_causal=True) ==" in text
    times = re.findall(r"(?:hand-written attention|\(SDPA\)).*?:\s+([\d.]+) ms", text)
    assert len(times) == 2 and all(float(t) > 0 for t in times)
    score_mb = p["batch_size"] * p["num_heads"] * p["num_tokens"] ** 2 * 4 / 2 ** 20
    assert f"materialises a {score_mb:.1f} MiB score matrix" in text


@pytest.mark.slow
def test_ch04_runs_and_counts_like_hugging_face_gpt2(tmp_path, monkeypatch, tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    p = {"vocab_size": 50257, **SMALL["ch04_gpt_model"]}
    text, figures = run("ch04_gpt_model", tmp_path, monkeypatch)
    assert figures >= 4  # GELU/ReLU, LayerNorm, shortcut gradients, parameter shares
    assert "this chapter's GPTModel == shared.model.GPTModel: equal logits" in text

    # Hugging Face's GPT-2 has a bias in its query/key/value projection (qkv_bias=True here)
    # and ties its head to the token embedding. A meta-device model costs no memory.
    hf_config = GPT2Config(vocab_size=p["vocab_size"], n_positions=p["context_length"],
                           n_embd=p["emb_dim"], n_layer=p["num_layers"], n_head=p["num_heads"])
    with torch.device("meta"):
        hf_model = GPT2LMHeadModel(hf_config)
    hf_params = sum(t.numel() for t in hf_model.parameters())
    hf_block = hf_model.transformer.h[0]
    ff_share = sum(t.numel() for t in hf_block.mlp.parameters()) / sum(t.numel() for t in hf_block.parameters())
    assert f"feed-forward share of one transformer block: {ff_share:.1%}" in text
    head = p["vocab_size"] * p["emb_dim"]

    total = as_number(re.search(r"total parameters:\s+([\d,]+)", text).group(1))
    tied = as_number(re.search(r"with the head tied:\s+([\d,]+)", text).group(1))
    assert tied == hf_params
    assert total == hf_params + head
    assert f"weights in float32: {total * 4 / 2**20:,.2f} MiB" in text
    assert f"AdamW's two averages: {4 * total * 4 / 2**20:,.2f} MiB" in text

    # The shortcut experiment, rebuilt here from nn.Linear and PyTorch's tanh GELU (same seeds,
    # same order of parameter creation): the within-network ratios, the count of initialisations
    # where shortcuts keep more of the gradient, and the verdict that count implies.
    import torch.nn.functional as F

    def toy_gradients(init_seed, use_shortcut):
        torch.manual_seed(init_seed)
        linears = [torch.nn.Linear(a, b) for a, b in zip([3, 3, 3, 3, 3], [3, 3, 3, 3, 1])]
        x = torch.tensor([[1.0, 0.0, -1.0]])
        for linear in linears:
            out = F.gelu(linear(x), approximate="tanh")
            x = x + out if use_shortcut and out.shape == x.shape else out
        (x ** 2).mean().backward()
        return [linear.weight.grad.abs().mean().item() for linear in linears]

    plain, residual = toy_gradients(123, False), toy_gradients(123, True)
    assert (f"first layer / last layer, within each network: {plain[0] / plain[-1]:.4f} without "
            f"shortcuts, {residual[0] / residual[-1]:.4f} with them") in text
    seeds = range(123, 123 + p["shortcut_seeds"])
    ratios = {flag: [(lambda g: g[0] / g[-1])(toy_gradients(s, flag)) for s in seeds] for flag in (False, True)}
    for label, flag in (("no shortcut", False), ("shortcut", True)):
        assert f"{label:>12}: first / last layer gradient, median {np.median(ratios[flag]):.4f}" in text
    wins = sum(r > q for q, r in zip(ratios[False], ratios[True]))
    n = len(seeds)
    assert f"with shortcuts in {wins} of {n} initialisations" in text
    verdict = ("in every initialisation tried" if wins == n else "in most initialisations, not all"
               if wins > n / 2 else "in no more than half")
    assert f"shortcuts keep more of the gradient at the first layer {verdict}" in text

    # LayerNorm's biased variance against the unbiased one: a factor sqrt(n / (n - 1))
    for n in (6, 768):
        assert f"{n:>4} features: outputs differ by up to {1 - np.sqrt((n - 1) / n):.2%}" in text

    # greedy generation appended max_new_tokens tokens to the prompt
    # (\s+, not \n: two prints may arrive as two stream outputs, which cell_text joins with a newline)
    ids = re.search(r"tensor\(\[\[([\d,\s]+)\]\]\)\s+generated:", text).group(1)
    ids = [int(v) for v in ids.replace(",", " ").split()]
    prompt = tokenizer.encode("Hello, I am")
    assert ids[:len(prompt)] == prompt and len(ids) == len(prompt) + p["max_new_tokens"]
    assert f"generated: {tokenizer.decode(ids)!r}" in text


# --- a planted library bug fails the notebook's own check -----------------------------------

PLANTED = {
    # the dataset's targets are no longer shifted: the window check against sliding_windows fails
    "ch02_working_with_text": ("data.py", "return chunk[:-1], chunk[1:]", "return chunk[:-1], chunk[:-1]"),
    # the library's attention forgets the causal mask: its output differs from the chapter's
    "ch03_attention": ("model.py", "dropout_p=dropout_p, is_causal=True)", "dropout_p=dropout_p, is_causal=False)"),
    # the exact GELU instead of GPT-2's tanh approximation: the GELU check fails
    "ch04_gpt_model": ("model.py", 'nn.GELU(approximate="tanh")', "nn.GELU()"),
    # OpenAI's configs lose the tied head: the solution's count no longer matches the formula
    "ch04_gpt_model_solutions": ("gpt2.py", '"tie_weights": True}     # the output head reuses',
                                 '"tie_weights": False}     # the output head reuses'),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANTED))
def test_a_planted_library_bug_fails_the_notebook(name, tmp_path, monkeypatch):
    """Run the notebook against a copy of shared/ with one bug planted: it must stop at its check."""
    import shutil

    import papermill as pm

    module, old, new = PLANTED[name]
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "shared", repo / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "chapters", repo / "chapters")
    shutil.copytree(REPO / "bundled", repo / "bundled")  # the tokenizer's files, The Verdict
    source = (repo / "shared" / module).read_text()
    assert source.count(old) == 1, f"the planted line is gone from shared/{module}: update PLANTED"
    (repo / "shared" / module).write_text(source.replace(old, new))
    monkeypatch.setenv("PYTHONPATH", str(repo))  # the notebook's sys.path lines find it too (cwd)
    small = SMALL.get(name, {})
    with pytest.raises(pm.PapermillExecutionError) as failure:
        pm.execute_notebook(str(repo / "chapters" / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters=small, cwd=str(repo / "chapters"), kernel_name="python3",
                            progress_bar=False)
    assert failure.value.ename == "AssertionError", failure.value
