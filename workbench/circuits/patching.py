"""Activation patching: the reference circuit that attribution graphs and discrete codes are scored against.

Denoising, as in Wang et al. and TransformerLens's patching utilities: run the corrupted
prompts with one activation taken from the clean run, and report how much of the clean
behaviour it restores,

    score = (metric_patched - metric_corrupted) / (metric_clean - metric_corrupted),

with each metric averaged over the prompt pairs first. 1 means that activation alone carries
the difference; 0 means it carries none of it.

Levels:
    layers          the residual stream entering each block (blocks.{l}.hook_in), per position
    heads           one attention head's output (its slice of blocks.{l}.attn.hook_z), all positions
    head-positions  one head at one position

Many patches share one forward pass: the corrupted batch is repeated once per patch and each
copy gets its own mask, so a layer of 9 heads costs one pass of 9 x pairs prompts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from workbench.circuits.results import circuit_record
from workbench.circuits.tasks import TaskError, TokenizedTask, load_task, metric_values, tokenize_task
from workbench.devices import resolve_placement
from workbench.hooks import HookPoint
from workbench.models import load_hf_model, make_backend, resolve_model_dir
from workbench.models.backends import Backend, Patch
from workbench.models.families import attention_heads
from workbench.store import Store, check_run_name, make_run_name
from workbench.store.analyses import replace_circuit_run
from workbench.store.records import CircuitRunRecord

LEVELS = ("layers", "heads", "head-positions")


@dataclass
class PatchScore:
    level: str
    layer: int
    head: int | None
    position: int | None
    metric: float  # mean metric of the patched run
    score: float  # normalised as above


@dataclass
class LevelScores:
    """Every patch of one level, with the clean and corrupted metrics its scores are normalised by."""

    metric_clean: float
    metric_corrupted: float
    scores: list[PatchScore]


def _final_metric(backend: Backend, ids: torch.Tensor, task: TokenizedTask, patch: Patch | None = None) -> torch.Tensor:
    all_logits = backend.run(ids, [], logits=True, patch=patch).logits
    assert all_logits is not None  # asked for
    logits = all_logits[:, -1]
    repeats = len(ids) // len(task.answer_ids)
    return metric_values(
        logits, task.answer_ids.repeat(repeats, 1), task.wrong_ids.repeat(repeats, 1), task.task.metric
    )


def task_metrics(backend: Backend, task: TokenizedTask) -> tuple[float, float]:
    """The mean metric on the clean and on the corrupted prompts; an error if they do not differ."""
    metric_clean = _final_metric(backend, task.clean_ids, task).mean().item()
    metric_corrupted = _final_metric(backend, task.corrupted_ids, task).mean().item()
    if abs(metric_clean - metric_corrupted) < 1e-6:
        raise TaskError(
            f"The model scores the clean and corrupted prompts the same ({task.task.metric} "
            f"{metric_clean:.4f}), so there is no behaviour to localise. Check the prompts and answers."
        )
    return metric_clean, metric_corrupted


def _variants(level: str, n_heads: int, seq_len: int) -> list[tuple[int | None, int | None]]:
    """(head, position) of each patch within one layer."""
    if level == "layers":
        return [(None, p) for p in range(seq_len)]
    if level == "heads":
        return [(h, None) for h in range(n_heads)]
    return [(h, p) for h in range(n_heads) for p in range(seq_len)]


def _mask(variants: list[tuple[int | None, int | None]], seq_len: int, width: int, d_head: int) -> torch.Tensor:
    """[variants, seq, width]: True where variant v takes the clean value."""
    mask = torch.zeros(len(variants), seq_len, width, dtype=torch.bool)
    for v, (head, position) in enumerate(variants):
        rows = slice(None) if position is None else slice(position, position + 1)
        cols = slice(None) if head is None else slice(head * d_head, (head + 1) * d_head)
        mask[v, rows, cols] = True
    return mask


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def patch_task(
    backend: Backend,
    task: TokenizedTask,
    level: str,
    layers: list[int] | None = None,
    max_batch: int = 256,
    progress: bool = True,
    metrics: tuple[float, float] | None = None,
) -> LevelScores:
    """Patch every (layer, head/position) of `level`; `metrics` (clean, corrupted) saves their passes when known."""
    if level not in LEVELS:
        raise TaskError(f"Unknown patching level '{level}'; choose from {', '.join(LEVELS)}.")
    layers = list(range(backend.n_layers)) if layers is None else layers
    bad = [layer for layer in layers if not 0 <= layer < backend.n_layers]
    if bad:
        raise TaskError(f"Layers {bad} do not exist: the model has layers 0 to {backend.n_layers - 1}.")
    clean, corrupted = task.clean_ids, task.corrupted_ids
    metric_clean, metric_corrupted = metrics or task_metrics(backend, task)

    kind = "hook_in" if level == "layers" else "attn.hook_z"
    points = [HookPoint(layer, kind) for layer in layers]
    clean_acts = backend.run(clean, points).acts
    n_heads, d_head = attention_heads(backend.hf_model)
    variants = _variants(level, n_heads, task.seq_len)
    n_pairs = len(clean)
    per_pass = max(1, max_batch // n_pairs)

    scores = []
    bar = tqdm(
        total=len(layers) * len(variants), desc=f"patch {level}", unit="patch", disable=not progress, dynamic_ncols=True
    )
    with bar:
        for point in points:
            clean_act = clean_acts[point]
            for group in _chunks(variants, per_pass):
                mask = _mask(group, task.seq_len, clean_act.shape[-1], d_head).to(clean_act.device)
                # Copies are laid out variant-major: rows v*n_pairs .. (v+1)*n_pairs-1 belong to variant v.
                mask_rows = mask.repeat_interleave(n_pairs, dim=0)
                source = clean_act.repeat(len(group), 1, 1)

                def take_clean(act: torch.Tensor, mask_rows=mask_rows, source=source) -> torch.Tensor:
                    return torch.where(mask_rows, source.to(act.dtype), act)

                values = _final_metric(backend, corrupted.repeat(len(group), 1), task, Patch(point, take_clean))
                for v, (head, position) in enumerate(group):
                    patched = values[v * n_pairs : (v + 1) * n_pairs].mean().item()
                    scores.append(
                        PatchScore(
                            level,
                            point.layer,
                            head,
                            position,
                            patched,
                            (patched - metric_corrupted) / (metric_clean - metric_corrupted),
                        )
                    )
                bar.update(len(group))
    return LevelScores(metric_clean, metric_corrupted, scores)


# -- running it on a store ----------------------------------------------------------------------


@dataclass
class PatchingConfig:
    task: str
    """ioi, greater-than or PATH.jsonl (lines of {"clean", "corrupted", "answer", "wrong"})."""
    model: str
    """Registry name, local HF folder or hub id."""
    store: str
    """The store directory (created if missing)."""
    levels: list[str] = field(default_factory=lambda: ["layers", "heads"])
    """Levels to patch: layers, heads, head-positions."""
    pairs: int = 16
    """Prompt pairs for ioi and greater-than."""
    layers: list[int] | None = None
    """Layers to patch (default: all)."""
    backend: str = "nnsight"
    """How activations are read and patched: one of workbench.models.BACKENDS."""
    name: str | None = None
    """Circuit run name; re-using one replaces its results."""
    seed: int = 0
    """Seed for the built-in tasks' names and numbers."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""


@dataclass
class PatchingResult:
    """A stored patching run: its catalog record, and the scores of each level (also in circuit_patching)."""

    circuit_run: CircuitRunRecord
    levels: dict[str, LevelScores]


def run_patching(config: PatchingConfig, *, progress: bool = True) -> PatchingResult:
    """Patch every requested level and store the scores under one circuit run."""
    unknown = [level for level in config.levels if level not in LEVELS]
    if unknown:
        raise TaskError(f"Unknown patching level {unknown}; choose from {', '.join(LEVELS)}.")
    placement = resolve_placement(config.device, config.dtype)
    store = Store.create_or_open(config.store)
    hf_model, tokenizer = load_hf_model(resolve_model_dir(config.model, store.root / "models"), placement)
    task = tokenize_task(load_task(config.task, tokenizer, config.pairs, config.seed), tokenizer).to(placement.device)
    backend = make_backend(config.backend, hf_model, tokenizer)
    started = time.perf_counter()
    metrics = task_metrics(backend, task)  # once for every level
    results = {
        level: patch_task(backend, task, level, config.layers, progress=progress, metrics=metrics)
        for level in config.levels
    }
    wall_s = time.perf_counter() - started
    name = check_run_name(config.name or make_run_name("patch", task.task.name, str(config.model).split("/")[-1]))
    rows = [(s.level, s.layer, s.head, s.position, s.metric, s.score) for r in results.values() for s in r.scores]
    record = circuit_record(
        name, "patching", task, config.model, config.backend, metrics, wall_s, asdict(config), placement=placement
    )
    return PatchingResult(replace_circuit_run(store, record, {"circuit_patching": rows}), results)
