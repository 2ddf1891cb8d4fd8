"""The training loop every sparse dictionary shares: batches in, checkpoints out, exact resume.

Each step: forward, loss = batch FVU + the family's aux loss, backward, remove the decoder
gradient parallel to its rows, Adam, renormalize the decoder rows. A checkpoint (model,
optimizer and dead-latent counters, in safetensors) is written atomically every
`checkpoint_seconds` and at the end. The batch order is a pure function of the seed (see
activation_batches.py), so a run resumed after kill -9 continues exactly where its last
checkpoint stood. `workbench train` (workbench/train.py) and the circuit and bench scripts call fit().

`fit_group` trains several dictionaries on one stream of batches (SAELens's MultiSAETrainingRunner,
sparsify's all-layers training): each batch is read and moved to the device once, and each member takes
its step exactly as it would alone, so a member equals the same dictionary trained by itself.
On a GPU the loop reads the loss back to the host only every `LOG_EVERY` steps (a `.item()` per step
would make the host wait for every kernel), so data loading overlaps the device's work.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from workbench import distributed
from workbench.checkpoints import optimizer_tensors, readable_folder, restore_optimizer, write_folder_atomically
from workbench.devices import Placement
from workbench.dictionaries.base import SparseCoder
from workbench.distributed import SINGLE, Ranks
from workbench.errors import DictionaryError
from workbench.metrics import DeadLatentTracker, batch_fvu

CHECKPOINT = "checkpoint"
LOG_EVERY = 10  # steps between host reads of the loss (progress bar, non-finite check)


@torch.no_grad()
def geometric_median(points_ND: torch.Tensor, iterations: int = 50, tolerance: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances, robust to outliers (init for b_dec)."""
    median = points_ND.mean(0)
    for _ in range(iterations):
        weights = 1 / (points_ND - median).norm(dim=1).clamp_min(1e-8)
        updated = (weights[:, None] * points_ND).sum(0) / weights.sum()
        if (updated - median).norm() < tolerance * median.norm().clamp_min(1e-8):
            return updated
        median = updated
    return median


@dataclass
class FitState:
    step: int = 0
    tokens: int = 0
    last_fvu: float = float("nan")
    last_l0: float = float("nan")
    # Training runs on inputs and targets scaled to a mean norm of sqrt(d), fixed from the first
    # batch: learning rates then mean the same for any layer or model, and a transcoder whose
    # MLP output is 1000x smaller than its input trains like an SAE. save() folds them back.
    input_scale: float = 1.0
    target_scale: float = 1.0


@dataclass
class LoopTiming:
    """Seconds one fit_group call spent waiting for its next batch (reading, decoding, copying to the device),
    and in all: their ratio is the share of time the device waited for data."""

    data_wait_s: float = 0.0
    wall_s: float = 0.0

    @property
    def data_wait_share(self) -> float:
        return self.data_wait_s / max(self.wall_s, 1e-9)


class Checkpointer:
    """Atomic checkpoints in `folder/checkpoint`: written to a temporary folder, then swapped in."""

    def __init__(self, folder: Path):
        self.folder = folder

    def save(
        self, model: SparseCoder, optimizer: torch.optim.Optimizer, tracker: DeadLatentTracker, state: FitState
    ) -> None:
        def write(staging: Path) -> None:
            # The full training state (training-only buffers too), not the SAELens layout of the final dictionary.
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, staging / "model.safetensors"
            )
            (staging / "cfg.json").write_text(json.dumps(asdict(model.config)))
            tensors = {"dead.tokens_since_fired": tracker.tokens_since_fired} | optimizer_tensors(optimizer, model)
            save_file(tensors, staging / "optimizer.safetensors")
            (staging / "state.json").write_text(json.dumps(asdict(state)))

        write_folder_atomically(self.folder / CHECKPOINT, write)

    def load(self, model: SparseCoder, optimizer: torch.optim.Optimizer, tracker: DeadLatentTracker) -> FitState | None:
        folder = readable_folder(self.folder / CHECKPOINT)
        if folder is None:
            return None
        saved = json.loads((folder / "cfg.json").read_text())
        if saved != asdict(model.config):
            raise DictionaryError(
                f"The checkpoint in {folder} is for a different dictionary ({saved['arch']}, "
                f"{saved['n_latents']} latents, k={saved['k']}); "
                "use a new --name or the original settings."
            )
        model.load_state_dict(load_file(folder / "model.safetensors"))  # safetensors only: no pickle is ever loaded
        tensors = load_file(folder / "optimizer.safetensors")
        tracker.tokens_since_fired = tensors.pop("dead.tokens_since_fired").to(tracker.tokens_since_fired.device)
        restore_optimizer(optimizer, model, tensors)
        return FitState(**json.loads((folder / "state.json").read_text()))


@dataclass
class Member:
    """One dictionary of a group: its model, its schedule, and which batch tensors it reads."""

    model: SparseCoder
    n_steps: int
    lr: float
    dead_window_tokens: int
    input_key: str = "x"
    target_key: str = "y"
    checkpointer: Checkpointer | None = None
    label: str = ""
    # Set by fit_group:
    optimizer: torch.optim.Optimizer | None = None
    tracker: DeadLatentTracker | None = None
    state: FitState = field(default_factory=FitState)
    last_loss: torch.Tensor | None = None  # on the device; read back every LOG_EVERY steps
    last_fvu: torch.Tensor | None = None
    last_l0: torch.Tensor | None = None


def fit(
    model: SparseCoder,
    batches_from: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    n_steps: int,
    lr: float,
    dead_window_tokens: int,
    checkpointer: Checkpointer | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    stop_after_steps: int | None = None,
    autocast_dtype: torch.dtype = torch.float32,
) -> tuple[FitState, DeadLatentTracker]:
    """Train `model` (on its own device) for n_steps batches, resuming from a checkpoint if there is one.

    `batches_from(step)` yields (input, target) batches starting at global step `step`.
    """
    member = Member(model, n_steps, lr, dead_window_tokens, checkpointer=checkpointer, label=model.config.arch)

    def as_dicts(step: int) -> Iterator[dict[str, torch.Tensor]]:
        for x, y in batches_from(step):
            yield {"x": x, "y": y}

    fit_group([member], as_dicts, checkpoint_seconds, progress, stop_after_steps, autocast_dtype)
    assert member.tracker is not None
    return member.state, member.tracker


def fit_group(
    members: list[Member],
    batches_from: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    stop_after_steps: int | None = None,
    autocast_dtype: torch.dtype = torch.float32,
    data_parallel: Ranks = SINGLE,
) -> LoopTiming:
    """Train every member on one stream of batches; each resumes from its own checkpoint.

    `batches_from(step)` yields dicts of tensors (by hook) from global step `step`, on any device: each is
    moved to the members' device once. Members may stand at different steps after a kill; the stream
    starts at the earliest, and a member takes only the batches from its own step on.

    With `data_parallel` ranks (torchrun), each process's batches are its slice of the global batch, the
    statistics and gradients combine every rank's (workbench/distributed.py), and only rank 0 writes
    checkpoints. Every rank loads the same checkpoint, so a resume may use a different number of ranks.
    """
    device = members[0].model.b_dec.device
    for member in members:
        member.optimizer = torch.optim.Adam(member.model.parameters(), lr=member.lr)
        member.tracker = DeadLatentTracker(member.model.config.n_latents, member.dead_window_tokens, device)
        loaded = (
            member.checkpointer.load(member.model, member.optimizer, member.tracker) if member.checkpointer else None
        )
        member.state = loaded or FitState()
    active = [m for m in members if m.state.step < m.n_steps]
    if not active:
        return LoopTiming()
    step = min(m.state.step for m in active)
    total = max(m.n_steps for m in members)
    keys = sorted({key for m in members for key in (m.input_key, m.target_key)})
    batches = batches_from(step)
    placement = Placement(device, autocast_dtype)
    bar = tqdm(
        total=total,
        initial=step,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        desc=members[0].label if len(members) == 1 else f"{len(members)} dictionaries",
    )
    started = last_checkpoint = time.monotonic()
    data_wait = 0.0
    with bar, distributed.data_parallel(data_parallel):
        while active:
            waited = time.monotonic()
            batch = next(batches)
            batch = {key: batch[key].to(device, non_blocking=True) for key in keys}
            data_wait += time.monotonic() - waited
            for member in active:
                if member.state.step == step:
                    with placement.autocast():
                        _train_step(member, batch[member.input_key], batch[member.target_key])
            step += 1
            bar.update(1)
            finished = [m for m in active if m.state.step >= m.n_steps]
            due = time.monotonic() - last_checkpoint > checkpoint_seconds
            if step % LOG_EVERY == 0 or finished or due:
                _read_back(active, bar)  # raises on a non-finite loss before any checkpoint keeps it
            for member in active:
                if member.checkpointer and (due or member in finished) and data_parallel.is_main:
                    assert member.optimizer is not None and member.tracker is not None  # set above
                    member.checkpointer.save(member.model, member.optimizer, member.tracker, member.state)
            if due:
                last_checkpoint = time.monotonic()
            active = [m for m in active if m not in finished]
            if stop_after_steps is not None and step >= stop_after_steps:
                break
    _read_back(members, None)
    return LoopTiming(data_wait, time.monotonic() - started)


def _train_step(member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
    model, state = member.model, member.state
    assert member.optimizer is not None and member.tracker is not None  # set by fit_group
    if state.step == 0:  # the first batch fixes the input scaling and initialises b_dec
        with torch.autocast(x_BD.device.type, enabled=False):
            # Data parallel: from the whole global batch, so every rank starts identical to one process.
            first_x, first_y = distributed.gather_rows(x_BD.float()), distributed.gather_rows(y_BD.float())
            state.input_scale = model.config.d_in**0.5 / first_x.norm(dim=1).mean().clamp_min(1e-12).item()
            state.target_scale = (
                model.config.output_width**0.5 / first_y.norm(dim=1).mean().clamp_min(1e-12).item()
                if model.config.transcoder
                else state.input_scale
            )
            model.b_dec.data = geometric_median(first_y * state.target_scale)
    x_BD, y_BD = x_BD.float() * state.input_scale, y_BD.float() * state.target_scale
    output = model(x_BD, dead_F=member.tracker.dead_mask(), target_BD=y_BD)
    fvu = batch_fvu(y_BD, output.recon_BD.float())  # fp32 whatever the autocast precision
    loss = fvu + output.aux_loss.float()
    member.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.sum_gradients(list(model.parameters()))  # each rank's share of the global loss's gradient
    model.remove_parallel_gradient()
    member.optimizer.step()
    model.normalize_decoder()
    member.tracker.update(output.f_BF)
    state.step += 1
    state.tokens += distributed.global_rows(x_BD.shape[0])
    member.last_loss, member.last_fvu = loss.detach(), fvu.detach()
    member.last_l0 = distributed.mean_rows((output.f_BF != 0).sum(-1, keepdim=True).float())[0]


def _read_back(members: list[Member], bar) -> None:
    """Copy the members' last loss, FVU and L0 to the host: the progress bar, the state, the non-finite check."""
    shown = {}
    for member in members:
        if member.last_loss is None:
            continue
        loss = member.last_loss.item()
        if not math.isfinite(loss):
            raise DictionaryError(
                f"The loss{' of ' + member.label if member.label else ''} became {loss} near step "
                f"{member.state.step}; lower the learning rate."
            )
        assert member.last_fvu is not None and member.last_l0 is not None and member.tracker is not None
        member.state.last_fvu, member.state.last_l0 = member.last_fvu.item(), member.last_l0.item()
        shown[member.label] = (loss, member.state.last_fvu, member.state.last_l0, member.tracker.dead_fraction())
    if bar is not None and shown:
        if len(shown) == 1:
            loss, fvu, l0_value, dead = next(iter(shown.values()))
            bar.set_postfix(loss=f"{loss:.4f}", fvu=f"{fvu:.4f}", l0=f"{l0_value:.1f}", dead=f"{100 * dead:.1f}%")
        else:  # a group: the spread over its members
            fvus = [v[1] for v in shown.values()]
            bar.set_postfix(
                fvu=f"{min(fvus):.4f}-{max(fvus):.4f}", dead=f"{100 * max(v[3] for v in shown.values()):.1f}%"
            )
