"""Data-parallel training under torchrun, kept beside shared.trainer rather than inside its loop.

shared.trainer.train reads as a loop on one device. Under torchrun, `launch` (which
shared.train_tinystories enters) starts the process group and gives each process its device, and
these few functions are what changes in the trainer: the model is wrapped in
DistributedDataParallel, every rank's random state is gathered for last.pt, and rank 0's decision
to stop is sent to the others so that all of them leave the loop together. Without torchrun each
of them is a no-op.
"""
import contextlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: DistributedDataParallel imports this module
# later, and its functions' default `group=group.WORLD` would then hold the live process group
# for good. destroy_process_group could not free it, gloo's worker threads would outlive the run
# and could drop a tensor during interpreter shutdown, which aborts the process ("terminate
# called without an active exception"). Imported now, those defaults are None. (A PyTorch built
# without torch.distributed, USE_DISTRIBUTED=0, has no such module, and no process group either.)
if dist.is_available():
    import torch.distributed.nn.functional  # noqa: F401

from shared.device import get_device


@dataclass(frozen=True)
class Processes:
    """Who this process is: rank 0 of 1 without torchrun."""
    ddp: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:  # the one process that evaluates, logs and writes checkpoints
        return self.rank == 0


def processes() -> Processes:
    if dist.is_available() and dist.is_initialized():
        return Processes(True, dist.get_rank(), dist.get_world_size())
    return Processes()


def on_master(write, procs: Processes):
    """`write` on rank 0; a function that prints nothing on the other ranks."""
    return write if procs.master else (lambda *args, **kwargs: None)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ  # torchrun sets both


@contextlib.contextmanager
def launch(prefer: str | None = None):
    """The device this process trains on, resolved once: get_device(prefer) in one process; under
    torchrun, cuda:LOCAL_RANK (NCCL) or the CPU (gloo) with the process group started, and left
    together at the end (the group is destroyed even after an error)."""
    if not under_torchrun():
        yield get_device(prefer)
        return
    device = _rank_device(prefer)
    try:
        yield device
        # Leave together, then destroy the group while every rank is still alive; destroying it
        # joins gloo's worker threads (see the import of torch.distributed.nn.functional above).
        # Only on success: after an error the other ranks may never arrive.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank_device(prefer: str | None) -> torch.device:
    """Start the process group and return this rank's device, checked against the CPU."""
    # The name only: the self-check would run on GPU 0 in every process, before each one picks
    # its own GPU; the GPU this rank uses is checked below.
    local_rank, wanted = _local_rank(), get_device(prefer, check=False)
    if wanted.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
        if get_device(str(device)) != device:  # it warned why
            dist.destroy_process_group()
            raise ValueError(f"{device} computes wrong numbers (see the warning above); "
                             "DistributedDataParallel needs every rank on a working GPU")
        return device
    if wanted.type == "cpu":
        dist.init_process_group("gloo")
        return torch.device("cpu")
    raise ValueError(f"DistributedDataParallel needs CUDA (nccl) or the CPU (gloo), not "
                     f"{wanted.type}; pass --device cpu or run without torchrun")


def _local_rank() -> int:
    """LOCAL_RANK, which torchrun sets with RANK and WORLD_SIZE; one line if it is not there."""
    values = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if not all(value is not None and value.strip().isdigit() for value in values.values()):
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        raise ValueError(f"RANK and WORLD_SIZE are set but not with a LOCAL_RANK ({shown}): start "
                         "several processes with torchrun, which sets all three, or unset RANK and "
                         "WORLD_SIZE to train in one process")
    return int(values["LOCAL_RANK"])


def wrap_model(model, device, procs: Processes):
    """DistributedDataParallel around `model` under torchrun; the model itself otherwise."""
    if not procs.ddp:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    # The only buffers, RoPE's tables, never change: no need to re-send them every forward.
    # (PyTorch 2.13 renamed broadcast_buffers to forward_sync_buffers.)
    name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else "broadcast_buffers")
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **{name: False})


def gather(obj, procs: Processes) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] without torchrun."""
    if not procs.ddp:
        return [obj]
    gathered = [None] * procs.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def agree_to_stop(stop: bool, device, procs: Processes) -> bool:
    """Rank 0's `stop` on every rank: if one rank left the loop alone, the others would wait forever."""
    if not procs.ddp:
        return stop
    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())
