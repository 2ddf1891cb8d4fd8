"""Training on live activations (`workbench train --model M --corpus C`): nothing is written to shards.

For runs too big to store (sparsify trains this way): each training step runs the model on its own
contexts, captures every requested hook in one forward pass, drops the BOS rows and hands the
batches to fit_group. Step s of epoch e takes the contexts at positions [s*c, (s+1)*c) of a permutation
seeded by (seed, e), c = batch_size // (context_len - 1), so the batches are a pure function of the seed
and the corpus: a run killed with kill -9 resumes from its checkpoint's step and recomputes exactly
the batches an uninterrupted run would see (the forward pass is deterministic on a given device).

The corpus slice is recorded like a harvest's: a `runs` row (status 'streamed', no shards and no
hook_points, so it never shadows a harvested run of the same hooks) with its `tokens` and `documents`,
which the dictionaries' `run` column points to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from workbench.devices import Placement
from workbench.errors import DictionaryError
from workbench.hooks import HookPoint, parse_hooks
from workbench.store import Store, make_run_name
from workbench.store.records import RunRecord, read_one, update

STREAMED = "streamed"  # runs.status of a corpus slice that was trained on, not stored


@dataclass
class LiveActivations:
    backend: object  # workbench.models.Backend
    contexts: np.ndarray  # [n_contexts, context_len] vocab ids, BOS first
    hooks: list[HookPoint]
    batch_size: int
    seed: int
    device: torch.device

    @property
    def contexts_per_step(self) -> int:
        return max(1, self.batch_size // (self.contexts.shape[1] - 1))

    @property
    def rows_per_step(self) -> int:
        """The batch size actually used: whole contexts without their BOS, at most --batch-size rows."""
        return self.contexts_per_step * (self.contexts.shape[1] - 1)

    def steps_per_epoch(self) -> int:
        return len(self.contexts) // self.contexts_per_step

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        per_epoch, c = self.steps_per_epoch(), self.contexts_per_step
        step, order, order_epoch = start_step, None, -1
        while True:
            epoch, index = divmod(step, per_epoch)
            if epoch != order_epoch:
                order, order_epoch = np.random.default_rng([self.seed, epoch]).permutation(len(self.contexts)), epoch
            assert order is not None
            ids = torch.from_numpy(self.contexts[order[index * c : (index + 1) * c]]).to(self.device)
            with torch.no_grad():
                captured = self.backend.capture(ids, self.hooks)  # type: ignore[attr-defined]
            yield {h.name: acts[:, 1:].reshape(-1, acts.shape[-1]) for h, acts in captured.items()}
            step += 1


def open_stream(store: Store, config, placement: Placement) -> tuple[str, dict[str, int], LiveActivations]:
    """(run name of the corpus slice, each hook's width, the live batches) for a streaming TrainConfig. The batches
    carry the hooks' canonical names (`live.hooks`, in forward order: not the order of config.hook and hook_out)."""
    from workbench.corpus import tokenize_corpus
    from workbench.harvest import HarvestConfig, record_run
    from workbench.models import hook_widths, load_hf_model, make_backend, model_shape, resolve_model_dir

    model_dir = resolve_model_dir(config.model, store.root / "models")
    n_layers, d_model = model_shape(model_dir)
    hooks = parse_hooks(config.hook + (config.hook_out or []), n_layers)
    slice_config = HarvestConfig(
        model=config.model,
        hooks=[h.name for h in hooks],
        store=config.store,
        corpus=config.corpus,
        tokens=config.stream_tokens,
        run=config.run or make_run_name("stream", config.name or "train", str(config.stream_tokens)),
        backend=config.backend,
        context_len=config.context_len,
        text_column=config.text_column,
        device=config.device,
        dtype=config.dtype,
    )
    run = slice_config.run
    assert run is not None  # given just above
    hf_model, tokenizer = load_hf_model(model_dir, placement)
    with store.reader() as con:
        existing = read_one(con, RunRecord, run=run)
    if existing is None:
        corpus = tokenize_corpus(config.corpus, tokenizer, config.stream_tokens, config.context_len, config.text_column)
        record_run(
            store, run, slice_config, hooks, corpus, tokenizer, model_dir, n_layers, d_model, placement, points=False
        )
        with store.transaction() as con:
            update(con, RunRecord, {"run": run}, status=STREAMED)
    elif existing.status != STREAMED or existing.model != config.model or existing.corpus != config.corpus:
        raise DictionaryError(
            f"Run '{run}' exists and is not this command's corpus slice ({existing.status}, {existing.model}, "
            f"{existing.corpus}); give another --run."
        )
    contexts = store.contexts(run)  # read back, as a harvest does: a resume sees the same slice
    if len(contexts) < max(1, config.batch_size // (config.context_len - 1)):
        raise DictionaryError(
            f"The corpus slice has {len(contexts)} contexts, fewer than one batch; raise --stream-tokens or lower "
            "--batch-size."
        )
    backend = make_backend(config.backend, hf_model, tokenizer)
    live = LiveActivations(backend, contexts, hooks, config.batch_size, config.seed, placement.device)
    return run, hook_widths(model_dir, hooks), live
