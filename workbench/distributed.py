"""Training across processes with torch.distributed: `torchrun --nproc-per-node N -m workbench train ...`.

Two ways to use N processes (each a "rank"), chosen by `workbench train`:
- **data parallel** (one dictionary, or a group trained together): every rank reads its own 1/N of each
  global batch, and the ranks agree on everything that depends on the whole batch, so a run equals a
  single-process run on the same global batches to float tolerance;
- **distributed dictionaries** (`--distribute-dictionaries`, as sparsify's `distribute_modules`): each rank
  trains its own subset of the group, with no communication until the end.

Why the data-parallel losses are not simply averaged, as DDP would: the training loss is a ratio over the
batch (FVU = sum of squared errors / sum of squared deviations from the *batch* mean), so the mean of N
per-slice ratios is a different loss. Inside `data_parallel(...)` the batch statistics come from all ranks:
`centred_square_sum` centres on the mean over every rank's rows, `ratio_over_ranks(num, den)` returns the
global ratio with a gradient whose sum over ranks is the global ratio's gradient, and `sum_gradients`
adds the ranks' gradients (one all-reduce of one flat buffer per step; for a one-layer dictionary DDP's
bucketed overlap of the backward pass has little to hide). The batch-dependent selections (BatchTopK,
Matryoshka, the choice families) choose across the global batch through `threshold_over_ranks`.
Outside `data_parallel(...)` (one process, or distributed dictionaries) every helper is the plain
single-batch computation, so single-process training is unchanged bit for bit.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from workbench.errors import WorkbenchError


class DistributedError(WorkbenchError):
    """A multi-process run that cannot start as asked (device count, arguments that differ between ranks)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the catalog, the checkpoints and the final files, and shows the progress bar."""
        return self.rank == 0


SINGLE = Ranks(0, 1, 0, 1)


def ranks_from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE);
    SINGLE when the process was not started by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return SINGLE
    world = int(os.environ["WORLD_SIZE"])
    return Ranks(
        int(os.environ["RANK"]),
        world,
        int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        int(os.environ.get("LOCAL_WORLD_SIZE", world)),
    )


def rank_device(ranks: Ranks, device: torch.device) -> torch.device:
    """One GPU per process on each node (cuda:LOCAL_RANK); refuses more processes than the node has devices."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if ranks.local_world_size > count:
            raise DistributedError(
                f"torchrun started {ranks.local_world_size} processes on this node, but it has {count} GPU(s); "
                f"give --nproc-per-node {count} or fewer (one GPU per process)."
            )
        return torch.device("cuda", ranks.local_rank)
    cores = os.cpu_count() or 1
    if device.type == "cpu" and ranks.local_world_size > cores:
        raise DistributedError(
            f"torchrun started {ranks.local_world_size} processes on this node, which has {cores} CPU core(s); "
            f"give --nproc-per-node {cores} or fewer (more processes than cores only slow each other down)."
        )
    return device


def start(ranks: Ranks, device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the process group (gloo on CPUs, NCCL on GPUs) once per process; it is left at exit. (Leaving and
    joining again between two commands of one process races: a fast rank's new group meets a slow rank's old
    one.) A rank that never arrives fails after timeout_s."""
    if ranks.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    atexit.register(dist.destroy_process_group)


def check_same_arguments(ranks: Ranks, arguments: dict) -> None:
    """Refuse to start when the ranks were given different arguments (each would train something else)."""
    if ranks.world_size == 1:
        return
    mine = json.dumps(arguments, sort_keys=True, default=str)
    everyone: list = [None] * ranks.world_size
    dist.all_gather_object(everyone, mine)
    if len(set(everyone)) > 1:
        differing = sorted(
            key
            for key in arguments
            if len({json.dumps(json.loads(other).get(key), sort_keys=True) for other in everyone}) > 1
        )
        digests = ", ".join(f"rank {r}: {hashlib.sha256(a.encode()).hexdigest()[:8]}" for r, a in enumerate(everyone))
        raise DistributedError(
            f"The ranks were started with different arguments ({', '.join(differing) or 'see'}; {digests}). "
            "Start every rank with the same command; nothing was trained."
        )


def barrier(ranks: Ranks) -> None:
    if ranks.world_size > 1:
        dist.barrier()


def gather_objects(ranks: Ranks, value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if ranks.world_size == 1:
        return [value]
    everyone: list = [None] * ranks.world_size
    dist.all_gather_object(everyone, value)
    return everyone


# --- Data-parallel statistics, active only inside data_parallel() ---------------------------------------

_world_size = 1  # > 1 while a data-parallel loop runs


@contextmanager
def data_parallel(ranks: Ranks) -> Iterator[None]:
    """Within this block the batch statistics below combine every rank's slice of the global batch."""
    global _world_size
    previous, _world_size = _world_size, ranks.world_size
    try:
        yield
    finally:
        _world_size = previous


def active() -> bool:
    return _world_size > 1


def global_rows(local_rows: int) -> int:
    """Rows of the global batch (every rank holds an equal slice)."""
    return local_rows * _world_size


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over ranks (a detached fp32-or-wider copy); `value` itself when not data parallel."""
    if not active():
        return value
    total = value.detach().clone() if value.dtype in (torch.float64, torch.int64) else value.detach().float()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_over_ranks(mask: torch.Tensor) -> torch.Tensor:
    if not active():
        return mask
    return sum_over_ranks(mask.to(torch.int64)) > 0


def min_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if not active():
        return value
    smallest = value.detach().float().clone()
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    return smallest.to(value.dtype)


def gather_rows(value_ND: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order: the global batch (used once, to initialise)."""
    if not active():
        return value_ND
    parts = [torch.empty_like(value_ND) for _ in range(_world_size)]
    dist.all_gather(parts, value_ND.contiguous())
    return torch.cat(parts)


def mean_rows(value_ND: torch.Tensor) -> torch.Tensor:
    """The mean over the global batch's rows, detached when data parallel (its gradient through a centred sum
    vanishes anyway: the deviations from a mean sum to zero)."""
    if not active():
        return value_ND.mean(0)
    return (sum_over_ranks(value_ND.sum(0)) / global_rows(value_ND.shape[0])).to(value_ND.dtype)


def centred_square_sum(value_ND: torch.Tensor) -> torch.Tensor:
    """This rank's part of the sum of squared deviations from the global batch's mean."""
    return (value_ND - mean_rows(value_ND)).pow(2).sum()


def ratio_over_ranks(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """sum(numerator) / sum(denominator) over ranks. Its value is the global ratio on every rank; its gradient
    is this rank's share of the global ratio's (quotient rule: dN/D - N dD/D^2), so sum_gradients gives the
    gradient a single process would compute on the whole batch."""
    if not active():
        return numerator / denominator
    totals = sum_over_ranks(torch.stack([numerator.detach().float(), denominator.detach().float()]))
    total_num, total_den = totals[0], totals[1]
    share = numerator / total_den - total_num * denominator / total_den.pow(2)
    return share + (total_num / total_den - share).detach()


def sum_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Add every rank's gradients (shares of one global loss: see ratio_over_ranks), in one flat all-reduce."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def threshold_over_ranks(candidates: torch.Tensor, k: int, dim: int | None = None) -> torch.Tensor:
    """The k-th largest value over every rank's `candidates` (along `dim`, or of all of them).

    Each rank passes at least its own top k (or all it has): the global top k is then among the union, so
    keeping `values >= threshold` selects what one process would select on the global batch (ties aside).
    """
    if dim is None:
        everyone = gather_rows(candidates.reshape(-1)) if active() else candidates.reshape(-1)
        return everyone.topk(min(k, everyone.numel()), sorted=False).values.min()
    everyone = gather_rows(candidates.movedim(dim, 0)) if active() else candidates.movedim(dim, 0)
    return everyone.topk(min(k, everyone.shape[0]), dim=0, sorted=False).values.min(dim=0).values
