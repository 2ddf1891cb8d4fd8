"""Reading features back out of a store: what the app's feature pages, analyses and bench show.

Everything here reads committed data through short read-only connections (see store/catalog.py),
so it works while a harvest or a training run writes to the same store. The queries are in
store/features.py; here they become the pages' shapes. A dictionary is its catalog record
(store/records.py DictionaryRecord, e.g. from lookups.completed_dictionary).

    top_contexts        the highest activations, each in its context with per-token values
    quantile_contexts   samples from equal-width activation intervals (SAEDashboard's layout)
    activation_histogram, feature_summary, top_tokens
    features_table      browse a dictionary by density or max activation
    features_on_token   which features fire on a given token text
    DictionaryView      a loaded dictionary: decoder neighbours and logit effects through the unembedding
    encode_prompt       run the model on a prompt and encode it: the text inspector
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from workbench.corpus import bos_token_id
from workbench.dictionaries import load_dictionary
from workbench.errors import DictionaryError
from workbench.store import Store, lookups
from workbench.store import features as reads
from workbench.store.features import BROWSE_ORDERS, features_table, is_encoded  # noqa: F401 (the pages' API)
from workbench.store.records import DictionaryRecord


def check_feature(record: DictionaryRecord, feature: int) -> None:
    if not 0 <= feature < record.n_latents:
        raise DictionaryError(
            f"Feature {feature} is out of range: '{record.name}' has features 0 to {record.n_latents - 1}."
        )


def require_encoded(store: Store, record: DictionaryRecord, why: str) -> None:
    """Refuse work that reads a dictionary's stored activations before `workbench encode` wrote them."""
    if not is_encoded(store, record.name):
        raise DictionaryError(
            f"'{record.name}' has not been encoded, and {why}: run "
            f"`workbench encode --store {store.root} --dict {record.name}` first."
        )


def _context_len(store: Store, record: DictionaryRecord) -> int:
    return lookups.run(store, record.run).context_len


# -- contexts ------------------------------------------------------------------------------------


@dataclass
class Context:
    """A window of one context around a token where the feature fired."""

    token_id: int  # the token the window is centred on
    value: float  # the feature's activation there
    context_id: int
    tokens: list[str]
    values: list[float]  # the feature's activation on each token of the window (0 where it did not fire)
    centre: int  # index of token_id within the window


def context_windows(
    store: Store,
    run: str,
    context_len: int,
    hits: list[tuple[int, float]],
    before: int,
    after: int,
    values_sql: str,
    values_params: list,
) -> list[Context]:
    """Attach each hit's surrounding tokens (clipped to its own context) and a value per token.

    `values_sql` selects (token_id, value) rows for the window's token ids, which it reads from the
    registered table `window_ids(token_id)`; tokens it does not return get 0. Feature pages pass
    feature_acts, code pages codebook_codes.
    """
    if not hits:
        return []
    length = context_len
    spans = []
    for token_id, _ in hits:
        context_start = token_id - token_id % length
        spans.append(
            (token_id, max(context_start, token_id - before), min(context_start + length - 1, token_id + after))
        )
    spans_table = pa.table({"centre": [s[0] for s in spans], "lo": [s[1] for s in spans], "hi": [s[2] for s in spans]})
    rows, values = reads.window_tokens(store, run, spans_table, values_sql, values_params)
    by_centre: dict[int, list] = {}
    for centre, token_id, token, context_id in rows:
        by_centre.setdefault(centre, []).append((token_id, token, context_id))
    contexts = []
    for token_id, value in hits:
        window = by_centre.get(token_id, [])
        ids = [w[0] for w in window]
        contexts.append(
            Context(
                token_id=token_id,
                value=value,
                context_id=window[0][2] if window else -1,
                tokens=[w[1] if w[1] is not None else "<bos>" for w in window],
                values=[float(values.get(i, 0.0)) for i in ids],
                centre=ids.index(token_id) if token_id in ids else 0,
            )
        )
    return contexts


def _feature_windows(
    store: Store,
    record: DictionaryRecord,
    context_len: int,
    feature: int,
    hits: list[tuple[int, float]],
    before: int,
    after: int,
) -> list[Context]:
    values_sql, params = reads.feature_window_values(store, record.name, feature)
    return context_windows(store, record.run, context_len, hits, before, after, values_sql, params)


def top_contexts(
    store: Store, record: DictionaryRecord, feature: int, n: int = 10, before: int = 16, after: int = 4
) -> list[Context]:
    """The feature's n highest activations, at most one per context, each with its window."""
    check_feature(record, feature)
    context_len = _context_len(store, record)
    hits = reads.top_hits(store, record.name, feature, context_len, n)
    return _feature_windows(store, record, context_len, feature, hits, before, after)


@dataclass
class QuantileSample:
    low: float
    high: float
    n_in_interval: int
    contexts: list[Context]


def quantile_contexts(
    store: Store,
    record: DictionaryRecord,
    feature: int,
    n_intervals: int = 5,
    per_interval: int = 3,
    before: int = 16,
    after: int = 4,
) -> list[QuantileSample]:
    """Split (0, max] into equal-width intervals and show a few activations from each, highest interval first.

    The samples within an interval are chosen by a hash of the token id: spread over the
    corpus, and the same on every page load, so a shared link shows the same page.
    """
    check_feature(record, feature)
    rows = reads.quantile_hits(store, record.name, feature, n_intervals, per_interval)
    if not rows:
        return []
    top = rows[0][1]
    context_len = _context_len(store, record)
    samples = []
    for interval in sorted({r[0] for r in rows}, reverse=True):
        members = [r for r in rows if r[0] == interval]
        contexts = _feature_windows(store, record, context_len, feature, [(r[3], r[4]) for r in members], before, after)
        samples.append(
            QuantileSample(
                low=top * interval / n_intervals,
                high=top * (interval + 1) / n_intervals,
                n_in_interval=members[0][2],
                contexts=contexts,
            )
        )
    return samples


# -- statistics ----------------------------------------------------------------------------------


@dataclass
class FeatureSummary:
    n_active: int
    density: float
    max: float | None
    mean: float | None
    q50: float | None
    q90: float | None
    q99: float | None
    density_rank: int  # 1 = the densest feature of the dictionary
    n_features: int


def feature_summary(store: Store, record: DictionaryRecord, feature: int) -> FeatureSummary:
    check_feature(record, feature)
    row = reads.feature_stats(store, record.name, feature)
    if row is None:
        raise DictionaryError(
            f"Dictionary '{record.name}' has not been encoded: run "
            f"`workbench encode --store {store.root} --dict {record.name}`."
        )
    return FeatureSummary(*row)


@dataclass
class Histogram:
    edges: np.ndarray  # n_bins + 1
    counts: np.ndarray  # n_bins


def activation_histogram(store: Store, record: DictionaryRecord, feature: int, n_bins: int = 40) -> Histogram:
    """Binned here rather than in the browser: a dense feature has millions of values on a big store."""
    check_feature(record, feature)
    values = reads.feature_values(store, record.name, feature)
    if len(values) == 0:
        return Histogram(edges=np.zeros(0), counts=np.zeros(0, dtype=np.int64))
    counts, edges = np.histogram(values, bins=n_bins, range=(0.0, float(values.max()) or 1.0))
    return Histogram(edges=edges, counts=counts)


def log_densities(store: Store, name: str) -> np.ndarray:
    """log10 density of every feature that fired at least once (for the density histogram)."""
    return np.log10(reads.densities(store, name))


def top_tokens(store: Store, record: DictionaryRecord, feature: int, n: int = 10) -> pa.Table:
    """The token texts the feature fires on most often, with how often and how strongly."""
    check_feature(record, feature)
    return reads.top_tokens(store, record.name, feature, n)


def features_on_token(store: Store, record: DictionaryRecord, token_text: str, limit: int = 50) -> pa.Table:
    """Features ranked by how often they fire on tokens whose text is `token_text` (trimmed, any case).

    `share` is the fraction of the feature's firings that land on this token: near 1 for a
    token-specific feature, small for one that only passes through it.
    """
    return reads.features_on_token(store, record.name, record.run, token_text, limit)


# -- weights -------------------------------------------------------------------------------------


class DictionaryView:
    """A loaded dictionary with the derived weights its pages need, computed once."""

    def __init__(self, store: Store, record: DictionaryRecord):
        self.record = record
        self.model = load_dictionary(store.root / record.path).eval()
        decoder = self.model.W_dec.detach().float()
        self.unit_decoder = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def nearest(self, feature: int, n: int = 10) -> list[tuple[int, float]]:
        """Features whose decoder directions are closest by cosine similarity (excluding itself)."""
        check_feature(self.record, feature)
        cosines = self.unit_decoder @ self.unit_decoder[feature]
        cosines[feature] = -2.0
        values, indices = cosines.topk(min(n, len(cosines) - 1))
        return list(zip(indices.tolist(), values.tolist()))

    def logit_effects(self, unembed: Unembedding, feature: int, n: int = 10) -> tuple[list, list]:
        """The tokens the decoder direction most boosts and most suppresses: (token, logit) lists."""
        check_feature(self.record, feature)
        logits = unembed.weight @ self.model.W_dec.detach()[feature].float()
        top, bottom = logits.topk(n), (-logits).topk(n)
        decode = unembed.token_text
        return (
            [(decode(i), v) for i, v in zip(top.indices.tolist(), top.values.tolist())],
            [(decode(i), -v) for i, v in zip(bottom.indices.tolist(), bottom.values.tolist())],
        )


@dataclass
class Unembedding:
    """The unembedding with the final norm's gain folded in, as the logit lens and Neuronpedia's
    logit tables use it: a direction v written to the residual stream moves logit t by W_U[t]·(g*v)."""

    weight: torch.Tensor  # [vocab, d_model]
    tokenizer: Any  # a HF tokenizer: only .decode is used

    def token_text(self, vocab_id: int) -> str:
        return self.tokenizer.decode([vocab_id])

    @classmethod
    def from_model(cls, hf_model, tokenizer) -> Unembedding:
        from workbench.probes.logit_lens import final_norm_and_unembed

        norm, unembed = final_norm_and_unembed(
            hf_model, "The logit-effect table", "The rest of the feature page works without it."
        )
        weight = cast(torch.Tensor, unembed.weight).detach().float()  # the unembedding's [vocab, d_model] matrix
        gain = getattr(norm, "weight", None)
        if gain is not None:
            weight = weight * gain.detach().float()
        return cls(weight=weight, tokenizer=tokenizer)


# -- prompts ---------------------------------------------------------------------------------------


@dataclass
class PromptEncoding:
    tokens: list[str]  # the prompt's tokens, BOS first
    acts: torch.Tensor  # [n_tokens, n_latents], dense; the BOS row is zero (dictionaries skip it)


def encode_prompt(view: DictionaryView, backend, prompt: str, max_tokens: int = 256) -> PromptEncoding:
    """Run the model on [BOS] + prompt, as harvest frames contexts, and encode the dictionary's input hook."""
    from workbench.hooks import parse_hook

    if not prompt.strip():
        raise DictionaryError("Type some text to inspect.")
    tokenizer = backend.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][: max_tokens - 1]
    bos = bos_token_id(tokenizer)
    input_ids = torch.tensor([[bos, *ids]], device=backend.hf_model.device)
    point = parse_hook(view.record.hook, backend.n_layers)
    acts = backend.capture(input_ids, [point])[point][0].float().cpu()  # the dictionary view lives on the host
    with torch.no_grad():
        f = view.model.encode(acts)
    f[0] = 0
    return PromptEncoding(tokens=["<bos>"] + [tokenizer.decode([i]) for i in ids], acts=f)
