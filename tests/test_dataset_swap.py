"""A dataset that cannot change under a run.

Each test causes the real fault: `prepare_tinystories` really rebuilds the data folder while a run
reads it, or is really killed (SIGKILL) between the two renames that swap a rebuild in.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import shared.prepare_tinystories as prep
from shared.data import get_batch
from shared.model import GPTModel
from shared.token_files import load_tokens
from shared.trainer import TrainConfig, train
from tiny import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def other_sample(tinystories_sample, tmp_path):
    """The sample's stories in reverse order: other data (other windows), of the same sizes."""
    files = []
    for path in tinystories_sample:
        stories = path.read_text(encoding="utf-8").split("\n\n")
        files.append(tmp_path / f"reversed-{path.name}")
        files[-1].write_text("\n\n".join(reversed(stories)), encoding="utf-8")
    return files


def tiny_model():
    torch.manual_seed(0)
    return GPTModel(tiny_cfg(vocab_size=50257))  # GPT-2's ids: the data is its tokenizer's


def tiny_config(**overrides):
    return TrainConfig(**{**dict(max_iters=4, eval_interval=2, eval_iters=1, warmup_iters=0,
                                 batch_size=2, block_size=16, device="cpu"), **overrides})


def test_batches_keep_coming_from_the_loaded_files_after_a_rebuild(tinystories_sample,
                                                                   other_sample, tmp_path):
    """A rebuild renames a larger train.bin of other stories over the one a run loaded: the run's
    batches are still the windows of the file it loaded (re-opening by name read the new one)."""
    data = tmp_path / "data"
    prep.prepare(data, *tinystories_sample, max_mb=0.05)
    train_tokens = load_tokens(data / "train.bin")
    loaded = np.array(train_tokens, dtype=np.int64)
    prep.prepare(data, *other_sample)  # the real rebuild, as another process would run it
    assert (data / "train.bin").stat().st_size > 2 * len(loaded)  # really replaced, larger
    B, T = 8, 32
    x, y = get_batch(train_tokens, B, T, generator=torch.Generator().manual_seed(0))
    starts = torch.randint(len(loaded) - T, (B,), generator=torch.Generator().manual_seed(0))
    for b, start in enumerate(starts.tolist()):
        assert x[b].tolist() == loaded[start:start + T].tolist()
        assert y[b].tolist() == loaded[start + 1:start + T + 1].tolist()


def test_a_run_goes_on_with_its_data_when_the_folder_is_rebuilt_between_two_steps(
        tinystories_sample, tmp_path):
    """A smaller rebuild (another --max-mb) right after the run's first evaluation: the run
    finishes on the files it started with (re-opening them by name crashed it)."""
    data = tmp_path / "data"
    prep.prepare(data, *tinystories_sample, max_mb=0.05)
    rebuilt = []

    def rebuild_once(line):  # called with each evaluation's line: between two train steps
        if not rebuilt:
            rebuilt.append(prep.prepare(data, *tinystories_sample, max_mb=0.01))

    history = train(tiny_model(), data / "train.bin", data / "val.bin", tiny_config(),
                    tmp_path / "run", progress=False, log=rebuild_once)
    assert rebuilt and load_tokens(data / "train.bin").size == rebuilt[0]["splits"]["train"]["tokens"]
    assert history["iters"] == [0, 2, 4] and np.isfinite(history["val_losses"]).all()


def test_train_and_val_of_two_builds_are_refused(tinystories_sample, other_sample, tmp_path):
    """train.bin loaded, then a rebuild, then val.bin: each matches the meta.json it was read
    with, but together they are two datasets; training refuses them."""
    data = tmp_path / "data"
    prep.prepare(data, *tinystories_sample)
    train_tokens = load_tokens(data / "train.bin")
    prep.prepare(data, *other_sample)
    val_tokens = load_tokens(data / "val.bin")
    with pytest.raises(ValueError, match="two different builds"):
        train(tiny_model(), train_tokens, val_tokens, tiny_config(max_iters=1), tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


# Run prepare() in a process that SIGKILLs itself right after the rename of train.bin, before the
# rename of val.bin: the state a kill (power cut, OOM killer) at that moment leaves behind.
KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import shared.prepare_tinystories as prep
real_replace, published_train = os.replace, Path(sys.argv[1]) / "train.bin"

def replace_then_die(src, dst):
    real_replace(src, dst)
    if Path(dst) == published_train:  # not the staging folder's train.bin: the one readers see
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
prep.prepare(sys.argv[1], sys.argv[2], sys.argv[3])
"""


@pytest.mark.slow  # prepares and trains in fresh processes (14 s on two busy cores)
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_kill_between_the_two_renames_leaves_a_folder_that_training_refuses(
        tinystories_sample, other_sample, tmp_path):
    data = tmp_path / "data"
    prep.prepare(data, *tinystories_sample, max_mb=0.05)
    old = {name: (data / name).read_bytes() for name in ("train.bin", "val.bin")}
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(data),
                             *map(str, other_sample)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-500:]
    # The fault happened: the new train.bin beside the old val.bin.
    assert (data / "train.bin").read_bytes() != old["train.bin"]
    assert (data / "val.bin").read_bytes() == old["val.bin"]

    for name in ("train.bin", "val.bin"):
        with pytest.raises(ValueError, match="rebuil"):
            load_tokens(data / name)
    with pytest.raises(ValueError, match="rebuil"):
        train(tiny_model(), data / "train.bin", data / "val.bin", tiny_config(max_iters=1),
              tmp_path / "run", progress=False)
    cli = subprocess.run([sys.executable, "-m", "shared.train_tinystories", "--data-dir", str(data),
                          "--out-dir", str(tmp_path / "cli-run"), "--emb-dim", "8", "--num-layers",
                          "1", "--num-heads", "2", "--block-size", "16", "--max-iters", "1",
                          "--device", "cpu", "--no-progress"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and cli.stderr.startswith("error: ")

    meta = prep.prepare(data, *other_sample)  # a re-run completes the rebuild
    for split in ("train", "val"):
        assert load_tokens(data / f"{split}.bin").size == meta["splits"][split]["tokens"]
    assert sorted(p.name for p in data.iterdir()) == ["meta.json", "train.bin", "val.bin"]
