"""Sparse probing (Gao et al. 2024, as SAEBench runs it): can k of a dictionary's features do what a dense probe on
the same hook does?

For each labelled task (probing_tasks.py), on a seeded 80/20 split of balanced examples:
- dense: a logistic probe on the hook's activations (standardised, L2, C = 1);
- top-k, for k in --k (1, 2, 5, 10, 20): the k features with the largest |mean on positives - mean on negatives| on
  the training half, then a logistic probe on those k features alone (L2, C = 1, as SAEBench's).
Test accuracies go to dictionary_scores (benchmark 'sparse_probing'): per task, and their mean over tasks (task '').
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.corpus import bos_token_id
from workbench.errors import EvaluationError
from workbench.evals.common import LoadedDictionary, activation_key, remember, replace_scores
from workbench.evals.probes import fit_small_probe
from workbench.evals.probing_tasks import (
    BUILT_IN,
    SAEBENCH_DATASETS,
    Chunk,
    Task,
    built_in_tasks,
    chunk_pool,
    saebench_texts,
)
from workbench.store import Store
from workbench.store.records import ScoreRecord


@dataclass
class ProbingConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name (see the dictionaries table); a transcoder is probed on its input hook."""
    tasks: list[str] = field(default_factory=lambda: list(BUILT_IN))
    """Tasks, comma-separated: the built-in ones (default: all; see `workbench eval sparse-probing --help`), or
    SAEBench's datasets by name (bias_in_bios_class_set1, ag_news, ...; needs a network and `datasets`)."""
    k: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    """Numbers of features the sparse probes get."""
    examples: int = 1000
    """Examples per task at most, half positive (80% train, 20% test)."""
    min_positives: int = 50
    """A task with fewer positive examples than this is refused: its accuracy would be noise."""
    chunk_tokens: int = 48
    """Tokens per text chunk (after the BOS)."""
    seed: int = 0
    """Seed of the chunk sample, the balancing and the split."""
    batch_size: int = 32
    """Chunks per forward pass."""
    backend: str = "nnsight"
    """Hooking library that reads the activations."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise EvaluationError("Give at least one --tasks name.")
        if any(k < 1 for k in self.k):
            raise EvaluationError("--k values must be at least 1.")
        known = set(BUILT_IN) | set(SAEBENCH_DATASETS)
        unknown = [t for t in self.tasks if t not in known]
        if unknown:  # refused before any model is loaded
            raise EvaluationError(
                f"Unknown probing task {', '.join(repr(t) for t in unknown)}. Built in: {', '.join(BUILT_IN)}; by name, "
                f"with a network: {', '.join(SAEBENCH_DATASETS)}."
            )


@dataclass
class TaskAccuracies:
    task: str
    kind: str
    n_train: int
    n_test: int
    dense: float
    top_k: dict[int, float]  # k -> test accuracy
    features: list[int]  # the top features by mean difference, best first (max k of them)


@dataclass
class ProbingResult:
    tasks: list[TaskAccuracies]
    dense: float  # mean over tasks
    top_k: dict[int, float]
    rows: list[ScoreRecord]


def _accuracy(probe, x: np.ndarray, y: np.ndarray) -> float:
    return float((probe.predict(x) == y).mean())


def probe_task(
    x_train: np.ndarray,
    f_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    f_test: np.ndarray,
    y_test: np.ndarray,
    ks: list[int],
) -> tuple[float, dict[int, float], list[int]]:
    """Dense accuracy, top-k accuracies and the ranked features of one task's split (pure arrays)."""
    dense = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    difference = np.abs(f_train[y_train].mean(0) - f_train[~y_train].mean(0))
    ranked = np.argsort(-difference, kind="stable")[: max(ks)].tolist()
    top_k = {}
    for k in ks:
        columns = ranked[:k]
        top_k[k] = _accuracy(fit_small_probe(f_train[:, columns], y_train), f_test[:, columns], y_test)
    return _accuracy(dense, x_test, y_test), top_k, ranked


def _saebench_tasks(pool: list[Chunk], name: str, per_class: int, length: int, bos: int, tokenizer, seed: int):
    by_class = saebench_texts(name, per_class, seed)
    start = len(pool)
    for label, texts in by_class.items():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
            pool.append(Chunk([bos, *ids], f"hf:{name}", str(label)))
    rng = random.Random(seed)
    tasks = []
    for label in by_class:
        members = range(start, len(pool))
        positives = [(i, -1) for i in members if pool[i].topic == str(label)]
        negatives = [(i, -1) for i in members if pool[i].topic != str(label)]
        n = min(len(positives), len(negatives), per_class)
        tasks.append(Task(f"{name}:{label}", "sequence", rng.sample(positives, n), rng.sample(negatives, n)))
    return tasks


def run_sparse_probing(config: ProbingConfig, *, progress: bool = True) -> ProbingResult:
    """Probe a dictionary's features on each task against a dense probe; replace its sparse_probing rows."""
    store = Store.open_existing(config.store)
    loaded = LoadedDictionary.load(store, config.dictionary, config.device, config.dtype, config.backend)
    tokenizer, bos = loaded.tokenizer, bos_token_id(loaded.tokenizer)
    per_class = config.examples // 2
    pool = chunk_pool(tokenizer, bos, config.chunk_tokens, max_code_chunks=per_class, seed=config.seed)
    built_in = [t for t in config.tasks if t not in SAEBENCH_DATASETS]
    tasks = built_in_tasks(pool, tokenizer, built_in, per_class, config.seed)
    for name in (t for t in config.tasks if t in SAEBENCH_DATASETS):
        tasks += _saebench_tasks(pool, name, per_class, config.chunk_tokens, bos, tokenizer, config.seed)
    few = [f"{t.name} ({len(t.positives)})" for t in tasks if len(t.positives) < config.min_positives]
    if few:
        raise EvaluationError(
            f"Too few positive examples for {', '.join(few)}: each task needs {config.min_positives} "
            "(--min-positives). Raise --examples, or leave those tasks out of --tasks."
        )

    # One forward pass per chunk any task uses; keep only the rows the tasks read.
    wanted: dict[int, set[int]] = {}
    for task in tasks:
        for chunk, position in task.positives + task.negatives:
            wanted.setdefault(chunk, set()).add(position)
    chunks = sorted(wanted)

    def chunk_activations() -> dict[int, torch.Tensor]:
        found = {}
        activations = loaded.sequence_activations([pool[i].ids for i in chunks], config.batch_size)
        if progress:
            from tqdm import tqdm

            activations = tqdm(activations, total=len(chunks), desc="sparse probing: activations", unit="chunk")
        for index, acts in activations:
            found[chunks[index]] = acts
        return found

    key = activation_key(loaded, "probing", tuple(config.tasks), config.examples, config.chunk_tokens, config.seed)
    by_chunk = remember(key, chunk_activations)
    rows_x: dict[tuple[int, int], torch.Tensor] = {}
    rows_f: dict[tuple[int, int], torch.Tensor] = {}
    for chunk in chunks:
        acts = by_chunk[chunk]
        features = loaded.encode(acts[1:])  # BOS left out, as the dictionary was trained
        for position in wanted[chunk]:
            if position == -1:
                rows_x[chunk, -1], rows_f[chunk, -1] = acts[1:].mean(0), features.mean(0)
            else:
                rows_x[chunk, position], rows_f[chunk, position] = acts[position], features[position - 1]

    rng = np.random.default_rng(config.seed)
    results = []
    for task in tasks:
        keys = task.positives + task.negatives
        y = np.array([True] * len(task.positives) + [False] * len(task.negatives))
        x = torch.stack([rows_x[k] for k in keys]).double().numpy()
        f = torch.stack([rows_f[k] for k in keys]).double().numpy()
        order = rng.permutation(len(keys))
        n_train = int(0.8 * len(keys))
        train, test = order[:n_train], order[n_train:]
        dense, top_k, ranked = probe_task(x[train], f[train], y[train], x[test], f[test], y[test], config.k)
        results.append(TaskAccuracies(task.name, task.kind, len(train), len(test), dense, top_k, ranked))

    settings = {k: v for k, v in vars(config).items() if k not in ("store", "dictionary")}
    rows = []
    for r in results:
        rows.append(ScoreRecord(config.dictionary, "sparse_probing", r.task, "dense_accuracy", r.dense, r.n_test,
                                {"kind": r.kind, "top_features": r.features}))  # fmt: skip
        rows += [ScoreRecord(config.dictionary, "sparse_probing", r.task, f"top_{k}_accuracy", a, r.n_test)
                 for k, a in r.top_k.items()]  # fmt: skip
    dense_mean = float(np.mean([r.dense for r in results]))
    top_k_mean = {k: float(np.mean([r.top_k[k] for r in results])) for k in config.k}
    rows.append(
        ScoreRecord(config.dictionary, "sparse_probing", "", "dense_accuracy", dense_mean, len(results), settings)
    )
    rows += [ScoreRecord(config.dictionary, "sparse_probing", "", f"top_{k}_accuracy", a, len(results))
             for k, a in top_k_mean.items()]  # fmt: skip
    replace_scores(store, config.dictionary, "sparse_probing", rows)
    return ProbingResult(results, dense_mean, top_k_mean, rows)
