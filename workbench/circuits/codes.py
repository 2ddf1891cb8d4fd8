"""Circuit finding from discrete SAE codes (O'Neill & Bui 2024, charlieoneill11/sae-circuits).

1. Run the task's positive (clean) and negative (corrupted) prompts and take every attention
   head's write to the residual stream, z_h @ W_O[h], averaged over the positions after BOS.
2. Train one small sparse dictionary on those vectors from a handful of prompts (all heads
   share it), through the workbench's one training loop.
3. Turn each (prompt, head) vector into a discrete code: the index of its largest latent.
4. Score each head by how many codes appear only among the positives, and each pair of heads
   by how many (code, code) co-occurrences appear only among the positives.
5. With a reference circuit from activation patching, report the ROC AUC of the head scores
   (a head is in the reference if its patching score reaches the threshold) and of the pair
   scores (a pair is in it if both heads are).

Everything costs one forward pass per prompt plus a few seconds of training, against one
pass per patched head for patching; `bench/circuits.py` measures the two side by side.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.circuits.patching import task_metrics
from workbench.circuits.results import circuit_record
from workbench.circuits.tasks import TaskError, TokenizedTask, load_task, tokenize_task
from workbench.devices import resolve_placement
from workbench.hooks import HookPoint
from workbench.models import load_hf_model, make_backend, resolve_model_dir
from workbench.models.backends import Backend
from workbench.models.families import attention_heads, decoder_layers, family_of, output_weights
from workbench.store import Store, check_run_name, make_run_name
from workbench.store.analyses import (
    PATCHING_RUNS_QUERY,
    head_scores,
    newest_patching_run,
    patching_run,
    replace_circuit_run,
)
from workbench.store.records import CircuitRunRecord

POSITIONS = ("mean", "last")


@dataclass
class CodeScores:
    head_scores: np.ndarray  # [layers, heads]: codes unique to positives
    pair_scores: np.ndarray  # [layers * heads, layers * heads], upper triangle: co-occurrences unique to positives
    codes: np.ndarray  # [prompts, layers * heads]: positives first, then negatives
    n_positive: int
    train_fvu: float
    wall_s: float


@torch.no_grad()
def head_writes(backend: Backend, ids: torch.Tensor, position: str = "last", batch_size: int = 16) -> torch.Tensor:
    """[prompts, layers * heads, d_model]: each head's output projected into the residual stream, averaged over the
    positions after BOS (position="mean", the paper's choice) or at the last position ("last")."""
    n_heads, d_head = attention_heads(backend.hf_model)
    blocks = decoder_layers(backend.hf_model)
    family = family_of(backend.hf_model)
    # [d_model, n_heads * d_head] each
    projections = [output_weights(getattr(block, family.attention), family)[0] for block in blocks]
    points = [HookPoint(layer, "attn.hook_z") for layer in range(backend.n_layers)]
    out = []
    for start in range(0, len(ids), batch_size):
        acts = backend.capture(ids[start : start + batch_size], points)
        per_layer = []
        for point, W_O in zip(points, projections):
            z = acts[point][:, 1:].float().mean(1) if position == "mean" else acts[point][:, -1].float()
            z = z.reshape(-1, n_heads, d_head)
            per_layer.append(torch.einsum("bhd,mhd->bhm", z, W_O.float().reshape(-1, n_heads, d_head)))
        out.append(torch.cat(per_layer, dim=1))
    return torch.cat(out).cpu()  # [prompts, heads, d_model] is small: the code dictionary trains on the host


def _train_code_dictionary(vectors: torch.Tensor, n_latents: int, k: int, steps: int, seed: int):
    from workbench.dictionaries import DictionaryConfig, make_dictionary
    from workbench.dictionaries.fit import fit

    torch.manual_seed(seed)
    model = make_dictionary(DictionaryConfig(arch="topk", d_in=vectors.shape[1], n_latents=n_latents, k=k))
    generator = torch.Generator().manual_seed(seed)
    batch = min(256, len(vectors))

    def batches_from(step: int):
        while True:
            rows = torch.randint(0, len(vectors), (batch,), generator=generator)
            yield vectors[rows], vectors[rows]

    state, _ = fit(model, batches_from, steps, lr=1e-3, dead_window_tokens=batch * 50, progress=False)
    model.fold_scales(state.input_scale, state.target_scale)
    return model.eval(), state.last_fvu


def _unique_to_positives(positive: np.ndarray, negative: np.ndarray) -> int:
    return len(set(positive.tolist()) - set(negative.tolist()))


def score_codes(codes: np.ndarray, n_positive: int, n_layers: int, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
    positive, negative = codes[:n_positive], codes[n_positive:]
    units = codes.shape[1]
    heads = np.array([_unique_to_positives(positive[:, u], negative[:, u]) for u in range(units)], dtype=float)
    pairs = np.zeros((units, units))
    # A pair's joint code: one integer per prompt, so set differences stay cheap.
    base = int(codes.max()) + 1
    for a in range(units):
        for b in range(a + 1, units):
            pairs[a, b] = _unique_to_positives(
                positive[:, a] * base + positive[:, b], negative[:, a] * base + negative[:, b]
            )
    return heads.reshape(n_layers, n_heads), pairs


def find_circuit_from_codes(
    backend: Backend,
    task: TokenizedTask,
    train_prompts: int = 10,
    n_latents: int | None = None,
    k: int = 4,
    steps: int = 300,
    position: str = "last",
    seed: int = 0,
) -> CodeScores:
    if position not in POSITIONS:
        raise TaskError(f"position must be one of {', '.join(POSITIONS)}, not '{position}'.")
    started = time.perf_counter()
    positives = head_writes(backend, task.clean_ids, position)
    negatives = head_writes(backend, task.corrupted_ids, position)
    n_layers, units = backend.n_layers, positives.shape[1]
    n_heads = units // n_layers
    # Train on a few prompts of each kind, as the paper does (5-10 in all).
    half = max(1, train_prompts // 2)
    training = torch.cat([positives[:half], negatives[:half]]).reshape(-1, positives.shape[-1])
    # Default width: 4 latents per head, so every head can keep codes of its own (the paper's 200 is for GPT-2's 144).
    model, fvu = _train_code_dictionary(training, n_latents or 4 * units, k, steps, seed)
    with torch.no_grad():
        everything = torch.cat([positives, negatives])
        codes = model.encode(everything.reshape(-1, everything.shape[-1])).argmax(-1).reshape(len(everything), units)
    heads, pairs = score_codes(codes.numpy(), len(positives), n_layers, n_heads)
    return CodeScores(heads, pairs, codes.numpy(), len(positives), fvu, time.perf_counter() - started)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, as the Mann-Whitney U statistic with ties counted half (what
    sklearn's roc_auc_score computes); NaN when one class is empty."""
    scores, labels = np.asarray(scores, dtype=float).ravel(), np.asarray(labels, dtype=bool).ravel()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# -- running it on a store ----------------------------------------------------------------------


@dataclass
class CodesConfig:
    task: str
    """ioi, greater-than or PATH.jsonl (lines of {"clean", "corrupted", "answer", "wrong"})."""
    store: str
    """The store directory."""
    model: str | None = None
    """Registry name, local HF folder or hub id (default: the reference patching run's model)."""
    reference: str | None = None
    """Patching run to score against (default: the task's newest with head scores)."""
    reference_threshold: float = 0.1
    """A head belongs to the reference circuit if |its patching score| >= this."""
    pairs: int = 32
    """Prompt pairs for ioi and greater-than."""
    train_prompts: int = 10
    """Prompts the dictionary is trained on, half positive."""
    latents: int | None = None
    """Dictionary width (default: 4 per attention head, so every head can keep codes of its own)."""
    k: int = 4
    """Active latents per vector while training."""
    steps: int = 300
    """Training steps of the code dictionary."""
    position: str = "last"
    """Head output at the last position ("last"), or the mean over positions as in the paper ("mean")."""
    backend: str = "nnsight"
    """How activations are read: one of workbench.models.BACKENDS."""
    name: str | None = None
    """Circuit run name; re-using one replaces its results."""
    seed: int = 0
    """Seed for the built-in tasks' prompts and the dictionary's training."""

    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""


@dataclass
class CodesResult:
    """A stored codes run: its catalog record (reference_run and ROC AUCs are in it), the scores, and how long the
    reference patching run took (None without one)."""

    circuit_run: CircuitRunRecord
    scores: CodeScores
    reference_wall_s: float | None


def _reference(store: Store, config: CodesConfig, task_name: str) -> tuple[CircuitRunRecord | None, np.ndarray | None]:
    """The reference patching run and its head scores [layers, heads], or Nones without one."""
    if config.reference:
        found = patching_run(store, config.reference)
        if found is None:
            raise TaskError(
                f"No patching run '{config.reference}' in the store. List them with `workbench sql "
                f'{store.root} "{PATCHING_RUNS_QUERY}"`.'
            )
    else:
        found = newest_patching_run(store, task_name)
    if found is None:
        return None, None
    heads = head_scores(store, found.circuit_run)
    if not heads:
        raise TaskError(
            f"Patching run '{found.circuit_run}' has no head scores; run `workbench circuit patch ... --levels heads`."
        )
    grid = np.zeros((max(h[0] for h in heads) + 1, max(h[1] for h in heads) + 1))
    for layer, head, score in heads:
        grid[layer, head] = score
    return found, grid


def run_codes(config: CodesConfig) -> CodesResult:
    """Find the task's circuit from discrete codes, score it against the reference patching run, and store it."""
    placement = resolve_placement(config.device, config.dtype)
    store = Store.open_existing(config.store)
    task_label = Path(config.task).stem if config.task.endswith(".jsonl") else config.task  # as tasks.py names it
    reference, reference_scores = _reference(store, config, task_label)
    model = config.model or (reference.model if reference else None)
    if model is None:
        raise TaskError(
            f"No patching run of task '{task_label}' in the store to take the model from and score against. "
            f"Run `workbench circuit patch --task {config.task} --model MODEL --store {config.store} "
            "--levels heads` first, or give --model to find codes without a reference."
        )
    hf_model, tokenizer = load_hf_model(resolve_model_dir(model, store.root / "models"), placement)
    task = tokenize_task(load_task(config.task, tokenizer, config.pairs, config.seed), tokenizer).to(placement.device)
    backend = make_backend(config.backend, hf_model, tokenizer)
    n_heads, _ = attention_heads(hf_model)
    if reference_scores is not None and reference_scores.shape != (backend.n_layers, n_heads):
        assert reference is not None  # _reference returns scores only with their run
        raise TaskError(
            f"The reference run '{reference.circuit_run}' has {reference_scores.shape[0]} x "
            f"{reference_scores.shape[1]} heads but this model has {backend.n_layers} x {n_heads}; "
            "give the reference's model."
        )
    latents = config.latents or 4 * backend.n_layers * n_heads  # as find_circuit_from_codes's default; recorded below
    scores = find_circuit_from_codes(
        backend, task, config.train_prompts, latents, config.k, config.steps, config.position, config.seed
    )
    in_reference = None if reference_scores is None else np.abs(reference_scores) >= config.reference_threshold
    auc_heads = auc_pairs = None
    if in_reference is not None:
        auc_heads = roc_auc(scores.head_scores, in_reference)
        flat = in_reference.ravel()
        upper = np.triu_indices(len(flat), k=1)
        auc_pairs = roc_auc(scores.pair_scores[upper], (flat[:, None] & flat[None, :])[upper])
    name = check_run_name(config.name or make_run_name("codes", task.task.name, str(model).split("/")[-1]))
    metrics = task_metrics(backend, task)
    head_rows = [
        (
            layer,
            head,
            int(scores.head_scores[layer, head]),
            None if in_reference is None else bool(in_reference[layer, head]),
        )
        for layer in range(backend.n_layers)
        for head in range(n_heads)
    ]
    a, b = np.nonzero(scores.pair_scores)
    pair_rows = [
        (int(i // n_heads), int(i % n_heads), int(j // n_heads), int(j % n_heads), int(scores.pair_scores[i, j]))
        for i, j in zip(a, b)
    ]
    record = circuit_record(
        name,
        "codes",
        task,
        model,
        config.backend,
        metrics,
        scores.wall_s,
        asdict(config) | {"latents": latents},
        reference.circuit_run if reference else None,
        (auc_heads, auc_pairs),
        placement=placement,
    )
    stored = replace_circuit_run(store, record, {"circuit_code_heads": head_rows, "circuit_code_pairs": pair_rows})
    return CodesResult(stored, scores, reference.wall_s if reference else None)
