"""Chapter 5's training loop on The Verdict with a tiny model."""
import math
import re

import pytest
import torch

from shared.data import create_dataloader_v1
from shared.model import GPTModel
from shared.train import calc_loss_batch, calc_loss_loader, evaluate_model, train_model_simple
from tiny import tiny_cfg

TINY = tiny_cfg(vocab_size=50257, context_length=32, emb_dim=32)  # the tokenizer's ids go up to 50256
BATCH, CONTEXT = 2, 32


@pytest.fixture(scope="module")
def loaders(verdict_text, tokenizer):
    """Small slices of the 90/10 split: 9 training windows of 32 (4 batches with drop_last)."""
    split = int(0.9 * len(verdict_text))
    train_text, val_text = verdict_text[:1200], verdict_text[split:split + 600]
    torch.manual_seed(123)
    train_loader = create_dataloader_v1(train_text, batch_size=BATCH, max_length=CONTEXT,
                                        stride=CONTEXT, drop_last=True, shuffle=True,
                                        tokenizer=tokenizer)
    val_loader = create_dataloader_v1(val_text, batch_size=BATCH, max_length=CONTEXT,
                                      stride=CONTEXT, drop_last=False, shuffle=False,
                                      tokenizer=tokenizer)
    return train_loader, val_loader


def test_calc_loss_batch_is_mean_cross_entropy(loaders):
    """Equals -mean(log softmax at the target), computed by hand over every (row, position)."""
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    x, y = next(iter(loaders[1]))
    with torch.no_grad():
        log_probs = torch.log_softmax(model(x), dim=-1)  # (B, T, V)
        expected = -log_probs.gather(-1, y.unsqueeze(-1)).mean()
        loss = calc_loss_batch(x, y, model, "cpu")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_calc_loss_loader_averages_the_first_batches(loaders):
    """num_batches=k averages the first k batch losses; more than the loader has means all."""
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    val_loader = loaders[1]
    with torch.no_grad():
        losses = [calc_loss_batch(x, y, model, "cpu").item() for x, y in val_loader]
        mean = sum(losses) / len(losses)
        assert len(losses) > 1
        assert calc_loss_loader(val_loader, model, "cpu", num_batches=1) == pytest.approx(losses[0])
        assert calc_loss_loader(val_loader, model, "cpu") == pytest.approx(mean)
        assert calc_loss_loader(val_loader, model, "cpu", num_batches=99) == pytest.approx(mean)


def test_calc_loss_loader_on_empty_loader_is_nan_as_in_the_book():
    """The core assumes a loader with batches (create_dataloader_v1 refuses to build an empty
    one, see test_data); given none anyway, it returns nan like the book, not a ZeroDivisionError."""
    empty = torch.utils.data.DataLoader([], batch_size=2)
    assert math.isnan(calc_loss_loader(empty, GPTModel(TINY), "cpu"))


def test_evaluate_model_measures_in_eval_mode_then_trains_again(loaders):
    """With dropout on, the losses equal calc_loss_loader's in eval mode (no dropout noise), and
    the model is back in training mode afterwards."""
    torch.manual_seed(0)
    model = GPTModel(dict(TINY, drop_rate=0.5)).train()
    torch.manual_seed(1)  # the training loader shuffles: the same first batch both times
    train_loss, val_loss = evaluate_model(model, *loaders, "cpu", eval_iter=1)
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        assert train_loss == calc_loss_loader(loaders[0], model, "cpu", num_batches=1)
        assert val_loss == calc_loss_loader(loaders[1], model, "cpu", num_batches=1)
        model.train()
        assert calc_loss_loader(loaders[1], model, "cpu", num_batches=1) != val_loss  # dropout on


def test_training_lowers_the_loss_and_reports_each_evaluation(loaders, tokenizer, capsys):
    """Two epochs of 4 steps, evaluated every 3 steps: loss falls, one entry per evaluation,
    tokens seen = steps * batch * context, and one printed line per evaluation."""
    train_loader, val_loader = loaders
    torch.manual_seed(123)
    model = GPTModel(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    with torch.no_grad():
        loss_before = calc_loss_loader(train_loader, model.eval(), "cpu")

    num_epochs, eval_freq = 2, 3
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=num_epochs,
        eval_freq=eval_freq, eval_iter=2, start_context="I HAD always", tokenizer=tokenizer)

    with torch.no_grad():
        loss_after = calc_loss_loader(train_loader, model.eval(), "cpu")
    assert loss_after < loss_before - 1.0

    total_steps = num_epochs * len(train_loader)  # 8
    evaluated_steps = [s for s in range(total_steps) if s % eval_freq == 0]  # 0, 3, 6
    num_evals = math.ceil(total_steps / eval_freq)
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == num_evals
    assert tokens_seen == [(s + 1) * BATCH * CONTEXT for s in evaluated_steps]  # 64, 256, 448

    out = capsys.readouterr().out
    line = r"^Ep (\d) \(Step (\d{6})\): Train loss (\d+\.\d{3}), Val loss (\d+\.\d{3})$"
    lines = re.findall(line, out, flags=re.MULTILINE)
    assert [(int(ep), int(step)) for ep, step, _, _ in lines] == [(1, 0), (1, 3), (2, 6)]
    assert [float(t) for _, _, t, _ in lines] == [round(x, 3) for x in train_losses]
    assert [float(v) for _, _, _, v in lines] == [round(x, 3) for x in val_losses]
    assert out.count("I HAD always") == num_epochs  # a sample after each epoch
