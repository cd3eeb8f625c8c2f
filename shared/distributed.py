"""Data-parallel training under torchrun, kept beside shared.trainer rather than inside its loop.

shared.trainer.train reads as a loop on one device. When torch.distributed has been initialised
(shared.train_tinystories does that under torchrun), these few functions are what changes: the
model is wrapped in DistributedDataParallel, every rank's random state is gathered for last.pt,
and rank 0's decision to stop is sent to the others so that all of them leave the loop together.
Without torchrun each of them is a no-op.
"""
import inspect
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
