"""shared.train_tinystories: the default ~30M model, the CLI in-process, and torchrun with 2 CPU ranks.

The data is the TinyStories sample, tokenised with GPT-2's BPE into train.bin / val.bin as
shared.prepare_tinystories lays them out (ids of a story, then <|endoftext|>), with a meta.json.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared import train_tinystories
from shared.config import MODEL_SWITCHES
from shared.data import get_batch
from shared.token_files import FORMAT_VERSION, load_tokens
from shared.files import FolderInUse
from shared.model import GPTModel, count_parameters
from shared.tokenizer import EOT_ID, GPT2_VOCAB_SIZE
from shared.train_tinystories import (DEFAULT_PARAMETERS, PADDED_VOCAB_SIZE, build_parser, main,
                                      model_config, train_config)
from shared.trainer import TrainConfig, clip_and_step, configure_optimizer, get_lr

REPO = Path(__file__).resolve().parents[1]

# A model small enough for a test: the padded 50304-row vocabulary of the real run, width 16.
TINY = ["--emb-dim", "16", "--num-layers", "1", "--num-heads", "2", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "2", "--warmup-iters", "2", "--lr", "1e-2",
        "--device", "cpu", "--no-progress", "--patience", "0"]


@pytest.fixture(scope="module")
def data_dir(tinystories_sample, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinystories_bins")
    splits = {}
    for split, path in zip(("train", "val"), tinystories_sample):
        stories = [s.strip() for s in path.read_text(encoding="utf-8").split("\n\n") if s.strip()]
        ids = [t for story in stories for t in tokenizer.encode_ordinary(story) + [EOT_ID]]
        np.array(ids, dtype=np.uint16).tofile(folder / f"{split}.bin")
        splits[split] = {"file": f"{split}.bin", "tokens": len(ids)}
    meta = {"format": FORMAT_VERSION, "vocab_size": GPT2_VOCAB_SIZE, "eot_id": EOT_ID,
            "dtype": "uint16", "splits": splits}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_default_model_is_the_stated_30m(capsys):
    args = build_parser().parse_args(["--data-dir", "d", "--out-dir", "o"])
    cfg = model_config(args)
    assert (cfg["norm"], cfg["pos_encoding"], cfg["vocab_size"]) == ("rmsnorm", "rope", 50304)
    with torch.device("meta"):  # shapes only: no memory, no init time
        tied = count_parameters(GPTModel(cfg))
        untied = count_parameters(GPTModel({**cfg, "tie_weights": False}))
    assert tied == DEFAULT_PARAMETERS
    # by hand: embedding 50304*384, 6 blocks of 12*384^2 weights + 8*384 biases and gains, final norm
    assert tied == 50304 * 384 + 6 * (12 * 384 ** 2 + 8 * 384) + 384
    assert untied == tied + 50304 * 384
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"{tied:,}" in help_text and f"{untied:,}" in help_text


@pytest.mark.parametrize("key", list(MODEL_SWITCHES))
def test_every_model_switch_is_a_flag_with_the_tables_values(key):
    """--norm, --pos-encoding, ...: one flag per switch of shared/config.py, each allowed value
    reaching the model's config, any other refused with a usage line."""
    switch, flag = MODEL_SWITCHES[key], "--" + key.replace("_", "-")
    if switch.allowed is bool:
        given = {(flag,): True, ("--no-" + flag[2:],): False}
    elif switch.allowed is float:
        given = {(flag, "12345.5"): 12345.5}
    else:
        given = {(flag, value): value for value in switch.allowed}
    for argv, value in given.items():
        args = build_parser().parse_args(["--data-dir", "d", "--out-dir", "o", *argv])
        assert model_config(args)[key] == value
    if isinstance(switch.allowed, tuple):
        with pytest.raises(SystemExit) as usage_error:
            build_parser().parse_args(["--data-dir", "d", "--out-dir", "o", flag, "bogus"])
        assert usage_error.value.code == 2


def test_padded_vocabulary_is_one_named_constant(tmp_path, monkeypatch):
    # GPT-2's ids rounded up to the next multiple of 64
    assert PADDED_VOCAB_SIZE % 64 == 0
    assert PADDED_VOCAB_SIZE - 64 < GPT2_VOCAB_SIZE <= PADDED_VOCAB_SIZE
    # The default, the help text and the error message all follow the constant: change it, and
    # none of them still says 50304.
    monkeypatch.setattr(train_tinystories, "PADDED_VOCAB_SIZE", 51200)
    parser = build_parser()
    assert parser.parse_args(["--data-dir", "d", "--out-dir", "o"]).vocab_size == 51200
    help_text = " ".join(parser.format_help().split())
    assert "vocab 51200" in help_text and "(default: 51200)" in help_text
    assert "50304" not in help_text
    (tmp_path / "meta.json").write_text(json.dumps({"format": FORMAT_VERSION,
                                                    "vocab_size": GPT2_VOCAB_SIZE}))
    with pytest.raises(ValueError, match=r"--vocab-size must be 50257 or more \(51200 for GPT-2\)"):
        train_tinystories._check_vocabulary(tmp_path, 1000)


def test_cli_trains_resumes_and_guards_its_inputs(data_dir, tmp_path):
    out = tmp_path / "run"
    first = main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "20",
                  "--eval-interval", "10", "--lr-decay-iters", "30", *TINY])
    assert first["iters"] == [0, 10, 20]
    assert first["val_losses"][-1] < first["val_losses"][0] - 0.5
    assert abs(first["val_losses"][0] - np.log(50304)) < 0.5  # untrained: about ln(vocab)

    # Resume: the model comes from last.pt; a size flag with another value is refused.
    with pytest.raises(ValueError, match=r"--emb-dim 32 on --resume.*emb_dim 16"):
        main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "30",
              "--resume", *TINY, "--emb-dim", "32"])
    resumed = main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "30",
                    "--eval-interval", "10", "--lr-decay-iters", "30", "--resume", *TINY])
    assert resumed["iters"] == [0, 10, 20, 30]
    assert resumed["val_losses"][:3] == first["val_losses"]
    assert len(resumed["step_losses"]) == 30
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["extra"]["iter_num"] == 30 and saved["extra"]["model_config"]["emb_dim"] == 16

    with pytest.raises(ValueError, match="--resume"):       # never overwrite a run by accident
        main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "2", *TINY])
    with pytest.raises(FileNotFoundError, match="without --resume"):
        main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "empty"), "--resume", *TINY])
    with pytest.raises(ValueError, match="--vocab-size"):   # ids up to 50256 need 50257 rows
        main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "small"), *TINY,
              "--vocab-size", "1000"])


def test_cli_resume_applies_the_flags_given_and_keeps_last_pts_for_the_rest(data_dir, tmp_path):
    """--resume --weight-decay 0 trains with 0.0 and records it; a flag left out (--batch-size 3
    in the first run) keeps last.pt's value instead of the default; one that cannot change is
    refused before anything is written."""
    out = tmp_path / "run"
    tiny = [a for a in TINY]
    tiny[tiny.index("--batch-size") + 1] = "3"
    main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "2",
          "--eval-interval", "2", "--weight-decay", "0.3", *tiny])
    first = (out / "last.pt").read_bytes()
    resume = ["--data-dir", str(data_dir), "--out-dir", str(out), "--resume", "--no-progress",
              "--device", "cpu"]  # everything else left out
    with pytest.raises(ValueError, match=r"cannot resume with batch_size = 5.*has 3"):
        main([*resume, "--max-iters", "4", "--batch-size", "5"])
    assert (out / "last.pt").read_bytes() == first
    history = main([*resume, "--max-iters", "4", "--weight-decay", "0"])
    assert history["iters"] == [0, 2, 4]
    saved = torch.load(out / "last.pt", weights_only=True)
    training = saved["extra"]["train_config"]
    assert (training["batch_size"], training["eval_interval"], training["weight_decay"]) == (3, 2, 0.0)
    assert saved["optimizer_state_dict"]["param_groups"][0]["weight_decay"] == 0.0


def torchrun(args, timeout=120, program=("-m", "shared.train_tinystories")):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *program, *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # torchrun: two ranks train, twice (14 s on two busy cores)
def test_ddp_on_two_cpu_processes_trains_and_resumes(data_dir, tmp_path):
    out = tmp_path / "ddp"
    common = ["--data-dir", str(data_dir), "--out-dir", str(out), "--eval-interval", "4",
              "--lr-decay-iters", "8", *TINY]
    log = torchrun([*common, "--max-iters", "4"])
    assert "on 2 process(es)" in log
    assert log.count("iter 0: train loss") == 1  # rank 0 alone logs
    first = torch.load(out / "last.pt", weights_only=True)["extra"]
    assert first["iter_num"] == 4
    assert first["history"]["val_losses"][-1] < first["history"]["val_losses"][0]
    rng = first["rng"]  # every rank's random state, each rank its own batch stream
    assert len(rng) == 2 and not torch.equal(rng[0]["batches"], rng[1]["batches"])

    log = torchrun([*common, "--max-iters", "8", "--resume"])
    assert "at iter 4" in log
    second = torch.load(out / "last.pt", weights_only=True)["extra"]
    assert second["iter_num"] == 8
    assert second["history"]["iters"] == [0, 4, 8]
    assert second["history"]["val_losses"][:2] == first["history"]["val_losses"]
    assert second["history"]["val_losses"][-1] < first["history"]["val_losses"][-1]


# Run by each rank: main(), then the names of the threads still alive in this process.
THREADS_LEFT = """
import os, sys
from shared.train_tinystories import main
main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(f"threads left: {sorted(names)}", flush=True)  # one string: one write, whole on the pipe
"""


@pytest.mark.slow  # torchrun: two ranks train four steps (7 s)
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names come from Linux's /proc")
def test_ddp_destroys_the_process_group_before_the_ranks_exit(data_dir, tmp_path):
    """When main() returns under torchrun, gloo's worker threads have been joined: a thread still
    running during interpreter shutdown can drop a tensor there and abort the process ("terminate
    called without an active exception"), one torchrun in sixty on two busy cores. They were
    left running when DistributedDataParallel's import of torch.distributed.nn.functional held
    the process group (see shared.distributed)."""
    script = tmp_path / "threads_left.py"
    script.write_text(THREADS_LEFT, encoding="utf-8")
    log = torchrun(["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "ddp"), "--max-iters",
                    "4", "--eval-interval", "4", *TINY], program=(str(script),))
    left = re.findall(r"threads left: (\[[^\]]*\])", log)  # the ranks' lines may share a line
    assert len(left) == 2, log
    assert all("gloo" not in names for names in left), left


# A PyTorch built without torch.distributed (USE_DISTRIBUTED=0): is_available() is False and
# torch.distributed.nn cannot be imported.
WITHOUT_DISTRIBUTED = """
import sys
import torch.distributed as dist
dist.is_available = lambda: False

class NoDistributedNN:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("torch.distributed.nn"):
            raise ImportError(f"no {name} in this build")

sys.meta_path.insert(0, NoDistributedNN())
import shared.trainer
from shared import distributed
print(distributed.processes())
"""


def test_the_trainer_imports_on_a_pytorch_without_torch_distributed():
    """shared.distributed imports torch.distributed.nn only where torch.distributed exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", WITHOUT_DISTRIBUTED], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "Processes(ddp=False, rank=0, world_size=1)"

def replay_steps(args, train_data, ranks):
    """The steps of a `--max-iters` run, by hand in one process, on the batches `ranks` would draw.

    Each micro-batch is the concatenation of those ranks' micro-batches; the gradient is written
    out here rather than taken from forward_backward, the code under test. Returns the weights,
    and for every step the loss of rank 0's own micro-batches and the gradient norm: what rank 0
    logs.
    """
    cfg = train_config(args, torch.device("cpu"))
    torch.manual_seed(args.seed)  # as main(): the same initial weights on every rank
    model = GPTModel(model_config(args))
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.learning_rate,
                                    (cfg.beta1, cfg.beta2), "cpu")
    streams = [torch.Generator().manual_seed(cfg.seed + rank) for rank in ranks]  # as train()
    rank0_losses, grad_norms = [], []
    for it in range(cfg.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, cfg)
        per_rank = [[get_batch(train_data, cfg.batch_size, cfg.block_size, "cpu", g)
                     for _ in range(cfg.grad_accum_steps)] for g in streams]
        k = cfg.grad_accum_steps
        with torch.no_grad():
            rank0_losses.append(sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                                    for x, y in per_rank[0]) / k)
        for micro in zip(*per_rank):  # micro-batch i of every rank, concatenated
            x, y = torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro])
            (F.cross_entropy(model(x).flatten(0, 1), y.flatten()) / k).backward()
        grad_norms.append(clip_and_step(model, optimizer, cfg.grad_clip))
    return model.state_dict(), rank0_losses, grad_norms


@pytest.mark.slow  # torchrun: two ranks train (11 s on two busy cores)
def test_ddp_averages_gradients_across_ranks(data_dir, tmp_path):
    """Two ranks on their own batches take exactly the step of one process on both batches.

    DDP must average the ranks' gradients (all-reduce, then divide by the world size) once per
    optimizer step, after the last micro-batch. Rank 0's weights, and the gradient norm it logs,
    then match a single process whose micro-batches are the two ranks' micro-batches concatenated:
    the gradient of a mean over 2B windows is the mean of the two B-window gradients. A missing
    all-reduce, a sum instead of a mean (Adam's update hardly changes when every gradient doubles;
    the logged gradient norm does) or the same batches on both ranks would each break the match.
    """
    out = tmp_path / "ddp-grads"
    flags = ["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "2",
             "--eval-interval", "2", "--grad-accum", "2", "--dropout", "0", *TINY]
    torchrun(flags)
    saved = torch.load(out / "last.pt", weights_only=True)
    weights, history = saved["model_state_dict"], saved["extra"]["history"]
    assert saved["extra"]["iter_num"] == 2

    args = build_parser().parse_args(flags)
    train_data = load_tokens(data_dir / "train.bin")
    both, rank0_losses, grad_norms = replay_steps(args, train_data, ranks=(0, 1))
    assert weights.keys() == both.keys()
    atol = 2e-6  # float32 sums in another order: measured 3e-7 after two steps of lr 1e-2
    for name in both:
        torch.testing.assert_close(weights[name], both[name], rtol=0, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert history["grad_norms"] == pytest.approx(grad_norms, rel=1e-5)
    assert history["step_losses"] == pytest.approx(rank0_losses, rel=1e-5)  # rank 0's own batches

    # The tolerance tells the two apart: rank 0's batches alone give other weights.
    alone, _, alone_norms = replay_steps(args, train_data, ranks=(0,))
    worst = max((weights[name] - alone[name]).abs().max().item() for name in alone)
    assert worst > 1000 * atol
    assert history["grad_norms"] != pytest.approx(alone_norms, rel=1e-3)


# --- the edge: flags, hyperparameters and the out-dir lock ----------------------------------------

@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "nan"),
                                         ("--grad-clip", "inf"), ("--rope-theta", "0"),
                                         ("--rope-theta", "-1"), ("--dropout", "1.5"),
                                         ("--max-iters", "0"), ("--batch-size", "two")])
def test_meaningless_flags_are_one_usage_line(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--data-dir", "d", "--out-dir", "o", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err and "Traceback" not in err


@pytest.mark.parametrize("field", ["learning_rate", "min_lr", "weight_decay", "grad_clip"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_train_config_refuses_non_finite_values(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be a finite number"):
        TrainConfig(**{field: value})


def test_second_run_in_the_same_out_dir_is_refused_while_the_first_lives(data_dir, tmp_path):
    """A live holder of out-dir/.lock is named; once it is killed its lock file is no obstacle."""
    from lock_holder import held_by_another_process

    out = tmp_path / "run"
    with held_by_another_process(out) as holder:
        with pytest.raises(FolderInUse, match=f"in use by process {holder.pid}"):
            main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "2", *TINY])
        assert not (out / "last.pt").exists()
    assert (out / ".lock").exists()  # left by the killed holder
    history = main(["--data-dir", str(data_dir), "--out-dir", str(out), "--max-iters", "2",
                    "--eval-interval", "2", *TINY])
    assert history["iters"] == [0, 2] and not (out / ".lock").exists()


@pytest.mark.slow  # two commands in fresh processes (4 s on two busy cores)
def test_cli_turns_os_errors_into_one_line(data_dir, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "shared.train_tinystories", "--data-dir",
                             str(data_dir), "--out-dir", str(a_file), *TINY],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "shared.train_tinystories", "--data-dir",
                             str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o"), *TINY],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_damaged_checkpoint_is_one_line_but_a_bug_keeps_its_traceback(data_dir, tmp_path, monkeypatch):
    """The user's mistakes and the machine's state give one line; an unexpected RuntimeError (a bug,
    CUDA out of memory) is not hidden behind one."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "shared.train_tinystories", "--data-dir",
                             str(data_dir), "--out-dir", str(out), "--resume", *TINY],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "last.pt is not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    import runpy
    import shared.trainer

    def broken_train(*args, **kwargs):
        raise RuntimeError("a bug deep inside training")
    monkeypatch.setattr(shared.trainer, "train", broken_train)
    monkeypatch.setattr(sys, "argv", ["train_tinystories", "--data-dir", str(data_dir), "--out-dir",
                                      str(tmp_path / "fresh"), "--max-iters", "2", *TINY])
    with pytest.raises(RuntimeError, match="a bug deep inside training"):  # not SystemExit
        runpy.run_module("shared.train_tinystories", run_name="__main__")


# --- every failure is one line: the command line, in a real process -------------------------------

def run_cli(args, env_changes=None, drop=()):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_changes or {})}
    for name in drop:
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "shared.train_tinystories", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def assert_one_line(result, status, *words):
    assert result.returncode == status, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith(("error:", "usage:")) or \
        "error:" in lines[-1], result.stderr[-2000:]
    assert all(word in lines[-1] for word in words), lines[-1]


def test_rank_and_world_size_without_local_rank_is_one_line(data_dir, tmp_path):
    result = run_cli(["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "o"), *TINY],
                     {"RANK": "0", "WORLD_SIZE": "1"}, drop=("LOCAL_RANK",))
    assert_one_line(result, 1, "LOCAL_RANK", "torchrun")


@pytest.mark.parametrize("seed", [str(2 ** 64), str(2 ** 63), "-1"])
def test_a_seed_beyond_what_torch_takes_is_one_usage_line(data_dir, tmp_path, seed):
    result = run_cli(["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "o"), *TINY,
                      "--seed", seed])
    assert_one_line(result, 2, "--seed", seed)


def test_a_block_size_larger_than_the_data_is_refused_before_the_model_is_built(data_dir, tmp_path):
    """10**15 positions: RoPE's tables alone would be petabytes; the data holds far fewer tokens."""
    result = run_cli(["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "o"), *TINY,
                      "--block-size", str(10 ** 15)])
    assert_one_line(result, 1, "--block-size", "train.bin")


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_folder_named_last_pt_gets_advice_that_does_not_go_in_circles(data_dir, tmp_path, resume):
    """Without --resume the old message said "pass --resume"; with it, "run without --resume"."""
    out = tmp_path / "run"
    (out / "last.pt").mkdir(parents=True)
    result = run_cli(["--data-dir", str(data_dir), "--out-dir", str(out), *TINY, *resume])
    assert_one_line(result, 1, "last.pt", "is a folder")
    assert "-resume" not in result.stderr.strip().splitlines()[-1]
    assert (out / "last.pt").is_dir()


def test_output_piped_into_head_stops_quietly(data_dir, tmp_path):
    cmd = (f"{sys.executable} -m shared.train_tinystories --data-dir {data_dir} --out-dir "
           f"{tmp_path / 'o'} {' '.join(TINY)} --max-iters 4 --eval-interval 2 | head -n 1")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert result.stdout.startswith("model: ") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode in (0, 141)
