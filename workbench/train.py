"""One training loop for every dictionary: batches from the store, checkpoints, exact resume.

Each step: forward, loss = batch FVU + the family's aux loss, backward, remove the decoder
gradient parallel to its rows, Adam, renormalize the decoder rows. A checkpoint (model,
optimizer and dead-latent counters, in safetensors) is written atomically every
`checkpoint_seconds` and at the end. The batch order is a pure function of the seed (see
activation_batches.py), so a run resumed after kill -9 continues exactly where its last
checkpoint stood.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from workbench.dictionaries.base import DictionaryConfig, DictionaryError, SparseCoder, make_dictionary
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

    def save(self, model: SparseCoder, optimizer: torch.optim.Optimizer, tracker: DeadLatentTracker, state: FitState) -> None:
        def write(staging: Path) -> None:
            # The full training state (training-only buffers too), not the SAELens layout of the final dictionary.
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, staging / "model.safetensors")
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
            raise DictionaryError(f"The checkpoint in {folder} is for a different dictionary ({saved['arch']}, "
                                  f"{saved['n_latents']} latents, k={saved['k']}); use a new --name or the original settings.")
        model.load_state_dict(load_file(folder / "model.safetensors"))  # safetensors only: no pickle is ever loaded
        tensors = load_file(folder / "optimizer.safetensors")
        tracker.tokens_since_fired = tensors.pop("dead.tokens_since_fired")
        restore_optimizer(optimizer, model, tensors)
        return FitState(**json.loads((folder / "state.json").read_text()))


# -- checkpoint helpers, shared with the codebook fine-tuning loop ---------------------------------

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
                tensors[f"{names[id(param)]}.{key}"] = torch.as_tensor(value).detach().contiguous().clone()
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    for key, value in tensors.items():
        name, field = key.rsplit(".", 1)
        optimizer.state[params[name]][field] = value


def fit(model: SparseCoder, batches_from: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]], n_steps: int, lr: float,
        dead_window_tokens: int, checkpointer: Checkpointer | None = None, checkpoint_seconds: float = 60.0,
        progress: bool = True, stop_after_steps: int | None = None) -> tuple[FitState, DeadLatentTracker]:
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
        state.target_scale = (model.config.d_out**0.5 / first_y.float().norm(dim=1).mean().clamp_min(1e-12).item()
                              if model.config.transcoder else state.input_scale)
        model.b_dec.data = geometric_median(first_y.float() * state.target_scale)
        batches = _prepend((first_x, first_y), batches)
    bar = tqdm(total=n_steps, initial=state.step, unit="step", disable=not progress, dynamic_ncols=True, desc=model.config.arch)
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
                bar.set_postfix(loss=f"{loss.item():.4f}", fvu=f"{state.last_fvu:.4f}", l0=f"{state.last_l0:.1f}",
                                dead=f"{100 * tracker.dead_fraction():.1f}%")
            if checkpointer and (time.monotonic() - last_checkpoint > checkpoint_seconds or state.step == n_steps):
                checkpointer.save(model, optimizer, tracker, state)
                last_checkpoint = time.monotonic()
            if stop_after_steps is not None and state.step >= stop_after_steps:
                break
    return state, tracker


def _prepend(first, rest: Iterator):
    yield first
    yield from rest


@dataclass
class TrainConfig:
    store: str
    hook: str
    arch: str = "topk"
    k: int = 32
    latents: int = 4608
    tokens: int = 2_000_000
    run: str | None = None  # default: the only run that has the hook
    hook_out: str | None = None  # transcoders: the hook to predict
    skip_connection: bool = False  # transcoders: add a learned linear skip term
    name: str | None = None
    batch_size: int = 4096
    lr: float | None = None  # default: 2e-4 / sqrt(latents / 16384), the scaling of Gao et al.
    seed: int = 0
    dead_window_tokens: int | None = None  # default: min(10M, a quarter of the training tokens)
    checkpoint_seconds: float = 60.0


def canonical_hooks(store, hook: str, hook_out: str | None) -> tuple[str, str | None]:
    """Canonical names for a dictionary's input hook and (transcoders) output hook; legacy aliases accepted."""
    from workbench.hooks import parse_hook

    with store.reader() as con:
        n_layers = con.execute("SELECT max(n_layers) FROM runs").fetchone()[0] or 1
    return parse_hook(hook, n_layers).name, parse_hook(hook_out, n_layers).name if hook_out else None


def resolve_run(store, hook: str, run: str | None) -> str:
    with store.reader() as con:
        runs = [r[0] for r in con.execute("SELECT DISTINCT run FROM hook_points WHERE hook = ? ORDER BY run", [hook]).fetchall()]
    if run is not None:
        return run
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise DictionaryError(f"No run in {store.root} has hook '{hook}'. Harvest it first, e.g. "
                              f"`workbench harvest --model smollm2-135m --hooks {hook} --store {store.root}`.")
    raise DictionaryError(f"Several runs have hook '{hook}' ({', '.join(runs)}); choose one with --run.")


def saelens_metadata(store, run: str, hook: str, hook_out: str | None) -> dict:
    """What SAELens users look for in cfg.json: the model and the hook names, in TransformerLens's spelling."""
    from workbench.hooks import legacy_name

    with store.reader() as con:
        model = con.execute("SELECT model FROM runs WHERE run = ?", [run]).fetchone()[0]
    metadata = {"model_name": model, "hook_name": legacy_name(hook), "workbench_run": run, "workbench_hook": hook}
    if hook_out:
        metadata |= {"hook_name_out": legacy_name(hook_out), "workbench_hook_out": hook_out}
    return metadata


def completed_dictionary(store, name: str) -> dict:
    """The catalog row of a finished dictionary, or an error that says what to do."""
    with store.reader() as con:
        row = con.execute("SELECT run, hook, hook_out, path, status FROM dictionaries WHERE name = ?", [name]).fetchone()
        known = [r[0] for r in con.execute("SELECT name FROM dictionaries ORDER BY name").fetchall()] if row is None else []
    if row is None:
        raise DictionaryError(f"No dictionary '{name}' in the store. Known: {', '.join(known) or 'none (train one first)'}.")
    record = dict(zip(("run", "hook", "hook_out", "path", "status"), row))
    if record["status"] != "complete":
        raise DictionaryError(f"Dictionary '{name}' is still training; run the same `workbench train` command to finish it.")
    return record


def train(config: TrainConfig, progress: bool = True) -> str:
    """Train a dictionary on a store's activations and register it; returns its name. Re-running resumes."""
    from workbench.activation_batches import ActivationBatches
    from workbench.provenance import git_commit, package_version
    from workbench.store import Store, check_run_name, make_run_name

    store = Store.open_existing(config.store)
    hook, hook_out = canonical_hooks(store, config.hook, config.hook_out)
    run = resolve_run(store, hook, config.run)
    data = ActivationBatches(store, run, hook, config.batch_size, config.seed, hook_out=hook_out)
    dictionary_config = DictionaryConfig(arch=config.arch, d_in=data.d_model, n_latents=config.latents, k=config.k,
                                         transcoder=hook_out is not None, skip_connection=config.skip_connection)
    kind = f"{config.arch}-transcoder" if hook_out else config.arch
    name = check_run_name(config.name or make_run_name(kind, hook, f"k{config.k}", str(config.latents)))
    n_steps = config.tokens // config.batch_size
    if n_steps < 1:
        raise DictionaryError(f"--tokens ({config.tokens}) must be at least one batch (--batch-size {config.batch_size}).")
    lr = config.lr or 2e-4 / (config.latents / 16384) ** 0.5
    dead_window = config.dead_window_tokens or min(10_000_000, max(config.tokens // 4, config.batch_size))
    folder = store.root / "dictionaries" / name
    settings = asdict(config) | {"run": run, "hook": hook, "hook_out": hook_out, "lr": lr, "dead_window_tokens": dead_window}
    settings.pop("store")

    with store.reader() as con:
        existing = con.execute("SELECT config, status FROM dictionaries WHERE name = ?", [name]).fetchone()
    if existing:
        previous = json.loads(existing[0])
        differing = [k for k in settings if k != "checkpoint_seconds" and previous.get(k) != settings[k]]
        if differing:
            raise DictionaryError(f"Dictionary '{name}' exists with different settings ({', '.join(differing)}); "
                                  "choose a new --name, or repeat the original arguments to resume it.")
        if existing[1] == "complete":
            return name
    else:
        with store.transaction() as con:
            con.execute(
                "INSERT INTO dictionaries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'training', 0, 0, NULL, NULL, NULL, ?, ?, ?, ?, now(), now())",
                [name, config.arch, run, hook, hook_out, data.d_model, dictionary_config.d_out, config.latents, config.k,
                 str(folder.relative_to(store.root)), dead_window, json.dumps(settings), package_version(), git_commit()])

    torch.manual_seed(config.seed)
    model = make_dictionary(dictionary_config)
    state, tracker = fit(model, data.iterate, n_steps, lr, dead_window, Checkpointer(folder), config.checkpoint_seconds,
                         progress=progress)
    model.fold_scales(state.input_scale, state.target_scale)  # the saved dictionary works on raw activations
    model.save(folder, saelens_metadata(store, run, hook, hook_out))
    with store.transaction() as con:
        con.execute("UPDATE dictionaries SET status = 'complete', steps_done = ?, tokens_done = ?, train_fvu = ?, "
                    "train_l0 = ?, dead_fraction = ?, updated_at = now() WHERE name = ?",
                    [state.step, state.tokens, state.last_fvu, state.last_l0, tracker.dead_fraction(), name])
    return name
