"""Checkpoints: exact round trips, clear errors, no unpickled code, nothing half-written."""
import collections
import enum

import numpy as np
import pytest
import torch
import torch.nn as nn

from shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.model import GPTModel
from tiny import tiny_cfg

Point = collections.namedtuple("Point", "x y")


class Mode(enum.IntEnum):
    TRAIN = 1


TINY = tiny_cfg(vocab_size=50, context_length=8, emb_dim=16)


def make(seed):
    torch.manual_seed(seed)
    model = GPTModel(TINY)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def train_step(model, optimizer, batch):
    optimizer.zero_grad()
    logits = model(batch[:, :-1])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    optimizer.step()


@pytest.fixture
def batch():
    return torch.randint(0, TINY["vocab_size"], (2, TINY["context_length"] + 1),
                         generator=torch.Generator().manual_seed(0))


def test_round_trip_restores_model_optimizer_and_extras(tmp_path, batch):
    """Same logits and AdamW state after loading; one more step from each gives the same weights."""
    model, optimizer = make(seed=0)
    for _ in range(3):
        train_step(model, optimizer, batch)
    extra = {"epoch": 3, "tokens_seen": [16, 32, 48], "cfg": TINY, "note": "after three steps"}
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, **extra)

    restored, restored_opt = make(seed=1)  # different weights and an empty optimizer
    assert load_checkpoint(path, restored, restored_opt) == extra

    with torch.no_grad():
        assert torch.equal(restored(batch[:, :-1]), model(batch[:, :-1]))
    for p, q in zip(model.parameters(), restored.parameters()):
        state, restored_state = optimizer.state[p], restored_opt.state[q]
        assert set(state) == set(restored_state) == {"step", "exp_avg", "exp_avg_sq"}
        for key in state:
            assert torch.equal(state[key], restored_state[key]), key
    assert restored_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]

    train_step(model, optimizer, batch)
    train_step(restored, restored_opt, batch)
    for (name, p), q in zip(model.named_parameters(), restored.parameters()):
        assert torch.equal(p, q), name


def test_model_only_round_trip_and_missing_optimizer_state(tmp_path):
    """Saved without an optimizer: the model loads; asking for optimizer state says it is absent."""
    model, _ = make(seed=0)
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model)  # creates the folder
    restored, restored_opt = make(seed=1)
    assert load_checkpoint(path, restored) == {}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  restored.state_dict().values()))
    with pytest.raises(RuntimeError, match="no optimizer state"):
        load_checkpoint(path, restored, restored_opt)


def test_wrapped_model_saves_plain_keys(tmp_path):
    """A DDP-style wrapper (.module) is unwrapped, so the file loads into a plain model."""
    model, _ = make(seed=0)
    wrapper = nn.Module()
    wrapper.module = model
    path = save_checkpoint(tmp_path / "ckpt.pt", wrapper)
    restored, _ = make(seed=1)
    load_checkpoint(path, restored)
    assert torch.equal(restored.tok_emb.weight, model.tok_emb.weight)


def test_truncated_file_names_the_file(tmp_path):
    model, _ = make(seed=0)
    path = save_checkpoint(tmp_path / "ckpt.pt", model)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(RuntimeError, match="ckpt.pt.*truncated"):
        load_checkpoint(path, make(seed=1)[0])


RAN = []


def _side_effect(message):
    """What a malicious pickle would call while loading; here it only leaves a trace."""
    RAN.append(message)
    return message


class Payload:
    def __reduce__(self):
        return _side_effect, ("code ran while loading",)


def test_load_is_weights_only(tmp_path):
    """A file holding an arbitrary Python object is refused, and the object's code never runs."""
    model, _ = make(seed=0)
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": model.state_dict(), "extra": {"x": Payload()}}, path)
    # The file really would run code under a plain unpickler: the test can fail.
    torch.load(path, weights_only=False)
    assert RAN == ["code ran while loading"]
    RAN.clear()

    with pytest.raises(CheckpointError, match="evil.pt") as info:
        load_checkpoint(path, make(seed=1)[0])
    assert RAN == []
    message = str(info.value)  # torch's "can still be loaded" advice, coloured, is not passed on
    assert "other than tensors" in message and "can still be loaded" not in message and "\x1b" not in message


def test_failed_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    """torch.save dying mid-write leaves the previous checkpoint intact and no temporary files."""
    model, _ = make(seed=0)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, step=1)
    good_bytes = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    other, _ = make(seed=1)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt.pt", other, step=2)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new.pt", other)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert path.read_bytes() == good_bytes
    assert load_checkpoint(path, other) == {"step": 1}


def test_save_refuses_what_the_loader_would_refuse(tmp_path):
    """An object in `extra` is caught when saving, not reported as a corrupt file when loading."""
    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"extra_info\['when'\] is a object"):
        save_checkpoint(tmp_path / "c.pt", model, extra_info={"when": object()})
    assert not (tmp_path / "c.pt").exists()
    save_checkpoint(tmp_path / "ok.pt", model, step=3, history={"loss": [1.0, 0.5]}, note=None)
    assert load_checkpoint(tmp_path / "ok.pt", torch.nn.Linear(2, 2))["history"] == {"loss": [1.0, 0.5]}


@pytest.mark.parametrize("value, kind", [
    (np.float64(0.5), "float64"),            # np.mean() of a list of losses: a float subclass
    (collections.defaultdict(list), "defaultdict"),
    (Mode.TRAIN, "Mode"),                     # an IntEnum is an int subclass
    (Point(1, 2), "Point"),                   # a namedtuple is a tuple subclass
])
def test_save_refuses_subclasses_the_loader_refuses(tmp_path, value, kind):
    """isinstance(np.float64(0.5), float) holds, yet weights_only=True cannot unpickle it: the
    check must refuse it at save time, or load_checkpoint calls a good file corrupt."""
    with pytest.raises(TypeError, match=rf"val_loss is a {kind}; store plain values"):
        save_checkpoint(tmp_path / "c.pt", torch.nn.Linear(2, 2), val_loss=value)
    assert not (tmp_path / "c.pt").exists()
    # What the loader does accept still saves: an OrderedDict, as state dicts are.
    save_checkpoint(tmp_path / "ok.pt", torch.nn.Linear(2, 2), cfg=collections.OrderedDict(a=1))
    assert load_checkpoint(tmp_path / "ok.pt", torch.nn.Linear(2, 2)) == {"cfg": {"a": 1}}


# --- all or nothing, one-line errors --------------------------------------------------------------

def snapshot(model, optimizer=None):
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = None if optimizer is None else repr(optimizer.state_dict())
    return weights, state


def assert_untouched(model, optimizer, before):
    weights, state = before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    if optimizer is not None:
        assert repr(optimizer.state_dict()) == state


def test_checkpoint_of_another_config_leaves_model_and_optimizer_untouched(tmp_path, batch):
    """Only the vocabulary differs: the blocks' tensors would fit, yet none of them may be copied."""
    model, optimizer = make(seed=0)
    train_step(model, optimizer, batch)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer)

    torch.manual_seed(1)
    other = GPTModel(dict(TINY, vocab_size=60))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    before = snapshot(other, other_opt)
    with pytest.raises(RuntimeError, match=r"ckpt.pt.*vocab_size = 50.*60"):  # the key, named
        load_checkpoint(path, other, other_opt)
    assert_untouched(other, other_opt, before)
    del other.cfg  # a model that records no config: its shapes still tell
    with pytest.raises(RuntimeError, match=r"ckpt.pt.*another model configuration.*\(50, 16\)"):
        load_checkpoint(path, other, other_opt)
    assert_untouched(other, other_opt, before)


def test_optimizer_of_another_type_is_refused_before_anything_loads(tmp_path, batch):
    model, optimizer = make(seed=0)
    train_step(model, optimizer, batch)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer)

    restored, _ = make(seed=1)
    sgd = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    before = snapshot(restored, sgd)
    with pytest.raises(RuntimeError, match="AdamW optimizer, not of a SGD"):
        load_checkpoint(path, restored, sgd)
    assert_untouched(restored, sgd, before)


@pytest.mark.parametrize("damage", ["empty", "garbage", "half"])
def test_damaged_file_gives_one_line_without_unsafe_advice(tmp_path, damage):
    model, _ = make(seed=0)
    path = save_checkpoint(tmp_path / "ckpt.pt", model)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"not a checkpoint at all\n" * 10,
                      "half": data[:len(data) // 2]}[damage])
    restored, _ = make(seed=1)
    before = snapshot(restored)
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(path, restored)
    message = str(info.value)
    assert "ckpt.pt" in message and "\n" not in message
    assert "weights_only" not in message and info.value.__cause__ is None
    assert_untouched(restored, None, before)


def test_failed_save_says_why_in_one_line(tmp_path, monkeypatch):
    import errno
    model, _ = make(seed=0)
    save_checkpoint(tmp_path / "ckpt.pt", model)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path / "ckpt.pt", model)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in message
    assert "ckpt.pt" in message and "No space left" in message and "previous file is kept" in message
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.parametrize("state", [[1, 2], {"weight": [0.0, 1.0]}, None])
def test_hand_made_payload_without_a_state_dict_is_refused_clearly(tmp_path, state):
    """torch.save of a dict that is not ours: one clear line, the model untouched."""
    model, _ = make(seed=0)
    path = tmp_path / "hand.pt"
    torch.save({"model_state_dict": state}, path)
    before = snapshot(model, None)
    with pytest.raises(RuntimeError, match="hand.pt does not look like a checkpoint.*maps names to tensors"):
        load_checkpoint(path, model)
    assert_untouched(model, None, before)


def test_a_good_file_is_never_called_corrupt(tmp_path, monkeypatch):
    """A folder or a GPU checkpoint on a CPU-only machine: the error says what to do, not "delete it"."""
    model, _ = make(seed=0)
    with pytest.raises(IsADirectoryError):
        load_checkpoint(tmp_path, model)
    path = save_checkpoint(tmp_path / "gpu.pt", model)
    real_load = torch.load

    def load_without_cuda(*args, **kwargs):  # torch's own words when a CUDA tensor meets no GPU
        real_load(*args, **kwargs)
        raise RuntimeError("Attempting to deserialize object on a CUDA device but "
                           "torch.cuda.is_available() is False. If you are running on a CPU-only "
                           "machine, please use torch.load with map_location=torch.device('cpu').")
    monkeypatch.setattr(torch, "load", load_without_cuda)
    with pytest.raises(CheckpointError, match="saved on a GPU.*map_location='cpu'") as info:
        load_checkpoint(path, model)
    assert "corrupt" not in str(info.value)


def test_required_fields_are_checked_before_anything_loads(tmp_path, batch):
    """A checkpoint without the fields a caller needs (resume) is refused, model and optimizer untouched."""
    model, optimizer = make(seed=0)
    train_step(model, optimizer, batch)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, epochs=1)
    other, other_opt = make(seed=1)
    before = snapshot(other, other_opt)
    with pytest.raises(CheckpointError, match="holds no iter_num, history"):
        load_checkpoint(path, other, other_opt, required=("epochs", "iter_num", "history"))
    assert_untouched(other, other_opt, before)
    assert load_checkpoint(path, other, other_opt, required=("epochs",)) == {"epochs": 1}


@pytest.mark.parametrize("existing", [True, False], ids=["over a checkpoint", "a new file"])
def test_a_real_full_disk_is_one_line_and_keeps_the_previous_checkpoint(existing):
    """torch.save on a real, small tmpfs that fills: torch wraps the OSError in a RuntimeError
    (`enforce fail ... unexpected pos`); save_checkpoint must still give one OSError line, keep the
    previous file and leave no temporary."""
    import errno

    from small_disk import small_disk

    with small_disk(200) as disk:
        path = disk / "ckpt.pt"
        if existing:
            save_checkpoint(path, torch.nn.Linear(4, 4), step=1)
            good_bytes = path.read_bytes()
        too_big = torch.nn.Linear(400, 400)  # 642 KB of weights on a 200 KiB disk
        with pytest.raises(OSError) as info:
            save_checkpoint(path, too_big, step=2)
        message = str(info.value)
        assert info.value.errno == errno.ENOSPC and "\n" not in message
        assert str(path) in message and ("previous file is kept" in message) == existing
        assert [p.name for p in disk.iterdir()] == (["ckpt.pt"] if existing else [])
        if existing:
            assert path.read_bytes() == good_bytes
            assert load_checkpoint(path, torch.nn.Linear(4, 4)) == {"step": 1}


# --- what a checkpoint records is compared before anything loads ----------------------------------

@pytest.mark.parametrize("saved, here, key", [
    ({"num_heads": 4}, {"num_heads": 2}, "num_heads"),         # the same shapes, other logits
    ({"tie_weights": True}, {"tie_weights": False}, "tie_weights"),
    ({"tie_weights": False}, {"tie_weights": True}, "tie_weights"),
    ({"pos_encoding": "rope", "rope_theta": 500000.0}, {"pos_encoding": "rope"}, "rope_theta"),
])
def test_a_model_of_another_configuration_with_the_same_shapes_is_refused(tmp_path, batch, saved,
                                                                          here, key):
    torch.manual_seed(0)
    model = GPTModel(dict(TINY, **saved))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optimizer, batch)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer)

    torch.manual_seed(1)
    other = GPTModel(dict(TINY, **here))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    assert {k: v.shape for k, v in other.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}  # shapes alone cannot tell
    before = snapshot(other, other_opt)
    with pytest.raises(CheckpointError, match=rf"ckpt.pt.*\b{key}\b"):
        load_checkpoint(path, other, other_opt)
    assert_untouched(other, other_opt, before)
    assert load_checkpoint(path, GPTModel(dict(TINY, **saved, drop_rate=0.5))) == {}  # dropout may differ


def _reordered_adamw(model):
    """Two groups of the usual sizes, the first matrix (the token embedding) moved to the end."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": matrices[1:] + matrices[:1]}, {"params": others}], lr=1e-2)


@pytest.mark.parametrize("older_file", [False, True])
def test_optimizer_state_for_parameters_in_another_order_is_refused(tmp_path, batch, older_file):
    """Same group sizes, another order: torch would load it and fail (or drift) at the next step."""
    torch.manual_seed(0)
    model = GPTModel(TINY)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    optimizer = torch.optim.AdamW([{"params": matrices},
                                   {"params": [p for p in model.parameters() if p.dim() < 2]}],
                                  lr=1e-2)
    train_step(model, optimizer, batch)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer)
    if older_file:  # written before the file recorded parameter names: the moments' shapes tell
        payload = torch.load(path, weights_only=True)
        del payload["optimizer_params"]
        torch.save(payload, path)

    restored, _ = make(seed=1)
    reordered = _reordered_adamw(restored)
    before = snapshot(restored, reordered)
    with pytest.raises(CheckpointError, match=r"ckpt.pt.*parameter 0 of group 0"):
        load_checkpoint(path, restored, reordered)
    assert_untouched(restored, reordered, before)
