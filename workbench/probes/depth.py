"""Run the depth-usage probes over a corpus and store the results.

Per batch of contexts there is one clean forward pass with every block's input,
attention output, MLP output and output, plus the logits. The sublayer measures and
the logit lens come from it. The layer-skipping probe reuses its updates and output
distribution and adds one pass per skipped layer, on the first `skip_tokens` tokens only; each starts from
the clean pass's residual at the skipped layer, so skipping layer l runs only the blocks after it.
Position 0 (the BOS, where attention sinks make norms explode) is excluded everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from workbench.corpus import corpus_label, tokenize_corpus
from workbench.devices import resolve_placement
from workbench.errors import ProbeError
from workbench.hooks import HookPoint
from workbench.models import load_hf_model, make_backend, model_shape, resolve_model_dir
from workbench.models.backends import LayerSkip
from workbench.probes.distributions import OutputDistribution
from workbench.probes.logit_lens import final_norm_and_unembed, lens_measures
from workbench.probes.results import ProbeResult, depth_score, write_probe_run
from workbench.probes.skipping import output_change, relative_update_change
from workbench.probes.stats import MeanMax
from workbench.probes.sublayer import sublayer_measures
from workbench.store import Store, check_run_name, make_run_name


@dataclass
class DepthProbeConfig:
    model: str
    """Registry name, local HF folder or hub id."""
    store: str
    """The store directory (created if missing)."""
    corpus: str = "default"
    """As for harvest: default, a .txt/.jsonl/.parquet path, or hf:NAME."""
    tokens: int = 20_000
    """Tokens for the sublayer probe."""
    name: str | None = None
    """Probe run name; re-using one replaces its results."""
    task: str | None = None
    """Label for the depth score (default: the corpus)."""
    backend: str = "nnsight"
    """How activations are read: one of workbench.models.BACKENDS."""
    context_len: int = 128
    """Tokens per context, including the BOS."""
    batch_size: int = 8
    """Contexts per forward pass."""
    lens_tokens: int = 4096
    """Of those, tokens for the logit lens; 0 skips it (it costs one unembedding per layer)."""
    skip_tokens: int = 1024
    """Of those, tokens for layer skipping; 0 skips it (it costs one forward pass per skipped layer)."""
    skip_layers: list[int] | None = None
    """Layers to skip (default: all)."""
    split_position: int | None = None
    """t: skip before it, measure from it (default: context length / 2)."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""
    device_map: str | None = None
    """Spread a model too big for one device over several: auto (accelerate's map: every visible GPU, then CPU),
    balanced, sequential, or a JSON {module: device}. The inputs go to --device, which must hold the embedding."""
    text_column: str = "text"
    """Text field for .jsonl/.parquet/hf corpora."""


def default_probe_name(config: DepthProbeConfig) -> str:
    return make_run_name("depth", Path(config.model).name, corpus_label(config.corpus), str(config.tokens))


def _validate(config: DepthProbeConfig, n_layers: int) -> tuple[int, list[int]]:
    split = config.split_position if config.split_position is not None else config.context_len // 2
    if not 2 <= split < config.context_len:
        raise ProbeError(
            f"--split-position must be between 2 and {config.context_len - 1} (the context length minus one); got {split}."
        )
    layers = list(range(n_layers)) if config.skip_layers is None else sorted(set(config.skip_layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ProbeError(f"Layer index out of range: {bad}. This model has {n_layers} layers (0..{n_layers - 1}).")
    for name in ("tokens", "batch_size"):
        if getattr(config, name) <= 0:
            raise ProbeError(f"--{name.replace('_', '-')} must be positive.")
    return split, layers


def _block_points(n_layers: int, kinds: tuple[str, ...]) -> list[HookPoint]:
    return [HookPoint(layer, kind) for layer in range(n_layers) for kind in kinds]


def run_depth_probes(config: DepthProbeConfig, *, progress: bool = True) -> ProbeResult:
    """Run the sublayer, layer-skipping and logit-lens probes and store them as one probe run."""
    placement = resolve_placement(config.device, config.dtype)
    store = Store.create_or_open(config.store)
    model_dir = resolve_model_dir(config.model, store.root / "models")
    n_layers, _ = model_shape(model_dir)
    split, skip_layers = _validate(config, n_layers)
    name = check_run_name(config.name or default_probe_name(config))
    hf_model, tokenizer = load_hf_model(model_dir, placement, config.device_map)
    norm, unembed = final_norm_and_unembed(hf_model) if config.lens_tokens > 0 else (None, None)
    contexts = torch.from_numpy(
        tokenize_corpus(config.corpus, tokenizer, config.tokens, config.context_len, config.text_column).contexts()
    ).long()
    backend = make_backend(config.backend, hf_model, tokenizer)

    clean_points = _block_points(n_layers, ("hook_in", "attn.hook_out", "mlp.hook_out", "hook_out"))
    residual_points = _block_points(n_layers, ("hook_in", "hook_out"))
    sublayer, lens, skip_layer_stats, skip_output = MeanMax(), MeanMax(), MeanMax(), MeanMax()
    n_batches = -(-len(contexts) // config.batch_size)
    lens_batches = -(-config.lens_tokens // (config.batch_size * config.context_len)) if config.lens_tokens > 0 else 0
    skip_batches = -(-config.skip_tokens // (config.batch_size * config.context_len)) if config.skip_tokens > 0 else 0
    passes = n_batches + min(skip_batches, n_batches) * len(skip_layers)
    bar = tqdm(total=passes, unit="pass", desc=f"probe {name}", disable=not progress, dynamic_ncols=True)

    with bar, torch.no_grad():
        for index, start in enumerate(range(0, len(contexts), config.batch_size)):
            ids = contexts[start : start + config.batch_size].to(placement.device)
            clean = backend.run(ids, clean_points, logits=True)
            assert clean.logits is not None  # asked for
            # Drop the BOS position; the measures accumulate in fp32 whatever the model computed in.
            acts = {(p.layer, p.kind): v[:, 1:].float() for p, v in clean.acts.items()}
            output = OutputDistribution.from_logits(clean.logits[:, 1:])
            bar.update(1)
            if index < lens_batches:  # the same final distribution and top-5 serve every layer's lens
                flat_output = output.flat()
                top_final = flat_output.log_probs.topk(5, dim=-1).indices
            for layer in range(n_layers):
                measures = sublayer_measures(
                    acts[layer, "hook_in"],
                    acts[layer, "attn.hook_out"],
                    acts[layer, "mlp.hook_out"],
                    acts[layer, "hook_out"],
                )
                for metric, values in measures.items():
                    sublayer.add((layer, metric), values)
                if index < lens_batches:
                    assert norm is not None and unembed is not None  # lens_batches is 0 without lens tokens
                    kl, overlap = lens_measures(
                        acts[layer, "hook_out"].reshape(-1, acts[layer, "hook_out"].shape[-1]),
                        flat_output,
                        top_final,
                        norm,
                        unembed,
                    )
                    lens.add((layer, "kl"), kl)
                    lens.add((layer, "top5"), overlap)
            if index >= skip_batches:
                continue
            # Positions >= t, indexed after dropping the BOS.
            future = slice(split - 1, None)
            deltas = {l: (acts[l, "hook_out"] - acts[l, "hook_in"])[:, future] for l in range(n_layers)}
            for skipped in skip_layers:
                # Blocks 0..skipped would recompute the clean pass exactly: start from its residual there.
                resume = (clean.acts[HookPoint(skipped, "hook_in")], clean.acts[HookPoint(skipped, "hook_out")])
                later = [p for p in residual_points if p.layer > skipped]
                result = backend.run(ids, later, logits=True, skip=LayerSkip(skipped, split, resume=resume))
                assert result.logits is not None  # asked for
                skipped_acts = {(p.layer, p.kind): v[:, 1:].float() for p, v in result.acts.items()}
                for affected in range(skipped + 1, n_layers):
                    delta_skip = (skipped_acts[affected, "hook_out"] - skipped_acts[affected, "hook_in"])[:, future]
                    skip_layer_stats.add((skipped, affected), relative_update_change(deltas[affected], delta_skip))
                # The same pass also shows the direct effect at the skipped positions themselves.
                l2, kl, kl_skipped = output_change(output, result.logits[:, 1:], future, slice(None, split - 1))
                skip_output.add((skipped, "l2"), l2)
                skip_output.add((skipped, "kl"), kl)
                skip_output.add((skipped, "kl_skipped"), kl_skipped)
                bar.update(1)

    tables: dict[str, list[tuple]] = {
        "probe_sublayer": [
            (
                layer,
                metric,
                sublayer.mean((layer, metric)),
                sublayer.max((layer, metric)),
                sublayer.count((layer, metric)),
            )
            for layer, metric in sublayer.keys()
        ],
        "probe_logit_lens": [
            (
                layer,
                lens.mean((layer, "kl")),
                lens.max((layer, "kl")),
                lens.mean((layer, "top5")),
                lens.count((layer, "kl")),
            )
            for layer in range(n_layers)
            if (layer, "kl") in lens.keys()
        ],
        "probe_skip_layers": [
            (s, l, skip_layer_stats.mean((s, l)), skip_layer_stats.max((s, l)), skip_layer_stats.count((s, l)))
            for s, l in skip_layer_stats.keys()
        ],
        "probe_skip_output": [
            (
                s,
                skip_output.mean((s, "l2")),
                skip_output.max((s, "l2")),
                skip_output.mean((s, "kl")),
                skip_output.max((s, "kl")),
                skip_output.mean((s, "kl_skipped")),
                skip_output.max((s, "kl_skipped")),
                skip_output.count((s, "kl")),
            )
            for s in skip_layers
            if (s, "kl") in skip_output.keys()
        ],
    }
    task = config.task or config.corpus
    if tables["probe_skip_output"]:
        # Primary: the KL at the skipped positions (how much the output there needs the layer); the
        # paper's future-position effect is kept too, though it is zero for the last layer by construction.
        effects = {
            "skipped_positions_kl": {row[0]: row[5] for row in tables["probe_skip_output"]},
            "future_positions_kl": {row[0]: row[3] for row in tables["probe_skip_output"]},
        }
        tables["probe_depth_scores"] = [
            (task, measure, depth_score(e), depth_score(e) / max(n_layers - 1, 1)) for measure, e in effects.items()
        ]
    header = dict(
        kind="depth",
        device=placement.device_name,
        dtype=placement.dtype_name,
        model=config.model,
        backend=config.backend,
        corpus=config.corpus,
        task=task,
        n_layers=n_layers,
        n_tokens=int(contexts.numel()),
        config=asdict(config),
    )
    return write_probe_run(store, name, header, tables)
