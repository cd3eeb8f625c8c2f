"""shared.trainer: schedule, optimizer groups, accumulation, clipping, early stopping, exact resume.

Tiny models on The Verdict, its GPT-2 ids renumbered 0..n-1 so the vocabulary (and the output
head) is ~1.4K instead of 50K rows: same code paths, a fraction of the CPU time.
"""
import json
import math
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import pytest

import shared.trainer as trainer_module
import torch
import torch.nn.functional as F

from shared.checkpoint import load_checkpoint
from shared.data import get_batch
from shared.token_files import FORMAT_VERSION, load_tokens
from shared.model import GPT_CONFIG_124M, GPTModel
from shared.trainer import (TrainConfig, clip_and_step, configure_optimizer, estimate_loss,
                            forward_backward, get_lr, train)
from tiny import tiny_cfg


@pytest.fixture(scope="module")
def verdict_bins(verdict_text, tokenizer, tmp_path_factory):
    """train.bin (first 90%) and val.bin of The Verdict's dense ids; returns (train, val, vocab)."""
    ids = np.array(tokenizer.encode(verdict_text), dtype=np.int64)
    _, dense = np.unique(ids, return_inverse=True)  # ids -> 0..n-1, order kept
    dense = dense.astype(np.uint16)
    folder = tmp_path_factory.mktemp("verdict_bins")
    split = int(0.9 * len(dense))
    dense[:split].tofile(folder / "train.bin")
    dense[split:].tofile(folder / "val.bin")
    return folder / "train.bin", folder / "val.bin", int(dense.max()) + 1


def tiny_model(vocab_size, drop_rate=0.0, seed=0, tie_weights=False, qkv_bias=False, layers=2):
    torch.manual_seed(seed)
    return GPTModel(tiny_cfg(vocab_size=vocab_size, context_length=32, emb_dim=32, num_layers=layers,
                             drop_rate=drop_rate, qkv_bias=qkv_bias, norm="rmsnorm",
                             pos_encoding="rope", tie_weights=tie_weights))


def tiny_config(**overrides):
    base = dict(max_iters=8, batch_size=4, block_size=32, eval_interval=4, eval_iters=2,
                warmup_iters=2, learning_rate=3e-3, min_lr=3e-4, device="cpu")
    return TrainConfig(**{**base, **overrides})


# --- schedule and optimizer ---------------------------------------------------------------------

def test_get_lr_warmup_cosine_and_floor_hand_computed():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert get_lr(0, cfg) == pytest.approx(1e-3 / 11)           # warmup start: lr / (W + 1)
    assert get_lr(4, cfg) == pytest.approx(1e-3 * 5 / 11)
    assert get_lr(10, cfg) == pytest.approx(1e-3)                # warmup end = cosine start
    assert get_lr(60, cfg) == pytest.approx(5.5e-4)              # halfway: (lr + min_lr) / 2
    quarter = 1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4    # a quarter into the cosine
    assert get_lr(35, cfg) == pytest.approx(quarter)
    assert get_lr(110, cfg) == pytest.approx(1e-4)               # end of the decay
    assert get_lr(500, cfg) == pytest.approx(1e-4)               # after max_iters: the floor
    # lr_decay_iters, not max_iters, fixes the schedule when given
    stretched = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=50,
                            lr_decay_iters=110)
    assert get_lr(60, stretched) == pytest.approx(5.5e-4)
    assert get_lr(0, TrainConfig(warmup_iters=0, learning_rate=2e-3, min_lr=0)) == 2e-3


@pytest.mark.parametrize("bad", [dict(min_lr=1e-2, learning_rate=1e-3), dict(batch_size=0),
                                 dict(warmup_iters=200, max_iters=100), dict(patience=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


@pytest.mark.parametrize("name,value", [("beta1", 1.0), ("beta1", -0.1), ("beta2", 1.5),
                                        ("beta2", math.nan)])
def test_config_rejects_betas_outside_0_1(name, value):
    # at construction, with the field named, not from torch.optim.AdamW inside train()
    with pytest.raises(ValueError, match=rf"TrainConfig\.{name} must be in \[0, 1\)"):
        TrainConfig(**{name: value})
    TrainConfig(beta1=0.0, beta2=0.999)  # the edges of the range that AdamW accepts


@pytest.mark.parametrize("tie_weights", [False, True])
def test_optimizer_decays_matrices_and_embeddings_only(tie_weights):
    model = tiny_model(64, tie_weights=tie_weights, qkv_bias=True)
    opt = configure_optimizer(model, weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert any(p is model.tok_emb.weight for p in decay["params"])  # embeddings are decayed too
    assert any(p is model.final_norm.weight for p in no_decay["params"])
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(grouped) == len(set(grouped))                        # each parameter once
    assert set(grouped) == {id(p) for p in model.parameters()}      # and every one of them
    assert opt.defaults["fused"] and not opt.defaults["foreach"]    # CPU: the fused kernel


# --- one iteration --------------------------------------------------------------------------------

def test_gradient_accumulation_equals_one_big_batch(verdict_bins):
    train_bin, _, vocab = verdict_bins
    data = load_tokens(train_bin)
    x, y = get_batch(data, 8, 32, generator=torch.Generator().manual_seed(0))  # k*b = 4*2

    reference = tiny_model(vocab)  # plain autograd on the whole batch
    ref_loss = F.cross_entropy(reference(x).flatten(0, 1), y.flatten())
    ref_loss.backward()

    big, accumulated = tiny_model(vocab), tiny_model(vocab)
    big_loss = forward_backward(big, [(x, y)])
    entered = []

    def fake_no_sync():  # stands in for DDP's model.no_sync
        entered.append(1)
        return nullcontext()

    micro = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]
    acc_loss = forward_backward(accumulated, micro, no_sync=fake_no_sync)

    assert big_loss == pytest.approx(ref_loss.item(), abs=1e-6)
    assert acc_loss == pytest.approx(ref_loss.item(), abs=1e-5)
    assert len(entered) == 3  # all-reduce skipped on every micro-batch but the last
    for (name, p_ref), p_big, p_acc in zip(reference.named_parameters(), big.parameters(),
                                           accumulated.parameters()):
        torch.testing.assert_close(p_big.grad, p_ref.grad, atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(p_acc.grad, p_ref.grad, atol=1e-5, rtol=0, msg=name)


def test_clipping_caps_the_gradient_norm(verdict_bins):
    train_bin, _, vocab = verdict_bins
    x, y = get_batch(load_tokens(train_bin), 4, 32, generator=torch.Generator().manual_seed(1))
    for factor in (0.1, 10.0):  # a cap below the norm clips, one above leaves it alone
        model = tiny_model(vocab)
        forward_backward(model, [(x, y)])
        grads_before = [p.grad.clone() for p in model.parameters()]
        norm_before = torch.sqrt(sum((g.double() ** 2).sum() for g in grads_before)).item()
        opt = configure_optimizer(model, 0.1, 1e-3, (0.9, 0.95), "cpu")
        seen = {}

        def record(optimizer, args, kwargs):  # the gradients the update actually uses
            grads = [p.grad.double() for p in model.parameters()]
            seen["norm"] = torch.sqrt(sum((g ** 2).sum() for g in grads)).item()
            seen["cos"] = F.cosine_similarity(torch.cat([g.flatten() for g in grads]),
                                              torch.cat([g.double().flatten() for g in grads_before]),
                                              dim=0).item()

        opt.register_step_pre_hook(record)
        cap = factor * norm_before
        returned = clip_and_step(model, opt, grad_clip=cap)
        assert returned == pytest.approx(norm_before, rel=1e-5)  # the norm before clipping
        assert seen["norm"] == pytest.approx(min(cap, norm_before), rel=1e-5)
        assert seen["cos"] == pytest.approx(1.0, abs=1e-6)        # same direction, shorter
        assert all(p.grad is None for p in model.parameters())   # cleared for the next step


def test_estimate_loss_is_repeatable_and_leaves_the_model_training(verdict_bins):
    train_bin, val_bin, vocab = verdict_bins
    model = tiny_model(vocab, drop_rate=0.1)
    splits = {"train": load_tokens(train_bin), "val": load_tokens(val_bin)}
    torch.manual_seed(5)
    rng_before = torch.get_rng_state()
    first = estimate_loss(model, splits, 4, 32, eval_iters=3)
    second = estimate_loss(model, splits, 4, 32, eval_iters=3)
    assert first == second                                    # same batches, no dropout
    assert torch.equal(torch.get_rng_state(), rng_before)     # global random state untouched
    assert model.training
    # an independent recomputation of the val estimate
    gen = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in (get_batch(splits["val"], 4, 32, generator=gen) for _ in range(3))]
    assert first["val"] == pytest.approx(sum(losses) / 3, abs=1e-6)
    assert abs(first["val"] - math.log(vocab)) < 0.5          # untrained: close to ln(V)


def test_the_evaluation_does_not_score_the_first_training_batches(verdict_bins, tmp_path):
    """Evaluation windows come from their own seed: with the training seed, the "train" estimate
    would score exactly the batches the model trained on first, and look better than it is."""
    train_bin, val_bin, vocab = verdict_bins
    cfg = tiny_config(max_iters=2, eval_interval=2)
    seen = []
    real_get_batch = trainer_module.get_batch

    def recording(data, batch_size, block_size, device="cpu", generator=None):
        x, y = real_get_batch(data, batch_size, block_size, device, generator)
        seen.append(x)
        return x, y

    trainer_module.get_batch = recording
    try:
        train(tiny_model(vocab), train_bin, val_bin, cfg, tmp_path, progress=False, log=lambda _: None)
    finally:
        trainer_module.get_batch = real_get_batch
    # the first evaluation (step 0) scores eval_iters "train" windows before any training step
    eval_train_batches = seen[:cfg.eval_iters]
    first_training = torch.Generator().manual_seed(cfg.seed)
    x_train, _ = real_get_batch(load_tokens(train_bin), cfg.batch_size, cfg.block_size,
                                generator=first_training)
    assert x_train.shape == eval_train_batches[0].shape
    assert eval_train_batches and not any(torch.equal(x, x_train) for x in eval_train_batches)


# --- the loop -------------------------------------------------------------------------------------

def test_train_learns_and_writes_checkpoints(verdict_bins, tmp_path):
    train_bin, val_bin, vocab = verdict_bins
    model = tiny_model(vocab)
    lines = []
    cfg = tiny_config(max_iters=30, eval_interval=10, learning_rate=1e-2, min_lr=1e-3)
    history = train(model, train_bin, val_bin, cfg, tmp_path, progress=False, log=lines.append)
    assert history["iters"] == [0, 10, 20, 30]
    assert len(history["step_losses"]) == len(history["lrs"]) == 30
    assert history["lrs"] == [get_lr(i, cfg) for i in range(30)]
    assert history["train_losses"][-1] < history["train_losses"][0] - 0.5
    assert history["val_losses"][-1] < history["val_losses"][0]
    assert lines[0].startswith(f"iter 0: train loss {history['train_losses'][0]:.4f}, val loss ")
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    extra = load_checkpoint(tmp_path / "last.pt", tiny_model(vocab))
    assert extra["iter_num"] == 30 and extra["model_config"]["vocab_size"] == vocab


def test_early_stopping_keeps_the_best_model(verdict_bins, tmp_path):
    train_bin, val_bin, vocab = verdict_bins
    # 1000 training tokens, a one-layer model and a high constant rate: it memorises the
    # training text within a few dozen steps, and the val loss turns up.
    train_tokens = np.asarray(load_tokens(train_bin)[:1000])
    val_tokens = load_tokens(val_bin)
    model = tiny_model(vocab, layers=1)
    patience = 3
    cfg = tiny_config(max_iters=300, batch_size=8, eval_interval=10, warmup_iters=0,
                      learning_rate=5e-3, min_lr=5e-3, weight_decay=0.0, patience=patience)
    history = train(model, train_tokens, val_tokens, cfg, tmp_path, progress=False, log=lambda s: None)

    vals = history["val_losses"]
    best = vals.index(min(vals))
    assert history["stopped_early"]
    assert history["best_val_loss"] == min(vals) and history["best_iter"] == history["iters"][best]
    assert best > 0                                           # training helped before it hurt
    assert len(vals) - 1 - best == patience                   # stopped after `patience` bad evals
    assert all(v >= vals[best] for v in vals[best + 1:])
    assert len(history["step_losses"]) == history["iters"][-1] < cfg.max_iters

    best_model = tiny_model(vocab, layers=1, seed=99)
    extra = load_checkpoint(tmp_path / "best.pt", best_model)
    assert extra["iter_num"] == history["best_iter"]
    recomputed = estimate_loss(best_model, {"val": val_tokens}, cfg.batch_size, cfg.block_size,
                               cfg.eval_iters, seed=cfg.seed + 1)["val"]  # the trainer evaluation seed
    assert recomputed == pytest.approx(history["best_val_loss"], abs=1e-6)
    final = estimate_loss(model, {"val": val_tokens}, cfg.batch_size, cfg.block_size,
                          cfg.eval_iters, seed=cfg.seed + 1)["val"]
    assert final == pytest.approx(vals[-1], abs=1e-6) and final > recomputed


def test_resume_continues_exactly(verdict_bins, tmp_path):
    train_bin, val_bin, vocab = verdict_bins
    cfg_full = tiny_config(max_iters=8, eval_interval=4)                    # dropout is on below
    one_go = tiny_model(vocab, drop_rate=0.2)
    expected = train(one_go, train_bin, val_bin, cfg_full, tmp_path / "a", progress=False,
                     log=lambda s: None)

    # The same run stopped after 4 steps (same schedule: it decays over 8) ...
    first_half = tiny_model(vocab, drop_rate=0.2)
    train(first_half, train_bin, val_bin, tiny_config(max_iters=4, eval_interval=4,
                                                      lr_decay_iters=8),
          tmp_path / "b", progress=False, log=lambda s: None)
    # ... and continued in a "new process": another model, a scrambled global random state.
    torch.manual_seed(12345)
    resumed_model = tiny_model(vocab, drop_rate=0.2, seed=7)
    resumed = train(resumed_model, train_bin, val_bin, cfg_full, tmp_path / "b", resume=True,
                    progress=False, log=lambda s: None)

    for key in ("iters", "step_losses", "lrs", "grad_norms", "train_losses", "val_losses",
                "best_val_loss", "best_iter"):
        assert resumed[key] == expected[key], key
    for (name, p), q in zip(one_go.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name


def test_resume_needs_a_checkpoint_and_block_size_must_fit(verdict_bins, tmp_path):
    train_bin, val_bin, vocab = verdict_bins
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        train(tiny_model(vocab), train_bin, val_bin, tiny_config(), tmp_path, resume=True,
              progress=False)
    with pytest.raises(ValueError, match="context length"):
        train(tiny_model(vocab), train_bin, val_bin, tiny_config(block_size=64), tmp_path,
              progress=False)


# --- the edge: what train() and TrainConfig refuse before any work (review follow-up) --------------

@pytest.mark.parametrize("field, value", [("warmup_iters", math.nan), ("lr_decay_iters", math.nan),
                                          ("eval_iters", 1.5), ("grad_accum_steps", 1.5),
                                          ("batch_size", 1.5), ("max_iters", math.inf),
                                          ("patience", math.nan), ("seed", None), ("seed", 1.5)])
def test_config_refuses_fractional_and_non_finite_counts(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be a whole number"):
        TrainConfig(**{field: value})


def test_train_refuses_2d_data_and_ids_beyond_the_vocabulary(tmp_path):
    model = GPTModel(tiny_cfg())
    cfg = TrainConfig(max_iters=1, warmup_iters=0, batch_size=2, block_size=8, device="cpu")
    flat = np.arange(200) % 20
    with pytest.raises(ValueError, match=r"1-D array of token ids.*\(20, 10\)"):
        train(model, flat.reshape(20, 10), flat, cfg, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match=r"the val split holds ids up to 20.*vocab_size is 20"):
        train(model, flat, flat + 1, cfg, tmp_path / "b", progress=False)


def test_train_leaves_the_models_embedding_as_it_found_it(tmp_path):
    """The sparse tied-gradient speed-up is the run's: afterwards the model trains with any head."""
    model = GPTModel(tiny_cfg(tie_weights=True))
    cfg = TrainConfig(max_iters=2, warmup_iters=0, batch_size=2, block_size=8, device="cpu")
    data = np.arange(200) % 20
    train(model, data, data, cfg, tmp_path / "run", progress=False)
    assert model.tok_emb.sparse is False
    model.out_head = torch.nn.Linear(8, 2)  # a new head, as for classification: untied now
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()  # AdamW would refuse a sparse gradient


# --- one writer per out_dir -----------------------------------------------------------------------

def test_train_into_a_folder_another_process_holds_is_refused(tmp_path):
    """Two notebook runs into one folder would swap each other's best.pt and last.pt."""
    from lock_holder import held_by_another_process
    from shared.files import FolderInUse

    model = GPTModel(tiny_cfg())
    cfg = TrainConfig(max_iters=2, warmup_iters=0, batch_size=2, block_size=8, device="cpu")
    data = np.arange(200) % 20
    out = tmp_path / "run"
    with held_by_another_process(out) as holder:
        with pytest.raises(FolderInUse, match=f"in use by process {holder.pid}"):
            train(model, data, data, cfg, out, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    history = train(model, data, data, cfg, out, progress=False)  # its holder is gone
    assert history["iters"] == [0, 2]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]


# --- resumes that do what they say ----------------------------------------------------------------

def _first_half(verdict_bins, out, **overrides):
    """4 steps of an 8-step schedule into `out`; returns the config of the whole run."""
    train_bin, val_bin, vocab = verdict_bins
    cfg = tiny_config(max_iters=4, eval_interval=4, lr_decay_iters=8, **overrides)
    train(tiny_model(vocab), train_bin, val_bin, cfg, out, progress=False, log=lambda s: None)
    return cfg


def test_resume_applies_a_changed_weight_decay_and_records_only_what_it_applied(verdict_bins, tmp_path):
    """--resume --weight-decay 0 used to train on with last.pt's 0.1 while recording 0.0."""
    import shutil
    train_bin, val_bin, vocab = verdict_bins
    cfg = _first_half(verdict_bins, tmp_path / "a", weight_decay=0.5)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    models, lines = {}, []
    for folder, decay in (("a", 0.5), ("b", 0.0)):
        models[decay] = tiny_model(vocab, seed=3)
        train(models[decay], train_bin, val_bin, TrainConfig(**{**asdict(cfg), "max_iters": 8,
                                                                 "weight_decay": decay}),
              tmp_path / folder, resume=True, progress=False, log=lines.append)
        last = torch.load(tmp_path / folder / "last.pt", weights_only=True)
        assert last["extra"]["train_config"]["weight_decay"] == decay
        assert last["optimizer_state_dict"]["param_groups"][0]["weight_decay"] == decay
    assert any("weight_decay 0.5 -> 0.0" in line for line in lines)
    # The decay really changed the steps: from the same last.pt, other weights.
    difference = max((p - q).abs().max().item() for p, q in
                     zip(models[0.5].parameters(), models[0.0].parameters()))
    assert difference > 1e-6


@pytest.mark.parametrize("field, value", [("batch_size", 8), ("block_size", 16),
                                          ("grad_accum_steps", 2), ("seed", 1), ("eval_iters", 3)])
def test_resume_refuses_a_setting_that_cannot_change_before_anything_is_written(
        verdict_bins, tmp_path, field, value):
    train_bin, val_bin, vocab = verdict_bins
    cfg = _first_half(verdict_bins, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = tiny_model(vocab, seed=3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"cannot resume with {field} = {value}.*has "):
        train(model, train_bin, val_bin, TrainConfig(**{**asdict(cfg), "max_iters": 8, field: value}),
              tmp_path, resume=True, progress=False, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage", ["rng batches", "history best_val_loss",
                                    "train_config weight_decay", "model_config num_heads"])
def test_a_last_pt_missing_a_field_is_refused_before_the_model_is_touched(verdict_bins, tmp_path,
                                                                           damage):
    from shared.checkpoint import CheckpointError
    train_bin, val_bin, vocab = verdict_bins
    cfg = _first_half(verdict_bins, tmp_path)
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    where, key = damage.split()
    holder = payload["extra"][where][0] if where == "rng" else payload["extra"][where]
    del holder[key]
    payload.pop("model_config", None) if where == "model_config" else None  # the copy in extra only
    torch.save(payload, tmp_path / "last.pt")
    model = tiny_model(vocab, seed=3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"last.pt .*{key}"):
        train(model, train_bin, val_bin, TrainConfig(**{**asdict(cfg), "max_iters": 8}), tmp_path,
              resume=True, progress=False, log=lambda s: None)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_a_run_that_stopped_early_continues_with_a_larger_budget(verdict_bins, tmp_path):
    train_bin, val_bin, vocab = verdict_bins
    train_tokens = np.asarray(load_tokens(train_bin)[:1000])  # memorised fast: val turns up
    val_tokens = load_tokens(val_bin)
    cfg = tiny_config(max_iters=300, batch_size=8, eval_interval=10, warmup_iters=0,
                      learning_rate=5e-3, min_lr=5e-3, weight_decay=0.0, patience=1)
    first = train(tiny_model(vocab, layers=1), train_tokens, val_tokens, cfg, tmp_path,
                  progress=False, log=lambda s: None)
    stop = first["iters"][-1]
    assert first["stopped_early"] and stop < 300

    lines = []  # the same budget: nothing to do, and the line says what to pass
    again = train(tiny_model(vocab, layers=1), train_tokens, val_tokens, cfg, tmp_path,
                  resume=True, progress=False, log=lines.append)
    assert again["iters"][-1] == stop and "max_iters" in lines[-1] and "patience" in lines[-1]

    more = TrainConfig(**{**asdict(cfg), "patience": 3})  # a larger budget of patience
    history = train(tiny_model(vocab, layers=1), train_tokens, val_tokens, more, tmp_path,
                    resume=True, progress=False, log=lambda s: None)
    assert history["iters"][-1] > stop and len(history["step_losses"]) == history["iters"][-1]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["extra"]["iter_num"] > stop


def test_a_folder_named_last_pt_is_named_as_a_folder_on_resume(verdict_bins, tmp_path):
    """"No run to resume, start without resume" would send the user into the same folder again."""
    train_bin, val_bin, vocab = verdict_bins
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(IsADirectoryError, match="last.pt is a folder"):
        train(tiny_model(vocab), train_bin, val_bin, tiny_config(), tmp_path, resume=True,
              progress=False)


def test_a_torch_device_is_used_as_given_and_recorded_by_name(verdict_bins, tmp_path, monkeypatch):
    """A torch.device in TrainConfig is the caller's resolved device: the trainer does not pick
    one again, last.pt records its name (a plain value), and a resume with it applies nothing new."""
    def no_second_choice(*args, **kwargs):
        raise AssertionError("the trainer resolved the device again")

    monkeypatch.setattr(trainer_module, "get_device", no_second_choice)
    train_bin, val_bin, vocab = verdict_bins
    cfg = tiny_config(max_iters=2, eval_interval=2, device=torch.device("cpu"))
    train(tiny_model(vocab), train_bin, val_bin, cfg, tmp_path, progress=False)
    extra = load_checkpoint(tmp_path / "last.pt", tiny_model(vocab))
    assert extra["train_config"]["device"] == "cpu"
    lines = []
    train(tiny_model(vocab), train_bin, val_bin, tiny_config(max_iters=4, eval_interval=2,
                                                            device=torch.device("cpu")),
          tmp_path, resume=True, progress=False, log=lines.append)
    applied = [line for line in lines if line.startswith("resume: applying")]
    assert applied == ["resume: applying max_iters 2 -> 4"], lines


def test_a_token_file_whose_meta_json_names_a_larger_vocabulary_is_refused(tmp_path):
    """The vocabulary meta.json records is compared with the model's before any id is read."""
    folder = tmp_path / "data"
    folder.mkdir()
    (np.arange(200, dtype=np.uint16) % 20).tofile(folder / "train.bin")
    (folder / "meta.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "dtype": "uint16", "vocab_size": 50257,
         "splits": {"train": {"file": "train.bin", "tokens": 200}}}))
    model = GPTModel(dict(GPT_CONFIG_124M, vocab_size=20, context_length=16, emb_dim=8,
                          num_heads=2, num_layers=1))
    cfg = TrainConfig(max_iters=1, warmup_iters=0, batch_size=2, block_size=8, device="cpu")
    tokens = load_tokens(folder / "train.bin")  # every id is below 20: only meta.json says 50257
    with pytest.raises(ValueError, match=r"hold ids up to 50256 \(meta.json\), "
                                         r"but the model's vocab_size is 20"):
        train(model, tokens, tokens, cfg, tmp_path / "out", progress=False)


def test_mixed_precision_leaves_the_cpu_in_float32():
    """amp applies on CUDA only: on the CPU no autocast and no change of matmul precision."""
    before = torch.get_float32_matmul_precision()
    with trainer_module.mixed_precision(TrainConfig(amp=True), torch.device("cpu")) as autocast:
        assert autocast is None
        assert torch.get_float32_matmul_precision() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_on_cuda_is_bf16_and_tf32_for_the_run_only():
    before = torch.get_float32_matmul_precision()
    cuda = torch.device("cuda")
    with trainer_module.mixed_precision(TrainConfig(amp=True), cuda) as autocast:
        assert torch.get_float32_matmul_precision() == "high"  # TF32 for what autocast leaves
        with autocast:
            product = torch.ones(8, 8, device=cuda) @ torch.ones(8, 8, device=cuda)
        assert product.dtype == torch.bfloat16
    assert torch.get_float32_matmul_precision() == before
    with trainer_module.mixed_precision(TrainConfig(amp=False), cuda) as autocast:
        assert autocast is None and torch.get_float32_matmul_precision() == before
