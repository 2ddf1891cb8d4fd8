"""Probe 4: how well does a linear map from layer i of model A predict layer j of model B?

On the same text, fit an affine map (ridge least squares) from each source layer's
residual to each target layer's residual on 80% of the tokens, and report the relative
error ||pred - target|| / ||target|| on the other 20%. Plotted over relative depth
(layer+1)/n_layers, a diagonal band means the two models compute in the same order.

Tokens are aligned by position in the text: each token is keyed by (document, character
where it ends), and only tokens whose key exists in both models' tokenizations are used.
With the same tokenizer that is every text token. With different tokenizers it is the
tokens ending at a shared boundary (mostly word ends), and each model keeps its own
preceding context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.devices import Placement, resolve_placement
from workbench.errors import ProbeError
from workbench.probes.results import ProbeResult, write_probe_run
from workbench.store import Store, check_run_name, make_run_name


def token_keys(doc_ids: np.ndarray, char_ends: np.ndarray) -> np.ndarray:
    """One int64 key per token for (document, end offset); -1 for BOS/separator tokens."""
    keys = doc_ids.astype(np.int64) * (1 << 32) + char_ends.astype(np.int64)
    return np.where(doc_ids >= 0, keys, -1)


def align_tokens(keys_a: np.ndarray, keys_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices into A and B of the tokens both have, in text order. Duplicate keys keep their first occurrence."""
    valid_a, valid_b = np.flatnonzero(keys_a >= 0), np.flatnonzero(keys_b >= 0)
    _, ia, ib = np.intersect1d(keys_a[valid_a], keys_b[valid_b], assume_unique=False, return_indices=True)
    return valid_a[ia], valid_b[ib]


def minimum_tokens(d_source: int) -> int:
    """Tokens needed for a determined fit of d_source + 1 parameters per output, with a 20% test split."""
    return int(np.ceil(2 * (d_source + 1) / 0.8))


def layer_map_errors(
    source: list[torch.Tensor],
    target: list[torch.Tensor],
    train_fraction: float = 0.8,
    ridge: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Relative held-out error of the affine map from every source layer to every target layer.

    source[i] is [n_tokens, d_a] and target[j] is [n_tokens, d_b], row-aligned. Returns [len(source), len(target)].
    The targets are stacked so each source layer needs one solve for all target layers.
    """
    n = source[0].shape[0]
    if n < minimum_tokens(source[0].shape[1]):
        raise ProbeError(
            f"Too few aligned tokens to fit a linear map: {n}, need at least {minimum_tokens(source[0].shape[1])} "
            f"for d_model {source[0].shape[1]} (twice the parameters per output, plus a test split). Raise --tokens."
        )
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(n * train_fraction)
    train, test = order[:n_train], order[n_train:]
    targets = torch.cat([t.double() for t in target], dim=1)
    widths = [t.shape[1] for t in target]
    y_train, y_test = targets[train], targets[test]
    errors = np.zeros((len(source), len(target)))
    for i, layer in enumerate(source):
        x = torch.cat([layer.double(), torch.ones(n, 1, dtype=torch.float64)], dim=1)
        x_train, x_test = x[train], x[test]
        gram = x_train.T @ x_train
        # Ridge scaled to the data, so the same setting works for residuals of any norm.
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=torch.float64)
        weights = torch.linalg.solve(gram, x_train.T @ y_train)
        residual = x_test @ weights - y_test
        for j, (r, y) in enumerate(zip(residual.split(widths, dim=1), y_test.split(widths, dim=1))):
            errors[i, j] = (r.norm() / y.norm().clamp_min(1e-12)).item()
    return errors


def _residuals(
    model: str,
    store,
    corpus: str,
    tokens: int,
    context_len: int,
    batch_size: int,
    backend_name: str,
    placement: Placement,
    text_column: str,
    device_map: str | None,
):
    """Every block's output residual for the corpus, [n_layers] x [n_tokens, d], and each token's alignment key."""
    from workbench.corpus import tokenize_corpus
    from workbench.hooks import HookPoint
    from workbench.models import load_hf_model, make_backend, model_shape, resolve_model_dir

    model_dir = resolve_model_dir(model, store.root / "models")
    n_layers, _ = model_shape(model_dir)
    hf_model, tokenizer = load_hf_model(model_dir, placement, device_map)
    corpus_tokens = tokenize_corpus(corpus, tokenizer, tokens, context_len, text_column)
    contexts = torch.from_numpy(corpus_tokens.contexts()).long()
    backend = make_backend(backend_name, hf_model, tokenizer)
    points = [HookPoint(layer, "hook_out") for layer in range(n_layers)]
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    for start in range(0, len(contexts), batch_size):
        acts = backend.capture(contexts[start : start + batch_size].to(placement.device), points)
        for point in points:  # the least-squares fit runs in fp32 on the host, whatever the model ran in
            per_layer[point.layer].append(acts[point].reshape(-1, acts[point].shape[-1]).float().cpu())
    keys = token_keys(corpus_tokens.doc_ids, corpus_tokens.char_ends)
    return [torch.cat(chunks) for chunks in per_layer], keys, n_layers


@dataclass
class LinearMapsConfig:
    source: str
    """The model mapped from: registry name, local HF folder or hub id."""
    target: str
    """The model mapped to: registry name, local HF folder or hub id."""
    store: str
    """The store directory (created if missing)."""
    corpus: str = "default"
    """As for harvest: default, a .txt/.jsonl/.parquet path, or hf:NAME."""
    tokens: int = 8192
    """Tokens of text each model reads."""
    name: str | None = None
    """Probe run name; re-using one replaces its results."""
    backend: str = "nnsight"
    """How activations are read: one of workbench.models.BACKENDS."""
    context_len: int = 128
    """Tokens per context, including the BOS."""
    batch_size: int = 8
    """Contexts per forward pass."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""
    device_map: str | None = None
    """Spread a model too big for one device over several: auto (accelerate's map: every visible GPU, then CPU),
    balanced, sequential, or a JSON {module: device}. The inputs go to --device, which must hold the embedding."""
    text_column: str = "text"
    """Text field for .jsonl/.parquet/hf corpora."""
    ridge: float = 1e-4
    """Ridge penalty of the least-squares fit, relative to the mean diagonal of the Gram matrix."""


def run_linear_maps(config: LinearMapsConfig) -> ProbeResult:
    """Fit and store the layer-to-layer map errors from `config.source` to `config.target` as one probe run."""
    placement = resolve_placement(config.device, config.dtype)
    store = Store.create_or_open(config.store)
    name = check_run_name(
        config.name
        or make_run_name("maps", Path(config.source).name, "to", Path(config.target).name, str(config.tokens))
    )
    common: dict[str, Any] = dict(
        store=store,
        corpus=config.corpus,
        tokens=config.tokens,
        context_len=config.context_len,
        batch_size=config.batch_size,
        backend_name=config.backend,
        placement=placement,
        text_column=config.text_column,
        device_map=config.device_map,
    )
    source_layers, source_keys, n_source = _residuals(config.source, **common)
    target_layers, target_keys, n_target = _residuals(config.target, **common)
    rows_a, rows_b = align_tokens(source_keys, target_keys)
    errors = layer_map_errors(
        [x[rows_a] for x in source_layers], [y[rows_b] for y in target_layers], ridge=config.ridge
    )
    n_train = int(len(rows_a) * 0.8)
    table = [
        (i, j, (i + 1) / n_source, (j + 1) / n_target, float(errors[i, j]), n_train, len(rows_a) - n_train)
        for i in range(n_source)
        for j in range(n_target)
    ]
    header = dict(
        kind="linear_maps",
        device=placement.device_name,
        dtype=placement.dtype_name,
        model=config.source,
        target_model=config.target,
        backend=config.backend,
        corpus=config.corpus,
        task=config.corpus,
        n_layers=n_source,
        n_tokens=len(rows_a),
        config=dict(
            source=config.source,
            target=config.target,
            corpus=config.corpus,
            tokens=config.tokens,
            context_len=config.context_len,
            ridge=config.ridge,
            aligned_tokens=len(rows_a),
        ),
    )
    return write_probe_run(store, name, header, {"probe_linear_maps": table})
