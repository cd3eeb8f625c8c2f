"""Pretrain chapter 6's modern GPT on TinyStories from the command line; resumable, multi-GPU.

    python -m shared.prepare_tinystories --out-dir data/tinystories        # once: train.bin, val.bin
    python -m shared.train_tinystories --data-dir data/tinystories --out-dir runs/ts30m
    python -m shared.train_tinystories --data-dir data/tinystories --out-dir runs/ts30m --resume

The default model is the chapter's ~30M one, in its modern form (RoPE, RMSNorm): emb_dim 384,
6 layers of 6 heads, the vocabulary padded to 50304 (PADDED_VOCAB_SIZE, a multiple of 64, for
faster matmuls) and the output head tied to the token embedding, 29,952,384 parameters (the
original run had 29,959,680). Each switch of shared/config.py's MODEL_SWITCHES is a flag
(--norm, --pos-encoding, --rope-theta, --tie-weights, ...; see --help).
With the defaults one step sees 32 x 512 = 16,384 tokens, and 20000 steps ~330M tokens.

Every --eval-interval steps the run writes out_dir/best.pt (lowest val loss) and out_dir/last.pt;
--resume continues from last.pt with the same batches and dropout masks it would have drawn. On
--resume the model comes from last.pt (a size flag with another value is refused), a training flag
left out keeps last.pt's value, and one given applies from the next step and is recorded in
last.pt: --max-iters, the schedule (--lr, --min-lr, --warmup-iters, --lr-decay-iters),
--weight-decay, --grad-clip, --eval-interval, --patience, --dropout. --batch-size, --block-size,
--grad-accum, --seed and --eval-iters cannot change within a run and are refused. Raise
--max-iters to train longer (keep --lr-decay-iters fixed, or the schedule changes under the run);
a run that stopped early continues when --max-iters or --patience is raised.

More GPUs, same script:

    torchrun --standalone --nproc_per_node 4 -m shared.train_tinystories --data-dir ... --out-dir ...

Each process trains on its own random batches (its generator is seeded with seed + rank) and the
gradients are averaged once per step; only rank 0 evaluates, logs and saves. --batch-size and
--grad-accum are per process, so one step sees batch x block x grad-accum x processes tokens.
NCCL is used on CUDA, gloo on the CPU.
"""
import argparse
import contextlib
from pathlib import Path

import torch

from shared import checks, distributed
from shared.checkpoint import CheckpointError, read_checkpoint
from shared.cli import (non_negative_float, non_negative_int, positive_float, positive_int,
                        probability, seed, stdout_may_close, writable_dir)
from shared.config import MODEL_SWITCHES, with_defaults
from shared.token_files import check_vocabulary, load_tokens
from shared.files import FolderInUse, exclusive_folder
from shared.model import GPT_CONFIG_124M, GPTModel, count_parameters
from shared.tokenizer import GPT2_VOCAB_SIZE
from shared.trainer import TrainConfig, train

# GPT-2's 50257 token ids rounded up to the next multiple of 64 (786 x 64): the embedding and the
# output head then split into whole tiles of the GPU's matrix-multiply kernels, which run faster
# than on a ragged 50257 (nanoGPT pads the same way); the 47 spare rows are never a target.
PADDED_VOCAB_SIZE = 50304
DEFAULT_PARAMETERS = 29_952_384  # count_parameters of the default model (tests check it)


def model_config(args) -> dict:
    """The GPTModel configuration the flags describe."""
    return {
        **GPT_CONFIG_124M,
        "vocab_size": args.vocab_size,
        "context_length": args.block_size,
        "emb_dim": args.emb_dim,
        "num_heads": args.num_heads,
        "num_layers": args.num_layers,
        "drop_rate": args.dropout,
        "qkv_bias": False,
        **{key: getattr(args, key) for key in MODEL_SWITCHES},
        "tokenizer_vocab_size": GPT2_VOCAB_SIZE,
    }


def train_config(args, device) -> TrainConfig:
    return TrainConfig(
        max_iters=args.max_iters, batch_size=args.batch_size, block_size=args.block_size,
        grad_accum_steps=args.grad_accum, learning_rate=args.lr,
        min_lr=args.lr / 10 if args.min_lr is None else args.min_lr,
        warmup_iters=args.warmup_iters, lr_decay_iters=args.lr_decay_iters,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters, patience=args.patience,
        seed=args.seed, device=device, amp=args.amp, compile=args.compile)


# Chapter 6's modern model: every switch of shared/config.py's table is a flag (--norm,
# --pos-encoding, ...) whose default is the table's, except these.
CHAPTER6_SWITCHES = {"norm": "rmsnorm", "pos_encoding": "rope", "tie_weights": True}
SWITCH_NOTES = {"tie_weights": "untied: 49,269,120 parameters at the default size"}


def add_switch_flags(group) -> None:
    """One flag per row of MODEL_SWITCHES, its choices and help from the table."""
    for key, switch in MODEL_SWITCHES.items():
        flag, default = "--" + key.replace("_", "-"), CHAPTER6_SWITCHES.get(key, switch.default)
        text = switch.meaning + (f" ({SWITCH_NOTES[key]})" if key in SWITCH_NOTES else "")
        if switch.allowed is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=text)
        elif switch.allowed is float:
            group.add_argument(flag, type=positive_float, default=default, help=text)
        else:
            group.add_argument(flag, choices=switch.allowed, default=default, help=text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shared.train_tinystories",
        description="Pretrain a GPT with RoPE and RMSNorm on token files written by "
                    "shared.prepare_tinystories. The default size (emb 384, 6 layers, 6 heads, "
                    f"vocab {PADDED_VOCAB_SIZE}, tied head) has {DEFAULT_PARAMETERS:,} parameters. "
                    "Runs under torchrun --standalone --nproc_per_node N for several GPUs (or CPU "
                    "processes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("data and checkpoints")
    io.add_argument("--data-dir", required=True, help="folder with train.bin and val.bin")
    io.add_argument("--out-dir", required=True, type=writable_dir, help="folder for best.pt and last.pt")
    io.add_argument("--resume", action="store_true", help="continue the run saved in out-dir/last.pt")

    m = p.add_argument_group("model (on --resume: from last.pt; another size or switch is refused)")
    m.add_argument("--emb-dim", type=positive_int, default=384)
    m.add_argument("--num-layers", type=positive_int, default=6)
    m.add_argument("--num-heads", type=positive_int, default=6)
    m.add_argument("--vocab-size", type=positive_int, default=PADDED_VOCAB_SIZE,
                   help=f"GPT-2's {GPT2_VOCAB_SIZE} ids padded up to a multiple of 64")
    m.add_argument("--dropout", type=probability, default=0.0,
                   help="TinyStories is large enough that a 30M model does not overfit it")
    add_switch_flags(m)

    t = p.add_argument_group("training")
    t.add_argument("--block-size", type=positive_int, default=512, help="context length in tokens")
    t.add_argument("--batch-size", type=positive_int, default=32, help="windows per micro-batch and process")
    t.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--max-iters", type=positive_int, default=20000, help="optimizer steps")
    t.add_argument("--lr", type=positive_float, default=6e-4, help="peak learning rate")
    t.add_argument("--min-lr", type=non_negative_float, default=None, help="end of the cosine (default: lr / 10)")
    t.add_argument("--warmup-iters", type=non_negative_int, default=1000)
    t.add_argument("--lr-decay-iters", type=positive_int, default=None,
                   help="step where the cosine reaches min-lr (default: max-iters)")
    t.add_argument("--weight-decay", type=non_negative_float, default=0.1)
    t.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="0 turns clipping off")
    t.add_argument("--eval-interval", type=positive_int, default=1000)
    t.add_argument("--eval-iters", type=positive_int, default=100, help="batches per split and evaluation")
    t.add_argument("--patience", type=non_negative_int, default=5,
                   help="stop after this many evaluations without a better val loss; 0: never")
    t.add_argument("--seed", type=seed, default=1337)

    s = p.add_argument_group("system")
    s.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast and TF32 matmuls on CUDA (never used on the CPU)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    return p


# --resume: the flags given on the command line either apply or are refused, never ignored.
# The model comes from last.pt: a size or switch flag given with another value is refused
# (--dropout applies). A training flag left out takes last.pt's value; one given applies from the next step,
# or shared.trainer refuses it (FIXED_ON_RESUME: batch, block size, accumulation, seed, eval-iters).
MODEL_FLAGS = {"emb_dim": "emb_dim", "num_layers": "num_layers", "num_heads": "num_heads",
               "vocab_size": "vocab_size", **{key: key for key in MODEL_SWITCHES}}
TRAIN_FLAGS = {"max_iters": "max_iters", "batch_size": "batch_size", "block_size": "block_size",
               "grad_accum": "grad_accum_steps", "lr": "learning_rate", "min_lr": "min_lr",
               "warmup_iters": "warmup_iters", "lr_decay_iters": "lr_decay_iters",
               "weight_decay": "weight_decay", "grad_clip": "grad_clip",
               "eval_interval": "eval_interval", "eval_iters": "eval_iters", "patience": "patience",
               "seed": "seed"}


def given_flags(argv) -> set:
    """The destinations of the flags on the command line (a default cannot tell them apart)."""
    parser = build_parser()
    for action in parser._actions:  # (set_defaults would also run SUPPRESS through each type)
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _saved_run(last_path: Path) -> tuple:
    """(model_config, train_config) that last.pt records."""
    if not last_path.is_file():
        raise FileNotFoundError(f"--resume: {last_path} not found; run without --resume to start "
                                "training")
    extra = read_checkpoint(last_path, map_location="cpu").get("extra")
    extra = extra if isinstance(extra, dict) else {}
    config, training = extra.get("model_config"), extra.get("train_config")
    if not isinstance(config, dict) or not isinstance(training, dict):
        raise CheckpointError(f"{last_path} holds no model_config and train_config, so this script "
                              "did not write it; delete it to start over, or point --out-dir at the "
                              "right run")
    missing = [key for key in ("context_length", "vocab_size") if key not in config]
    if missing:
        raise CheckpointError(f"{last_path} records a model_config without {missing}: it is "
                              "damaged; resume from a complete last.pt or start a new run")
    return config, training


def _resume_settings(args, given, last_path):
    """The model config of last.pt (a size flag that differs is refused); the training flags that
    were left out take last.pt's values, in place in `args`."""
    config, training = _saved_run(last_path)
    saved = with_defaults(config)  # a switch the file leaves out has the table's default
    for dest, key in MODEL_FLAGS.items():
        if dest in given and getattr(args, dest) != saved.get(key):
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} {getattr(args, dest)} on --resume: the run in {last_path} has "
                             f"{key} {saved.get(key)!r}, and a model's shape cannot change within "
                             f"a run; leave {flag} out, or start a new run in another --out-dir")
    if "dropout" in given:
        config = {**config, "drop_rate": args.dropout}
    for dest, field in TRAIN_FLAGS.items():
        if dest not in given and field in training:
            setattr(args, dest, training[field])
    return config


def _check_vocabulary(data_dir: Path, vocab_size: int) -> None:
    """The token ids in the files must fit the embedding; meta.json says how many there are."""
    check_vocabulary(data_dir, vocab_size, "--vocab-size", f" ({PADDED_VOCAB_SIZE} for GPT-2)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.given = given_flags(argv)
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    with distributed.launch(args.device) as device:  # torchrun's process group, if under it
        procs = distributed.processes()
        # One run per out-dir: rank 0 holds its lock for the whole run (see shared.files).
        with exclusive_folder(out_dir) if procs.master else contextlib.nullcontext():
            return _run(args, data_dir, out_dir, device, procs)


def _check_windows_fit(args, data_dir, splits):
    """Before the model is built: its position tables grow with --block-size, the data does not."""
    for name, data in splits.items():
        if len(data) < args.block_size + 1:
            raise ValueError(f"--block-size {args.block_size} needs windows of {args.block_size + 1} "
                             f"tokens, but {data_dir / (name + '.bin')} holds {len(data):,}; "
                             "lower --block-size")


def _run(args, data_dir, out_dir, device, procs):
    """Build (or restore the size of) the model and train it on `device`; the out-dir is locked."""
    if (out_dir / "last.pt").is_dir():  # neither a run to resume nor a free place for one
        raise IsADirectoryError(f"{out_dir / 'last.pt'} is a folder, not a checkpoint: move or "
                                "rename it, or choose another --out-dir")
    if args.resume:
        cfg = _resume_settings(args, args.given, out_dir / "last.pt")
        checks.check_window(args.block_size, cfg["context_length"], "--block-size")
    else:
        if (out_dir / "last.pt").exists():
            raise ValueError(f"{out_dir} already holds a run (last.pt); pass --resume to "
                             "continue it, or choose another --out-dir")
        cfg = model_config(args)
    _check_vocabulary(data_dir, cfg["vocab_size"])
    train_data = load_tokens(data_dir / "train.bin")
    val_data = load_tokens(data_dir / "val.bin")
    _check_windows_fit(args, data_dir, {"train": train_data, "val": val_data})

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = GPTModel(cfg)
    tcfg = train_config(args, device)
    say = distributed.on_master(print, procs)
    say(f"model: {count_parameters(model):,} parameters, emb {cfg['emb_dim']}, "
        f"{cfg['num_layers']} layers, {cfg['num_heads']} heads, vocab {cfg['vocab_size']}")
    say(f"data: {len(train_data):,} train and {len(val_data):,} val tokens; "
        f"{tcfg.tokens_per_step(procs.world_size):,} tokens per step on {procs.world_size} "
        f"process(es), device {device}")
    return train(model, train_data, val_data, tcfg, out_dir, resume=args.resume,
                 progress=args.progress)


if __name__ == "__main__":
    try:
        with stdout_may_close():  # `python -m shared.train_tinystories ... | head`
            main()
    # The user's mistakes and the machine's state: the message, no traceback. Anything else
    # (a bug, CUDA out of memory) keeps its traceback.
    except (ValueError, OSError, FolderInUse, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
