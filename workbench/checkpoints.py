"""Checkpoint helpers shared by the dictionary training loop (dictionaries/fit.py) and the codebook
fine-tuning loop: folders replaced atomically, and optimizer state as flat safetensors.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch


def write_folder_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """`write(staging)` fills a temporary folder, which then replaces `final`; a kill at any point leaves
    either the old folder or the new one readable (see readable_folder)."""
    staging, old = final.parent / f".{final.name}.tmp", final.parent / f".{final.name}.old"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def readable_folder(final: Path) -> Path | None:
    """The folder write_folder_atomically last completed, or None if there is none."""
    old = final.parent / f".{final.name}.old"
    if not final.exists() and old.exists():
        return old  # killed between the two renames
    return final if final.exists() else None


def optimizer_tensors(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat named tensors (safetensors holds no pickles)."""
    names = {id(p): n for n, p in module.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state[param].items():
                tensors[f"{names[id(param)]}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu().clone()
    return tensors


def restore_optimizer(
    optimizer: torch.optim.Optimizer, module: torch.nn.Module, tensors: dict[str, torch.Tensor]
) -> None:
    params = dict(module.named_parameters())
    for key, value in tensors.items():
        name, field = key.rsplit(".", 1)
        # Adam keeps its step counter on the host (unless fused/capturable) and its moments beside the parameter.
        optimizer.state[params[name]][field] = value if field == "step" else value.to(params[name].device)
