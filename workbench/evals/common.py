"""What every benchmark needs: a dictionary loaded beside its model, activations of token sequences at its hook,
and writing its numbers to `dictionary_scores`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from workbench.corpus import bos_token_id
from workbench.devices import Placement, resolve_placement
from workbench.dictionaries import load_dictionary
from workbench.dictionaries.base import SparseCoder
from workbench.errors import EvaluationError
from workbench.hooks import HookPoint, parse_hook
from workbench.models import load_hf_model, make_backend, resolve_model_dir
from workbench.store import Store, lookups
from workbench.store.records import DictionaryRecord, ScoreRecord, delete, insert


@dataclass
class LoadedDictionary:
    """A dictionary with its model, on one device: what the benchmarks, steering and ablation run."""

    record: DictionaryRecord
    sae: SparseCoder
    hf_model: Any
    tokenizer: Any
    placement: Placement
    backend_name: str = "nnsight"

    @classmethod
    def load(
        cls, store: Store, name: str, device: str = "auto", dtype: str = "auto", backend: str = "nnsight"
    ) -> LoadedDictionary:
        placement = resolve_placement(device, dtype)
        record = lookups.completed_dictionary(store, name)
        run = lookups.run(store, record.run)
        hf_model, tokenizer = load_hf_model(resolve_model_dir(run.model, store.root / "models"), placement)
        sae = load_dictionary(store.root / record.path).eval().to(placement.device)
        return cls(record, sae, hf_model, tokenizer, placement, backend)

    @cached_property
    def backend(self):
        return make_backend(self.backend_name, self.hf_model, self.tokenizer)

    @property
    def point(self) -> HookPoint:
        """Where the dictionary reads (a transcoder's input hook)."""
        return parse_hook(self.record.hook, self.backend.n_layers)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise EvaluationError("The prompt is empty; give some text to continue.")
        return torch.tensor([[bos_token_id(self.tokenizer), *ids]], device=self.hf_model.device)

    @torch.no_grad()
    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """Feature activations [n, latents] of hook activations [n, d], computed on the dictionary's device."""
        out = [self.sae.encode(part.to(self.placement.device).float()).cpu() for part in acts.split(4096)]
        return torch.cat(out) if out else torch.zeros(0, self.record.n_latents)

    @torch.no_grad()
    def sequence_activations(
        self, sequences: Sequence[Sequence[int]], batch_size: int = 32
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(index, activations [len, d] in fp32 on the host) for each token sequence, at the dictionary's hook.

        Sequences are batched by length and padded on the right: under causal attention, padding changes
        nothing before it. Yielded in batches' order, not the input's."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        pad = bos_token_id(self.tokenizer)
        point = self.point
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            width = max(len(sequences[i]) for i in chosen)
            ids = torch.full((len(chosen), width), pad, dtype=torch.long)
            for row, i in enumerate(chosen):
                ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]))
            acts = self.backend.capture(ids.to(self.placement.device), [point])[point].float().cpu()
            for row, i in enumerate(chosen):
                yield i, acts[row, : len(sequences[i])]


_REMEMBERED: dict[tuple, Any] = {}


def remember(key: tuple, compute):
    """compute(), or its value from an earlier call with the same key in this process (the last two are kept).

    The benchmarks' model activations depend only on the model, the hook and the benchmark's settings, not on the
    dictionary: comparing dictionaries of one hook (seed siblings, families) then pays for the forward passes once."""
    if key not in _REMEMBERED:
        while len(_REMEMBERED) >= 2:
            _REMEMBERED.pop(next(iter(_REMEMBERED)))
        _REMEMBERED[key] = compute()
    return _REMEMBERED[key]


def activation_key(loaded: LoadedDictionary, *settings: Any) -> tuple:
    """What a benchmark's activations depend on: the model's folder, the hook, the precision and its settings."""
    run_model = getattr(loaded.hf_model, "name_or_path", "") or str(id(loaded.hf_model))
    return (run_model, loaded.record.hook, loaded.placement.device_name, loaded.placement.dtype_name, *settings)


def replace_scores(store: Store, dictionary: str, benchmark: str, rows: list[ScoreRecord]) -> None:
    """A benchmark's numbers for a dictionary, replacing its earlier ones, in one transaction."""
    with store.transaction() as con:
        delete(con, ScoreRecord, dictionary=dictionary, benchmark=benchmark)
        for row in rows:
            insert(con, row)
