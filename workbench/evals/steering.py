"""Steer the model with one dictionary feature, or ablate it, keeping the dictionary's error term.

As Neuronpedia steers: the hook's activation x becomes x + s * d_f in `add` mode (d_f the feature's unit decoder
row), so the model's output is untouched at s = 0 and nothing else the dictionary misses is lost. In `clamp` mode
the feature's activation is set to s: x becomes decode(f') + (x - decode(f)), the reconstruction with f_F = s plus
the error term x - decode(f), so clamping a feature to the value it already has changes nothing. A transcoder reads
its input hook and its features write into its output hook; both are hooked in the same pass. The first position
(BOS) is never steered: dictionaries are not trained on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from workbench.dictionaries.base import SparseCoder
from workbench.errors import DictionaryError, EvaluationError
from workbench.evals.common import LoadedDictionary
from workbench.evaluate import next_token_ce
from workbench.features import check_feature
from workbench.hooks import HookPoint, parse_hook
from workbench.models.families import decoder_layers, family_of, part
from workbench.store import Store, lookups
from workbench.store.records import DictionaryRecord

MODES = ("add", "clamp")


def _output_module(hf_model: Any, point: HookPoint) -> Any:
    """The module whose output is the activation at `point`, or a clear refusal."""
    blocks = decoder_layers(hf_model)
    if point.kind == "hook_out":
        return blocks[point.layer]
    if point.kind in ("attn.hook_out", "mlp.hook_out"):
        return family_of(hf_model).sublayer_output(blocks[point.layer], point.kind)
    if point.kind == "hook_in":
        return blocks[point.layer - 1] if point.layer > 0 else hf_model.get_input_embeddings()
    raise DictionaryError(
        f"Steering writes into a residual or sublayer output; {point.name} is neither. Steer a dictionary trained "
        "on blocks.{i}.hook_out, hook_in, attn.hook_out or mlp.hook_out, or a transcoder."
    )


def _tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_tensor(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def steering(
    hf_model: Any, record: DictionaryRecord, sae: SparseCoder, feature: int, strength: float, mode: str = "add"
) -> Iterator[None]:
    """While inside, every forward pass of `hf_model` has `feature` steered at every position but the first."""
    if mode not in MODES:
        raise EvaluationError(f"Unknown steering mode '{mode}'; choose one of {', '.join(MODES)}.")
    check_feature(record, feature)
    n_layers = len(decoder_layers(hf_model))
    write_point = parse_hook(record.hook_out or record.hook, n_layers)
    direction = sae.W_dec.detach()[feature].float()
    inputs: dict[str, torch.Tensor] = {}  # a transcoder's input, captured earlier in the same pass
    state = {"prompt_pass": True}  # generation's first pass sees the prompt; later ones one new token each

    def steer(module, args, output):
        x = _tensor(output)
        skip_first = 1 if state["prompt_pass"] else 0
        state["prompt_pass"] = False
        x_rest = x[:, skip_first:].float()
        if mode == "add":
            steered = x_rest + strength * direction
        else:
            source = inputs.pop("x")[:, skip_first:].float() if record.hook_out else x_rest
            f = sae.encode(source)
            clamped = f.clone()
            clamped[..., feature] = strength
            steered = sae.decode(clamped, source) + (x_rest - sae.decode(f, source))
        return _with_tensor(output, torch.cat([x[:, :skip_first], steered.to(x.dtype)], dim=1))

    handles = []
    if mode == "clamp" and record.hook_out:
        read_point = parse_hook(record.hook, n_layers)
        if read_point.kind != "mlp.hook_in":
            raise DictionaryError(f"Clamping a transcoder needs its input at mlp.hook_in, not {read_point.name}.")
        mlp = part(decoder_layers(hf_model)[read_point.layer], "mlp")
        handles.append(mlp.register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0])))
    handles.append(_output_module(hf_model, write_point).register_forward_hook(steer))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class SteerConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name (see the dictionaries table)."""
    feature: int
    """The feature to steer: an index from 0 to the dictionary's width - 1."""
    prompt: str = "The"
    """Text to continue (a BOS is put in front, as harvest frames contexts)."""
    strength: float = 10.0
    """add: how far to move along the feature's unit decoder direction (a residual stream's norm is a useful scale;
    negative steers away); clamp: the value to hold the feature's activation at (0 ablates it)."""
    mode: str = "add"
    """add (x + strength * decoder row) or clamp (the feature's activation set to strength, error term kept)."""
    max_new_tokens: int = 24
    """Tokens to generate, for the unsteered and the steered continuation alike."""
    temperature: float = 0.0
    """0 for greedy decoding (the two continuations then differ only by the steering); above 0 samples."""
    seed: int = 0
    """Sampling seed, shared by both continuations."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EvaluationError(f"Unknown --mode '{self.mode}'; choose one of {', '.join(MODES)}.")
        if self.max_new_tokens < 1:
            raise EvaluationError("--max-new-tokens must be at least 1.")


@dataclass
class SteerResult:
    dictionary: DictionaryRecord
    baseline: str
    """The unsteered continuation."""
    steered: str
    """The continuation with the feature steered."""


@torch.no_grad()
def generate(loaded: LoadedDictionary, ids: torch.Tensor, max_new_tokens: int, temperature: float, seed: int) -> str:
    """A continuation of ids [1, seq]: greedy at temperature 0, else sampled with the seed."""
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    tokenizer = loaded.tokenizer
    out = loaded.hf_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        **sampling,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def run_steer(config: SteerConfig) -> SteerResult:
    """Continue a prompt without and with the feature steered."""
    store = Store.open_existing(config.store)
    loaded = LoadedDictionary.load(store, config.dictionary, config.device, config.dtype)
    check_feature(loaded.record, config.feature)
    ids = loaded.prompt_ids(config.prompt)
    baseline = generate(loaded, ids, config.max_new_tokens, config.temperature, config.seed)
    with steering(loaded.hf_model, loaded.record, loaded.sae, config.feature, config.strength, config.mode):
        steered = generate(loaded, ids, config.max_new_tokens, config.temperature, config.seed)
    return SteerResult(loaded.record, baseline, steered)


@dataclass
class AblateConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name (see the dictionaries table)."""
    feature: int
    """The feature to zero: an index from 0 to the dictionary's width - 1."""
    tokens: int = 4096
    """Tokens of the dictionary's run to measure the loss on."""
    batch_size: int = 8
    """Contexts per forward pass."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""


@dataclass
class AblateResult:
    dictionary: DictionaryRecord
    n_tokens: int
    """Next-token predictions measured."""
    ce_clean: float
    """Mean next-token loss of the unchanged model, nats."""
    ce_ablated: float
    """The same with the feature clamped to 0 at every position (error term kept)."""
    delta_ce_where_active: float | None
    """The loss change at the predictions right after a position where the feature fired; None if it never did."""
    n_active: int
    """Positions where the feature fired."""

    @property
    def delta_ce(self) -> float:
        return self.ce_ablated - self.ce_clean


def run_ablate(config: AblateConfig) -> AblateResult:
    """The change in next-token loss when a feature is zeroed, on the dictionary's own run's contexts."""
    store = Store.open_existing(config.store)
    loaded = LoadedDictionary.load(store, config.dictionary, config.device, config.dtype)
    check_feature(loaded.record, config.feature)
    context_len = lookups.run(store, loaded.record.run).context_len
    contexts = torch.from_numpy(store.contexts(loaded.record.run, max(1, -(-config.tokens // context_len))))
    n_layers = len(decoder_layers(loaded.hf_model))
    read_point = parse_hook(loaded.record.hook, n_layers)
    clean_ce, ablated_ce, active = [], [], []
    captured: dict[str, torch.Tensor] = {}  # the dictionary's input in the clean pass
    if read_point.kind == "mlp.hook_in":  # a transcoder's input: what its MLP reads
        mlp = part(decoder_layers(loaded.hf_model)[read_point.layer], "mlp")
        handle = mlp.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    else:
        module = _output_module(loaded.hf_model, read_point)
        handle = module.register_forward_hook(lambda m, a, out: captured.__setitem__("x", _tensor(out)))
    try:
        with torch.no_grad():
            for start in range(0, len(contexts), config.batch_size):
                batch = contexts[start : start + config.batch_size].to(loaded.hf_model.device)
                clean_ce.append(next_token_ce(loaded.hf_model(batch).logits, batch))
                fired = loaded.sae.encode(captured["x"].float())[..., config.feature] != 0
                fired[:, 0] = False
                active.append(fired[:, :-1].cpu())  # the predictions made where the feature fired
                with steering(loaded.hf_model, loaded.record, loaded.sae, config.feature, 0.0, "clamp"):
                    ablated_ce.append(next_token_ce(loaded.hf_model(batch).logits, batch))
    finally:
        handle.remove()
    clean, ablated, where = torch.cat(clean_ce), torch.cat(ablated_ce), torch.cat(active)
    n_active = int(where.sum())
    return AblateResult(
        dictionary=loaded.record,
        n_tokens=clean.numel(),
        ce_clean=clean.mean().item(),
        ce_ablated=ablated.mean().item(),
        delta_ce_where_active=(ablated - clean)[where].mean().item() if n_active else None,
        n_active=n_active,
    )
