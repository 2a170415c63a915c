"""Distributed data-parallel training on PyTorch's own ``torch.distributed`` (DDP + torchrun).

Nothing here is a cluster manager: processes are started by ``torchrun``
(``python -m torch.distributed.run``), which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` / ``MASTER_PORT`` (or a c10d rendezvous). This module only

- tells whether the process is one of several (:func:`world_size`, :func:`is_main_process`);
- joins the process group (:func:`setup`): backend ``nccl`` when training on CUDA (one GPU per
  local rank), else ``gloo``;
- shards each epoch's training rows like :class:`torch.utils.data.DistributedSampler`
  (:func:`shard_indices`, vectorised, identical indices);
- re-executes a command under torchrun (:func:`launch`, used by ``mmkgrec train --nproc N``).

How the Trainer uses it (``mmkgrec.train.trainer``): every rank builds the same epoch rows from
the same seeded sampler, keeps its shard, runs ``ceil(batch_size / world)`` rows per step (so
``batch_size`` stays the global batch and the number of optimiser steps per epoch is that of a
single process), and DDP averages the gradients. Rank 0 alone evaluates, decides early stopping
(broadcast to the other ranks) and writes files; checkpoints hold the plain model's state dict
(no ``module.`` prefix), so a single process loads them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn

from mmkgrec.errors import ConfigError

TIMEOUT_ENV = "MMKGREC_DIST_TIMEOUT_S"  # collective timeout; rank 0 evaluates while others wait
DEFAULT_TIMEOUT_S = 3600.0
BACKEND_ENV = "MMKGREC_DIST_BACKEND"  # force "gloo" or "nccl"


def world_size() -> int:
    """Number of processes of this job: the initialised group's size, else ``$WORLD_SIZE``, else 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 and in a plain single process: the one that writes files and prints."""
    return rank() == 0


@dataclass
class DistContext:
    """This process's place in a DDP job (see :func:`setup`)."""

    world_size: int
    rank: int
    local_rank: int
    backend: str
    device: torch.device
    owns_group: bool  # True when setup() initialised the group (and close() destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value, e.g. the trainer state) on every rank."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum of ``tensor`` over ranks (returned for convenience)."""
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if :func:`setup` created it."""
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            # Every rank arrives before the group goes: destroying it while a peer still talks
            # aborts that peer's gloo threads ("terminate called without an active exception").
            self.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str = "auto") -> DistContext | None:
    """Join the DDP process group when this process was started by torchrun with several ranks.

    Args:
        device: the trainer's device option: ``"auto"`` (CUDA when available), ``"cuda"`` or
            ``"cpu"``. On CUDA each local rank takes GPU ``LOCAL_RANK`` and the backend is
            ``nccl``; on CPU it is ``gloo``. ``$MMKGREC_DIST_BACKEND`` forces one.

    Returns:
        None in a single process (``WORLD_SIZE`` unset or 1, no group initialised); else the
        context. An already initialised group (e.g. by the caller) is reused and left open.

    Raises:
        ConfigError: ``device="cuda"`` without a GPU, fewer GPUs than local ranks, or a
            torchrun variable missing.
    """
    import torch.distributed as dist

    if not dist.is_available():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return None
    owns = not dist.is_initialized()
    if owns and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} needs GPU {local_rank} but this node has "
                              f"{torch.cuda.device_count()}; use --nproc-per-node <= the GPUs")
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if use_cuda else "gloo")
    if owns:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE > 1 but {', '.join(missing)} unset: start the "
                              f"processes with torchrun (or `mmkgrec train --nproc N`)")
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        kwargs: dict[str, Any] = {"device_id": target} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    else:
        backend = dist.get_backend()
    return DistContext(world_size=dist.get_world_size(), rank=dist.get_rank(),
                       local_rank=local_rank, backend=backend, device=target, owns_group=owns)


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int,
                  shuffle: bool = True) -> torch.Tensor:
    """This rank's row indices for one epoch, as :class:`~torch.utils.data.DistributedSampler`.

    A permutation of ``range(n)`` drawn from a generator seeded with ``seed + epoch`` (the same on
    every rank, different every epoch), padded by wrapping around to ``ceil(n / world) * world``
    so all shards have equal size, then every ``world``-th index from ``rank``. The shards are
    disjoint apart from the padding and their union is every row.

    Returns:
        int64 ``[ceil(n / world)]`` (CPU).
    """
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"need 0 <= rank < world, got rank {rank} of {world}")
    if n <= 0:
        return torch.zeros(0, dtype=torch.int64)
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        indices = torch.randperm(n, generator=generator)  # [n]
    else:
        indices = torch.arange(n)
    total = math.ceil(n / world) * world
    if total > n:
        indices = torch.cat([indices, indices.repeat(math.ceil((total - n) / n))[:total - n]])
    return indices[rank:total:world]  # [total / world]


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the option that asked for the launch)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch_command(nproc: int, argv: list[str], torchrun_args: list[str] | None = None
                   ) -> list[str]:
    """The torchrun command line that runs ``mmkgrec ARGV`` in ``nproc`` local processes."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            *(torchrun_args or ["--standalone"]), "-m", "mmkgrec", *strip_nproc(argv)]


def launch(nproc: int, argv: list[str] | None = None,
           torchrun_args: list[str] | None = None) -> int:
    """Re-execute ``mmkgrec ARGV`` (minus ``--nproc``) under torchrun on ``nproc`` local ranks.

    This is what ``mmkgrec train --nproc N`` does: ``python -m torch.distributed.run
    --nproc-per-node N --standalone -m mmkgrec train ...``. For several machines call torchrun
    yourself (``--nnodes``, ``--node-rank``, ``--rdzv-backend c10d --rdzv-endpoint host:port``;
    see docs/scaling.md).

    Args:
        nproc: processes on this machine (one per GPU on CUDA).
        argv: the command's arguments (default ``sys.argv[1:]``).
        torchrun_args: torchrun options replacing the default ``["--standalone"]``.

    Returns:
        torchrun's exit code (non-zero when any rank failed).

    Raises:
        ConfigError: ``nproc < 1``, or called from inside a distributed job.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc inside a torchrun job: the processes are already started")
    command = launch_command(nproc, list(sys.argv[1:] if argv is None else argv), torchrun_args)
    return subprocess.call(command)


class _LossModule(nn.Module):
    """The model plus the trainer's loss, as one module for DistributedDataParallel."""

    def __init__(self, model: nn.Module, loss: Callable[[Tensor, Tensor, Tensor], Tensor]):
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, users: Tensor, items: Tensor, third: Tensor) -> Tensor:
        return self._loss(users, items, third)


def ddp_loss(context: DistContext, model: nn.Module,
             loss: Callable[[Tensor, Tensor, Tensor], Tensor], sparse: dict) -> nn.Module:
    """The training loss of a batch: ``loss`` inside DDP (under torchrun).

    DDP wraps a module whose forward is the whole loss (model forward, L2 term, auxiliary
    loss), so gradients of parameters used outside ``model.forward`` are reduced too.
    ``find_unused_parameters`` lets models leave parameters unused in a step; buffers are
    not broadcast each step (every rank resamples them from the same seeded stream).
    """
    if sparse and context.backend == "nccl":
        raise ConfigError("sparse_embeddings is not supported with DDP on NCCL (sparse "
                          "all-reduce); use sparse_embeddings=false on GPUs")
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # No buffer broadcast before every forward (it is deprecated under a new name in recent
    # torch): the buffers are identical on every rank already.
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel.__init__).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(
        _LossModule(model, loss),
        device_ids=[context.device.index] if context.device.type == "cuda" else None,
        find_unused_parameters=True, **no_sync)
