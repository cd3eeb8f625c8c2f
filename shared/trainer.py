"""Chapter 6's trainer: a budget of optimizer steps over token files, resumable to the last bit.

Chapter 5 trained for epochs over a DataLoader. A pretraining run is instead measured in
iterations (optimizer steps), each on fresh random windows of a token file (shared.data.get_batch),
and it has to survive being stopped and restarted. The pieces, in the order one iteration uses them:

    get_lr              linear warmup, then cosine decay to min_lr
    forward_backward    gradients of one iteration, accumulated over micro-batches
    clip_and_step       gradient clipping, then the AdamW update
    estimate_loss       mean loss on the same fixed batches every time, without dropout
    train_step          one optimizer step of a Run (the run's objects and its progress)
    evaluate_and_save   evaluation, best.pt / last.pt, the early-stopping decision
    train               the loop: start or resume, then steps and evaluations

Training on several GPUs under torchrun changes only a few calls, kept in shared.distributed.

Usage (a notebook-sized run on the CPU):

    cfg = TrainConfig(max_iters=300, batch_size=8, block_size=64, eval_interval=50)
    history = train(model, "data/train.bin", "data/val.bin", cfg, out_dir="runs/tiny")
    # history["iters"], history["train_losses"], history["val_losses"]: one entry per evaluation

`train(..., resume=True)` continues from out_dir/last.pt exactly where it stopped: the same losses,
step for step, as if it had never been interrupted.
"""
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from shared import checks, distributed, speedups
from shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.data import get_batch
from shared.files import exclusive_folder
from shared.token_files import check_vocabulary, load_tokens
from shared.device import get_device


@dataclass
class TrainConfig:
    """Every knob of a run. Iterations count optimizer steps, not micro-batches."""
    max_iters: int = 2000          # optimizer steps of the run
    batch_size: int = 16           # windows per micro-batch (per process under DDP)
    block_size: int = 256          # tokens per window; at most the model's context length
    grad_accum_steps: int = 1      # micro-batches per optimizer step
    learning_rate: float = 6e-4    # peak learning rate, reached at the end of warmup
    min_lr: float = 6e-5           # floor of the cosine decay (nanoGPT: learning_rate / 10)
    warmup_iters: int = 100        # linear warmup steps
    lr_decay_iters: int | None = None  # where the cosine reaches min_lr; None: max_iters
    weight_decay: float = 0.1      # on matrices and embeddings only (see configure_optimizer)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0         # cap on the global gradient norm; 0 turns clipping off
    eval_interval: int = 100       # evaluate (and save) every this many steps, and at the end
    eval_iters: int = 20           # batches per split in each evaluation
    patience: int = 0              # stop after this many evaluations without a better val loss; 0: never
    seed: int = 1337               # batches and dropout (each DDP rank adds its rank)
    device: torch.device | str | None = None  # a torch.device is used as it is; else get_device(device)
    amp: bool = True               # on CUDA: bf16 autocast, TF32 matmuls; ignored elsewhere (see mixed_precision)
    compile: bool = False          # torch.compile the model (PyTorch 2, best on CUDA)

    def __post_init__(self):
        checks.check_train_config(self)

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def tokens_per_step(self, world_size: int = 1) -> int:
        """Tokens one optimizer step trains on, over all `world_size` processes."""
        return self.batch_size * self.block_size * self.grad_accum_steps * world_size

    def values(self) -> dict:
        """The fields as plain values, as last.pt records them (a torch.device as its name)."""
        values = asdict(self)
        values["device"] = None if self.device is None else str(self.device)
        return values


# --- The learning-rate schedule and the optimizer --------------------------------------------------

def get_lr(it: int, cfg: TrainConfig) -> float:
    """Learning rate of step `it` (0-based): linear warmup, cosine decay, then min_lr.

    Warmup climbs in equal steps from learning_rate / (warmup_iters + 1) at step 0 to the full
    learning_rate at step warmup_iters, where the cosine starts; at step decay_iters the cosine has
    come down to min_lr, which holds from then on. Early steps are kept small because Adam's
    second-moment estimates are still poor and a randomly initialised model takes large gradients.
    """
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (cfg.decay_iters - cfg.warmup_iters)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))                         # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def configure_optimizer(model, weight_decay, lr, betas, device_type):
    """AdamW with weight decay on every parameter of 2 or more dimensions, none on the rest.

    As in nanoGPT, the decayed group is every matrix: the linear layers *and the embeddings*
    (a tied output head is one matrix with the token embedding). Biases and norm weights (1-D)
    are not decayed: pulling a norm's gain or a bias towards zero only fights the model.
    On CPUs and CUDA GPUs the fused kernel updates every parameter in one pass over memory (on
    this repository's CPU, 115 ms instead of 616 ms for the multi-tensor kernel at 124M
    parameters); other devices get the multi-tensor (foreach) kernel.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight appears once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if device_type in ("cpu", "cuda"):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


# --- One iteration --------------------------------------------------------------------------------

def forward_backward(model, micro_batches, autocast=None, no_sync=None) -> float:
    """Accumulate into .grad the gradient of the mean loss over `micro_batches`; return that loss.

    Each micro-batch loss is divided by their number, so k micro-batches of b windows give the
    same gradient as one batch of k*b windows while holding only b in memory at a time.
    `no_sync` (DDP's model.no_sync) skips the gradient all-reduce on every micro-batch but the
    last: averaging across processes once per step is enough.
    """
    k = len(micro_batches)
    total = 0.0
    for i, (x, y) in enumerate(micro_batches):
        sync = i == k - 1 or no_sync is None
        with nullcontext() if sync else no_sync():
            with autocast or nullcontext():  # autocast runs cross_entropy in fp32 by itself
                logits = model(x)                                              # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) / k  # (B*T, V) vs (B*T,)
            loss.backward()
        total = total + loss.detach()  # stays on the device: no wait per micro-batch
    return float(total)


def clip_and_step(model, optimizer, grad_clip) -> float:
    """Cap the global gradient norm at `grad_clip` (0: no cap), step, clear the gradients.

    Returns the norm *before* clipping, worth watching: spikes announce instabilities.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.item()


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device="cpu", autocast=None,
                  seed=0):
    """Mean loss over `eval_iters` batches of each split: {"train": ..., "val": ...}.

    The batches come from a generator seeded with `seed` every time, so every evaluation scores
    the same windows: two estimates differ only because the model changed, which is what the
    best-checkpoint and early-stopping decisions compare. It touches no global random state, and
    the model goes back to training mode afterwards.
    """
    was_training = model.training
    model.eval()
    losses = {}
    for name, data in splits.items():
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for _ in range(eval_iters):
            x, y = get_batch(data, batch_size, block_size, device, generator)
            with autocast or nullcontext():
                logits = model(x)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
        losses[name] = total / eval_iters
    model.train(was_training)
    return losses


# --- Random state, so a resumed run draws what the uninterrupted one would have ---------------------

def _rng_state(generator, device):
    state = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if device.type == "cuda":  # dropout on the GPU draws from the CUDA generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, generator, device):
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["batches"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _new_history():
    return {"iters": [], "train_losses": [], "val_losses": [], "tokens_seen": [],
            "step_losses": [], "lrs": [], "grad_norms": [],
            "best_val_loss": math.inf, "best_iter": None, "stopped_early": False}


# --- The run: what the loop carries from step to step -----------------------------------------------

@dataclass
class Run:
    """One training run's objects and its progress (iter_num, bad_evals, history)."""
    cfg: TrainConfig
    model: torch.nn.Module          # what a step calls: compiled and/or DDP-wrapped
    raw_model: torch.nn.Module      # the plain module, saved in checkpoints
    optimizer: torch.optim.Optimizer
    generator: torch.Generator      # draws the training windows (on the CPU)
    device: torch.device
    splits: dict                    # {"train": tokens, "val": tokens}
    out_dir: Path
    procs: distributed.Processes
    say: Callable[[str], None]
    autocast: object = None         # bf16 autocast on CUDA, else None
    eval_model: torch.nn.Module | None = None  # model before the DDP wrapper: rank 0 evaluates alone
    sparse_before: bool = False     # tok_emb.sparse before the run, restored at its end
    progress: bool = True           # show a progress bar
    iter_num: int = 0
    bad_evals: int = 0              # evaluations since the last better val loss
    history: dict = field(default_factory=_new_history)

    @property
    def tokens_per_iter(self) -> int:
        return self.cfg.tokens_per_step(self.procs.world_size)


def train_step(run: Run):
    """One optimizer step: set the learning rate, draw the batches, forward/backward, clip, step."""
    cfg = run.cfg
    lr = get_lr(run.iter_num, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    micro_batches = [get_batch(run.splits["train"], cfg.batch_size, cfg.block_size, run.device,
                               run.generator) for _ in range(cfg.grad_accum_steps)]
    no_sync = run.model.no_sync if run.procs.ddp else None
    loss = forward_backward(run.model, micro_batches, run.autocast, no_sync)
    grad_norm = clip_and_step(run.model, run.optimizer, cfg.grad_clip)  # .item() waits for the GPU
    run.iter_num += 1
    run.history["step_losses"].append(loss)
    run.history["lrs"].append(lr)
    run.history["grad_norms"].append(grad_norm)
    return loss, lr


def evaluate_and_save(run: Run) -> bool:
    """Evaluate (rank 0), write best.pt when val improves and last.pt always; True: stop early."""
    cfg, history = run.cfg, run.history
    rng = distributed.gather(_rng_state(run.generator, run.device), run.procs)  # every rank's
    stop = False
    if run.procs.master:
        losses = estimate_loss(run.eval_model, run.splits, cfg.batch_size, cfg.block_size,
                               cfg.eval_iters, run.device, run.autocast,
                               seed=cfg.seed + 1)  # not the training batches' stream
        history["iters"].append(run.iter_num)
        history["train_losses"].append(losses["train"])
        history["val_losses"].append(losses["val"])
        history["tokens_seen"].append(run.iter_num * run.tokens_per_iter)
        line = f"iter {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        if losses["val"] < history["best_val_loss"]:
            history["best_val_loss"], history["best_iter"] = losses["val"], run.iter_num
            run.bad_evals = 0
            _save(run, run.out_dir / "best.pt", val_loss=losses["val"])
            line += " (best so far, saved best.pt)"
        else:
            run.bad_evals += 1
            line += f" (no improvement {run.bad_evals}/{cfg.patience or 'inf'})"
        stop = cfg.patience > 0 and run.bad_evals >= cfg.patience
        history["stopped_early"] = stop
        _save(run, run.out_dir / "last.pt", run.optimizer, bad_evals=run.bad_evals,
              history=history, rng=rng)
        run.say(line)
        if stop:
            run.say(f"early stopping at iter {run.iter_num}: no better val loss in {cfg.patience} "
                    f"evaluations; best {history['best_val_loss']:.4f} at iter {history['best_iter']}")
    return distributed.agree_to_stop(stop, run.device, run.procs)


def _save(run, path, optimizer=None, **extra):
    save_checkpoint(path, run.raw_model, optimizer, iter_num=run.iter_num,
                    model_config=getattr(run.raw_model, "cfg", None),
                    train_config=run.cfg.values(), **extra)


# --- Starting, resuming ------------------------------------------------------------------------------

def _check_data(model, splits, cfg):
    """The entry point's checks: windows must fit the model and each split, ids the vocabulary."""
    checks.check_window(cfg.block_size, getattr(model, "context_length", None), "block_size")
    vocab_size = getattr(model, "cfg", {}).get("vocab_size")
    for name, data in splits.items():
        path = getattr(data, "filename", None)  # a token file: its meta.json knows the largest id
        known = vocab_size is not None and path and check_vocabulary(Path(path).parent, vocab_size)
        checks.check_token_array(data, None if known else vocab_size, f"the {name} split")
    for name, data in splits.items():
        if len(data) < cfg.block_size + 1:
            raise ValueError(f"the {name} split has {len(data)} tokens, fewer than one window of "
                             f"block_size + 1 = {cfg.block_size + 1}; lower block_size")
    builds = {getattr(data, "build", None) for data in splits.values()} - {None}  # load_tokens'
    if len(builds) > 1:
        raise ValueError("the train and val token files come from two different builds of the "
                         "dataset (it was rebuilt while they were loaded): load both again")


# On resume each TrainConfig field either applies from the next step on or is refused. These are
# refused, with why: what a step sees and which batches a run and its evaluations draw are what the
# restored random streams, the history's tokens_seen and the best-val-loss comparisons rely on.
# Everything else applies: the schedule (learning_rate, min_lr, warmup_iters, lr_decay_iters),
# max_iters, weight_decay, beta1, beta2, grad_clip, eval_interval, patience, device, amp, compile.
FIXED_ON_RESUME = {
    "batch_size": "the tokens per step are part of the run (its history counts tokens_seen)",
    "block_size": "the tokens per step are part of the run (its history counts tokens_seen)",
    "grad_accum_steps": "the tokens per step are part of the run (its history counts tokens_seen)",
    "seed": "the random streams come from last.pt and the evaluations' batches from the seed",
    "eval_iters": "the best val loss so far was measured on that many batches",
}
RESUME_FIELDS = ("iter_num", "bad_evals", "history", "rng", "train_config")


def _check_resumable(path, extra, cfg):
    """Before anything loads: last.pt holds all a resume restores, and cfg changes only what may."""
    saved, history, rng = extra["train_config"], extra["history"], extra["rng"]
    lacking = [f"train_config[{f.name!r}]" for f in fields(TrainConfig)
               if not isinstance(saved, dict) or f.name not in saved]
    lacking += [f"history[{key!r}]" for key in _new_history()
                if not isinstance(history, dict) or key not in history]
    lacking += [name for name in ("iter_num", "bad_evals") if type(extra[name]) is not int]
    if not (isinstance(rng, list) and rng and all(
            isinstance(r, dict) and all(isinstance(r.get(k), torch.Tensor) for k in ("torch", "batches"))
            for r in rng)):
        lacking.append("rng (each process's 'torch' and 'batches' random states)")
    if lacking:
        raise CheckpointError(f"{path} lacks {', '.join(lacking[:3])}: it is damaged or was "
                              "written by other code; resume from a complete last.pt, or start a "
                              "new run in another out_dir")
    for name, why in FIXED_ON_RESUME.items():
        if saved[name] != getattr(cfg, name):
            raise ValueError(f"cannot resume with {name} = {getattr(cfg, name)!r}: the run in "
                             f"{path.parent} has {saved[name]!r}, and {why}; resume with "
                             f"{saved[name]!r}, or start a new run in another out_dir")


def _resume(run: Run) -> dict:
    """Load out_dir/last.pt into the run: weights, optimizer, progress and random streams.

    Returns the training configuration last.pt was written with.
    """
    last_path = run.out_dir / "last.pt"
    if last_path.is_dir():  # "no run to resume" would send the user back to a fresh run into it
        raise IsADirectoryError(f"{last_path} is a folder, not a checkpoint: move or rename it, "
                                "or use another out_dir")
    if not last_path.is_file():
        raise FileNotFoundError(f"{last_path} not found: there is no run to resume in {run.out_dir}; "
                                "start without resume")
    state = load_checkpoint(last_path, run.raw_model, run.optimizer, map_location=run.device,
                            required=RESUME_FIELDS,
                            check=lambda extra: _check_resumable(last_path, extra, run.cfg))
    run.iter_num, run.bad_evals, run.history = state["iter_num"], state["bad_evals"], state["history"]
    _apply_settings(run, state["train_config"])
    rng, procs = state["rng"], run.procs
    if len(rng) == procs.world_size:
        _set_rng_state(rng[procs.rank], run.generator, run.device)
    else:  # another process count: fresh, distinct streams rather than repeated batches
        run.say(f"last.pt was written by {len(rng)} processes, this run has {procs.world_size}: "
                "the random streams restart from new seeds")
        seed = run.cfg.seed + procs.rank + 1000 * run.iter_num
        torch.manual_seed(seed)
        run.generator.manual_seed(seed)
    run.say(f"resuming from {last_path} at iter {run.iter_num} "
            f"(best val loss {run.history['best_val_loss']:.4f})")
    return state["train_config"]


def _apply_settings(run: Run, saved: dict):
    """The run's settings, not last.pt's: optimizer.load_state_dict restored the saved weight
    decay and betas into the parameter groups (the learning rate is set at every step)."""
    cfg = run.cfg
    run.optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # configure_optimizer's decayed group
    for group in run.optimizer.param_groups:
        group["betas"] = (cfg.beta1, cfg.beta2)
    changed = [f"{name} {saved[name]!r} -> {value!r}" for name, value in cfg.values().items()
               if saved[name] != value]
    if changed:
        run.say(f"resume: applying {', '.join(changed)}")


def _nothing_left(run: Run, saved: dict) -> bool:
    """True when the resumed run has no step to take; a run that stopped early continues when
    max_iters or patience changed (its count of evaluations without improvement starts again)."""
    cfg = run.cfg
    if run.history["stopped_early"]:
        if (cfg.max_iters, cfg.patience) == (saved["max_iters"], saved["patience"]):
            run.say(f"the run stopped early at iter {run.iter_num} (patience {cfg.patience}); nothing "
                    "to do. To continue it, raise max_iters (--max-iters) or patience (--patience; "
                    "0 never stops)")
            return True
        run.history["stopped_early"], run.bad_evals = False, 0
        run.say(f"continuing the run that stopped early at iter {run.iter_num}")
    if run.iter_num >= cfg.max_iters:
        run.say(f"the run is already at iter {run.iter_num} of max_iters {cfg.max_iters}; "
                "nothing to do (raise max_iters to train longer)")
        return True
    return False


def _device_for(cfg):
    """cfg.device if it is a torch.device (resolved and checked by the caller), else get_device's."""
    device = cfg.device if isinstance(cfg.device, torch.device) else get_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _start(model, train_data, val_data, cfg, out_dir, progress, log) -> Run:
    splits = {name: load_tokens(data) if isinstance(data, (str, Path)) else data
              for name, data in (("train", train_data), ("val", val_data))}
    _check_data(model, splits, cfg)
    procs, device = distributed.processes(), _device_for(cfg)
    say = distributed.on_master(log or (tqdm.write if progress else print), procs)
    model.to(device)
    model.train()
    sparse_before = getattr(getattr(model, "tok_emb", None), "sparse", False)
    if hasattr(model, "tok_emb") and not procs.ddp:  # DDP expects a sparse module's grad sparse
        speedups.sparse_tied_embedding_grad(model)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.learning_rate,
                                    (cfg.beta1, cfg.beta2), device.type)
    return Run(cfg, model, model, optimizer, torch.Generator(), device, splits, Path(out_dir),
               procs, say, sparse_before=sparse_before, progress=progress)


@contextmanager
def mixed_precision(cfg: TrainConfig, device: torch.device):
    """With cfg.amp on CUDA: bf16 autocast (yielded, for each forward) where the GPU has bf16, and
    TF32 matmuls for what autocast leaves in fp32, until the run ends. None elsewhere: bf16 on
    the CPU is very slow."""
    if not (cfg.amp and device.type == "cuda"):
        yield None
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32
    try:
        yield torch.autocast("cuda", dtype=torch.bfloat16) if torch.cuda.is_bf16_supported() else None
    finally:
        torch.set_float32_matmul_precision(before)


# --- The loop ----------------------------------------------------------------------------------------

def train(model, train_data, val_data, cfg: TrainConfig, out_dir, resume=False, progress=True,
          log=None):
    """Train `model` for cfg.max_iters optimizer steps; return the history dict.

    train_data, val_data: token arrays (np.memmap from shared.token_files.load_tokens) or their paths.
    Every cfg.eval_interval steps (and at step 0 and at the end) both splits are evaluated and

        out_dir/best.pt   the model with the lowest val loss so far (weights and configs)
        out_dir/last.pt   everything needed to resume: model, optimizer, step, best val loss,
                          patience counter, history and the random states (torch, batch
                          generator, CUDA) of every process

    are written. resume=True continues from last.pt. To stop a run before its end on purpose and
    continue it later, set lr_decay_iters to the full length so the schedule does not change.
    On resume, cfg's schedule, max_iters, weight decay, betas, clipping, eval_interval and patience
    apply from the next step (last.pt then records them); a changed batch_size, block_size,
    grad_accum_steps, seed or eval_iters is refused (FIXED_ON_RESUME says why), as is a last.pt
    of another model configuration or with a field missing, before anything is loaded. A run that
    stopped early continues when max_iters or patience is changed.

    History: "iters", "train_losses", "val_losses", "tokens_seen" hold one entry per evaluation;
    "step_losses", "lrs", "grad_norms" one per optimizer step; plus "best_val_loss", "best_iter",
    "stopped_early". `log` receives the printed lines (default: print, through tqdm when the bar
    is shown).

    Under torchrun (torch.distributed initialised by the caller, see shared.train_tinystories)
    the model is wrapped in DistributedDataParallel (shared.distributed): each process draws its
    own batches, and only rank 0 evaluates, logs and writes checkpoints.

    out_dir is locked for the run (rank 0 holds shared.files.exclusive_folder): another run into
    the same folder while this one lives raises FolderInUse naming this process.
    """
    # One writer per out_dir (shared.files): a second run into it, from another notebook or
    # command line, is refused instead of swapping best.pt and last.pt with this one's.
    master = distributed.processes().master
    with exclusive_folder(out_dir) if master else nullcontext():
        run = _start(model, train_data, val_data, cfg, out_dir, progress, log)
        try:
            with mixed_precision(cfg, run.device) as run.autocast:
                return _train(run, resume)
        finally:  # the speed-up applied in _start must not outlive this run (the model may be re-used)
            if hasattr(model, "tok_emb"):
                model.tok_emb.sparse = run.sparse_before


def _train(run: Run, resume: bool):
    """Start or resume, then the loop of steps and evaluations."""
    cfg = run.cfg
    if resume:
        saved = _resume(run)
        if _nothing_left(run, saved):
            return run.history
    else:
        torch.manual_seed(cfg.seed + run.procs.rank)      # dropout
        run.generator.manual_seed(cfg.seed + run.procs.rank)  # batches: another stream per rank
    if cfg.compile:
        run.model = torch.compile(run.model)
    run.eval_model = run.model  # a DDP model's forward would wait for the other ranks
    run.model = distributed.wrap_model(run.model, run.device, run.procs)

    stop = False if resume else evaluate_and_save(run)  # step 0: the untrained model's loss
    bar = tqdm(total=cfg.max_iters, initial=run.iter_num, dynamic_ncols=True, desc="training",
               unit="it", disable=not (run.progress and run.procs.master))
    while run.iter_num < cfg.max_iters and not stop:
        t0 = time.perf_counter()
        loss, lr = train_step(run)
        tokens_per_s = run.tokens_per_iter / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        if run.iter_num % cfg.eval_interval == 0 or run.iter_num == cfg.max_iters:
            stop = evaluate_and_save(run)
    bar.close()
    return run.history
