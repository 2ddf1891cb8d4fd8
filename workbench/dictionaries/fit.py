"""The training loop every sparse dictionary shares: batches in, checkpoints out, exact resume.

Each step: forward, loss = batch FVU + the family's aux loss, backward, remove the decoder
gradient parallel to its rows, Adam, renormalize the decoder rows. A checkpoint (model,
optimizer and dead-latent counters, in safetensors) is written atomically every
`checkpoint_seconds` and at the end. The batch order is a pure function of the seed (see
activation_batches.py), so a run resumed after kill -9 continues exactly where its last
checkpoint stood. `workbench train` (workbench/train.py) and the circuit and bench scripts call fit().
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from workbench.checkpoints import optimizer_tensors, readable_folder, restore_optimizer, write_folder_atomically
from workbench.dictionaries.base import SparseCoder
from workbench.errors import DictionaryError
from workbench.metrics import DeadLatentTracker, batch_fvu, l0

CHECKPOINT = "checkpoint"


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
        tracker.tokens_since_fired = tensors.pop("dead.tokens_since_fired")
        restore_optimizer(optimizer, model, tensors)
        return FitState(**json.loads((folder / "state.json").read_text()))


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
) -> tuple[FitState, DeadLatentTracker]:
    """Train `model` for n_steps batches, resuming from a checkpoint if there is one.

    `batches_from(step)` yields (input, target) batches starting at global step `step`.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    tracker = DeadLatentTracker(model.config.n_latents, dead_window_tokens)
    state = (checkpointer.load(model, optimizer, tracker) if checkpointer else None) or FitState()
    batches = batches_from(state.step)
    if state.step == 0:
        first_x, first_y = next(batches)
        state.input_scale = model.config.d_in**0.5 / first_x.float().norm(dim=1).mean().clamp_min(1e-12).item()
        state.target_scale = (
            model.config.output_width**0.5 / first_y.float().norm(dim=1).mean().clamp_min(1e-12).item()
            if model.config.transcoder
            else state.input_scale
        )
        model.b_dec.data = geometric_median(first_y.float() * state.target_scale)
        batches = _prepend((first_x, first_y), batches)
    bar = tqdm(
        total=n_steps, initial=state.step, unit="step", disable=not progress, dynamic_ncols=True, desc=model.config.arch
    )
    last_checkpoint = time.monotonic()
    with bar:
        while state.step < n_steps:
            x_BD, y_BD = next(batches)
            x_BD, y_BD = x_BD.float() * state.input_scale, y_BD.float() * state.target_scale
            output = model(x_BD, dead_F=tracker.dead_mask(), target_BD=y_BD)
            fvu = batch_fvu(y_BD, output.recon_BD)
            loss = fvu + output.aux_loss
            if not torch.isfinite(loss):
                raise DictionaryError(f"The loss became {loss.item()} at step {state.step}; lower the learning rate.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            model.remove_parallel_gradient()
            optimizer.step()
            model.normalize_decoder()
            tracker.update(output.f_BF)
            state.step += 1
            state.tokens += x_BD.shape[0]
            state.last_fvu, state.last_l0 = fvu.item(), l0(output.f_BF)
            bar.update(1)
            if state.step % 10 == 0 or state.step == n_steps:
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    fvu=f"{state.last_fvu:.4f}",
                    l0=f"{state.last_l0:.1f}",
                    dead=f"{100 * tracker.dead_fraction():.1f}%",
                )
            if checkpointer and (time.monotonic() - last_checkpoint > checkpoint_seconds or state.step == n_steps):
                checkpointer.save(model, optimizer, tracker, state)
                last_checkpoint = time.monotonic()
            if stop_after_steps is not None and state.step >= stop_after_steps:
                break
    return state, tracker


def _prepend(first, rest: Iterator):
    yield first
    yield from rest
