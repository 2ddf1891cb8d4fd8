"""Fine-tuning a model with codebook bottlenecks in place: the loop, its checkpoints, and saved codebooks.

Loss = LM loss + recon_coefficient * sum over sites of the relative reconstruction error
||x - codes||^2 / ||x||^2 (relative, so one coefficient suits every site and model).

Two learning rates. The codebooks learn at `codebook_lr`; the model's own weights at `model_lr`,
much lower (0 freezes them). The straight-through gradient that reaches the layers below a
bottleneck is only an estimate, and at a shared rate it wrecks the model: on TokFSM (2 layers,
4 sites, 64 codes, k=1, 300 steps) one rate of 1e-3 took next-state accuracy from 0.93 after
k-means to 0.18, 1e-4 to 0.60, while codebooks at 1e-3 with the model at 3e-5 reached 0.997.

A checkpoint (codebooks, trained model weights, optimizer, state) is written atomically every
`checkpoint_seconds` and at the end, with the same helpers as the dictionary trainer. Batches
are a pure function of the step, so a run resumed after kill -9 goes on exactly where its last
checkpoint stood.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from workbench.checkpoints import optimizer_tensors, readable_folder, restore_optimizer, write_folder_atomically
from workbench.codebooks.attach import CodebookModel
from workbench.dictionaries.codebook import CodebookError

CHECKPOINT = "checkpoint"


@dataclass
class FinetuneSettings:
    codebook_lr: float = 1e-3
    """The codebooks' learning rate."""
    model_lr: float = 3e-5
    """The model's own learning rate; 0 freezes it (only the codebooks learn)."""
    recon_coefficient: float = 0.1
    """Weight of the relative reconstruction error in the loss."""
    dead_window_tokens: int = 0
    """Re-seed codes unused for this many tokens from recent activations; 0 never does."""
    checkpoint_seconds: float = 60.0
    """Seconds between checkpoints; rerun the same command to resume from the last one."""


@dataclass
class FinetuneState:
    step: int = 0
    tokens: int = 0
    last_lm_loss: float = float("nan")
    last_recon: float = float("nan")  # mean relative reconstruction error over the sites
    codes_replaced: int = 0


def model_fingerprint(hf_model: Any) -> str:  # a HF model: config fields are per-architecture
    """A hash of the base model's shape and token embedding: a codebook only fits the model it was trained on."""
    config = hf_model.config
    digest = hashlib.sha256(
        json.dumps([config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size]).encode()
    )
    digest.update(hf_model.get_input_embeddings().weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def codebook_identity(coded: CodebookModel, fingerprint: str) -> dict:
    """What a checkpoint or saved codebook must match before it is loaded into `coded`."""
    first = coded.bottleneck(coded.sites[0])
    return {
        "model_fingerprint": fingerprint,
        "sites": coded.sites,
        "n_codes": first.n_codes,
        "k": first.k,
        "reduce": first.reduce,
    }


def check_identity(saved: dict, expected: dict, where: Path) -> None:
    if saved.get("model_fingerprint") != expected["model_fingerprint"]:
        raise CodebookError(
            f"The codebooks in {where} were trained on another model (fingerprint "
            f"{saved.get('model_fingerprint')}, this model is {expected['model_fingerprint']}). "
            "Load them with the model they were trained on, or train new ones with a new --name."
        )
    differing = [key for key in expected if saved.get(key) != expected[key]]
    if differing:
        raise CodebookError(
            f"The codebooks in {where} differ in {', '.join(differing)} "
            f"(saved: {', '.join(f'{k}={saved.get(k)}' for k in differing)}); "
            "repeat the original settings to resume, or choose a new --name."
        )


def _trained_state(coded: CodebookModel, train_model: bool) -> dict[str, torch.Tensor]:
    """The codebooks (and their usage counters), plus the model's weights when it is being fine-tuned."""
    state, seen = {}, set()
    for key, value in coded.state_dict().items():
        if not (key.startswith("bottlenecks.") or train_model):
            continue
        if value.data_ptr() in seen:  # a tied weight (lm_head = embedding): safetensors stores each tensor once
            continue
        seen.add(value.data_ptr())
        state[key] = value.detach().contiguous().cpu()
    return state


def finetune(
    coded: CodebookModel,
    batch_at: Callable[[int], torch.Tensor],
    n_steps: int,
    settings: FinetuneSettings,
    identity: dict,
    folder: Path | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> FinetuneState:
    """Fine-tune `coded` for n_steps batches (`batch_at(step)` gives the token ids [batch, seq] of a step),
    resuming from the checkpoint in `folder` if there is one."""
    train_model = settings.model_lr > 0
    for param in coded.hf_model.parameters():
        param.requires_grad_(train_model)
    groups = [{"params": list(coded.bottlenecks.parameters()), "lr": settings.codebook_lr}]
    if train_model:
        groups.append({"params": list(coded.hf_model.parameters()), "lr": settings.model_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    state = FinetuneState()
    checkpoint = readable_folder(folder / CHECKPOINT) if folder else None
    if checkpoint is not None:
        check_identity(json.loads((checkpoint / "identity.json").read_text()), identity, checkpoint)
        coded.load_state_dict(load_file(checkpoint / "trained.safetensors"), strict=False)
        restore_optimizer(optimizer, coded, load_file(checkpoint / "optimizer.safetensors"))
        state = FinetuneState(**json.loads((checkpoint / "state.json").read_text()))

    def save_checkpoint() -> None:
        assert folder is not None  # checkpoints are saved only when there is a folder

        def write(staging: Path) -> None:
            save_file(_trained_state(coded, train_model), staging / "trained.safetensors")
            save_file(optimizer_tensors(optimizer, coded), staging / "optimizer.safetensors")
            (staging / "identity.json").write_text(json.dumps(identity))
            (staging / "state.json").write_text(json.dumps(asdict(state)))

        write_folder_atomically(folder / CHECKPOINT, write)

    bar = tqdm(
        total=n_steps, initial=state.step, unit="step", desc="codebooks", disable=not progress, dynamic_ncols=True
    )
    last_checkpoint = time.monotonic()
    coded.train()
    with bar:
        while state.step < n_steps:
            ids = batch_at(state.step)
            lm_loss = coded(ids, labels=ids).loss
            recon = torch.stack(
                [
                    coded.recon_losses[site] / coded.inputs[site].pow(2).sum(-1).mean().clamp_min(1e-12)
                    for site in coded.sites
                ]
            ).mean()
            loss = lm_loss + settings.recon_coefficient * recon
            if not torch.isfinite(loss):
                raise CodebookError(
                    f"The loss became {loss.item()} at step {state.step}; lower --codebook-lr or --model-lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if settings.dead_window_tokens:
                for site in coded.sites:
                    recent = coded.inputs[site].reshape(-1, coded.inputs[site].shape[-1])
                    state.codes_replaced += coded.bottleneck(site).replace_dead(
                        recent, settings.dead_window_tokens, seed=state.step
                    )
            state.step += 1
            state.tokens += ids.numel()
            state.last_lm_loss, state.last_recon = lm_loss.item(), recon.item()
            bar.update(1)
            bar.set_postfix(lm=f"{state.last_lm_loss:.3f}", recon=f"{state.last_recon:.3f}")
            if folder and (time.monotonic() - last_checkpoint > settings.checkpoint_seconds or state.step == n_steps):
                save_checkpoint()
                last_checkpoint = time.monotonic()
            if stop_after_steps is not None and state.step >= stop_after_steps:
                break
    coded.eval()
    return state


def save_codebooks(coded: CodebookModel, folder: Path, identity: dict, train_model: bool) -> None:
    """The finished codebooks: codebooks.safetensors, identity.json, and model.safetensors when the model was tuned."""

    def write(staging: Path) -> None:
        state = _trained_state(coded, train_model)
        save_file({k: v for k, v in state.items() if k.startswith("bottlenecks.")}, staging / "codebooks.safetensors")
        if train_model:
            save_file(
                {k.removeprefix("hf_model."): v for k, v in state.items() if k.startswith("hf_model.")},
                staging / "model.safetensors",
            )
        (staging / "identity.json").write_text(json.dumps(identity))

    write_folder_atomically(folder / "final", write)


def load_codebooks(coded: CodebookModel, folder: Path, identity: dict) -> None:
    """Load saved codebooks (and fine-tuned weights) into `coded`, after checking they belong to this model."""
    final = readable_folder(folder / "final")
    if final is None:
        raise CodebookError(
            f"No finished codebooks in {folder}; run the same `workbench codebook train` command to finish them."
        )
    check_identity(json.loads((final / "identity.json").read_text()), identity, final)
    coded.load_state_dict(load_file(final / "codebooks.safetensors"), strict=False)
    if (final / "model.safetensors").exists():
        # strict=False because a tied weight is saved once; its twin shares the loaded tensor.
        unexpected = coded.hf_model.load_state_dict(
            load_file(final / "model.safetensors"), strict=False
        ).unexpected_keys
        if unexpected:
            raise CodebookError(f"{final}/model.safetensors holds weights this model does not have ({unexpected[:3]}).")


@torch.no_grad()
def mean_lm_loss(coded: CodebookModel, contexts: torch.Tensor, batch_size: int, codebooks: bool) -> float:
    """Mean next-token loss over `contexts`, with the codebooks in place or bypassed."""
    was_enabled, coded.enabled = coded.enabled, codebooks
    coded.eval()
    try:
        total, count = 0.0, 0
        for start in range(0, len(contexts), batch_size):
            ids = contexts[start : start + batch_size]
            total += coded(ids, labels=ids).loss.item() * ids[:, 1:].numel()
            count += ids[:, 1:].numel()
    finally:
        coded.enabled = was_enabled
    return total / max(count, 1)
