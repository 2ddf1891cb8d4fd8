"""Two hooked-model backends behind one interface.

`capture(input_ids, hooks)` runs the model on a batch, returns the activations
at the given canonical hook points, and stops the forward pass right after the
deepest one: a harvest at layer 6 of 30 does not pay for layers 7-29.
Both backends wrap the same loaded HF model, so they differ only in how they hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from workbench.errors import ModelLoadError
from workbench.hooks import HOOK_KINDS, HookPoint

# Hugging Face models are typed `Any` where their config and attributes are read: these are per-architecture
# attributes that torch's stubs type as `Tensor | Module`.

BACKENDS = ("transformerlens", "nnsight")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once everything needed is captured."""


def find_module(hf_model: nn.Module, paths: Sequence[str], kind: type[nn.Module] = nn.Module) -> nn.Module | None:
    """The first of the dotted attribute paths that exists on the model and is a `kind`, else None.

    HF architectures name the same part differently (model.layers, transformer.h, ...).
    """
    for path in paths:
        module: Any = hf_model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, kind):
            return module
    return None


def decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a HF causal LM (Llama/Mistral/Qwen, GPT-2, GPT-NeoX)."""
    layers = find_module(
        hf_model, ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"), nn.ModuleList
    )
    if layers is not None:
        return cast(nn.ModuleList, layers)  # find_module returns only instances of `kind`
    raise ModelLoadError(
        f"Cannot find the transformer blocks of {type(hf_model).__name__}; supported layouts: Llama-like, GPT-2, GPT-NeoX."
    )


def attention_name(block: nn.Module) -> str:
    for name in ("self_attn", "attn", "attention"):
        if hasattr(block, name):
            return name
    raise ModelLoadError(f"Cannot find the attention module of {type(block).__name__}.")


def output_projection_name(attention: nn.Module) -> str:
    """The attribute name of the attention's output projection, whose input is attn.hook_z."""
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        if isinstance(getattr(attention, name, None), nn.Module):
            return name
    raise ModelLoadError(f"Cannot find the output projection of {type(attention).__name__} (for attn.hook_z).")


def attention_heads(hf_model: Any) -> tuple[int, int]:
    """(n_heads, d_head) of the model's attention: the layout of attn.hook_z's last dimension."""
    config = hf_model.config
    n_heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    d_head = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    return n_heads, d_head


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass(frozen=True)
class LayerSkip:
    """Make block `layer` pass its input through unchanged at positions first..end-1.

    This is the layer-skipping intervention of Csordás et al. (2025). Position 0 (the BOS)
    is left alone by default, as in their code, because models park attention there.
    """

    layer: int
    end: int
    first: int = 1


@dataclass(frozen=True)
class Patch:
    """Replace the activation at `hook` with fn(activation at `source`); source defaults to hook.

    Splicing an SAE's reconstruction is Patch(h, sae.reconstruct). A transcoder reads the MLP
    input and replaces the MLP output: Patch(mlp.hook_out, tc.reconstruct, source=mlp.hook_in).
    """

    hook: HookPoint
    fn: Callable[[torch.Tensor], torch.Tensor]
    source: HookPoint | None = None


@dataclass
class ForwardResult:
    acts: dict[HookPoint, torch.Tensor]
    logits: torch.Tensor | None  # [batch, seq, vocab], when asked for


class Backend(ABC):
    name: str

    def __init__(self, hf_model: Any, tokenizer):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.n_layers = len(decoder_layers(hf_model))
        self.d_model = int(hf_model.config.hidden_size)

    @abstractmethod
    def run(
        self,
        input_ids: torch.Tensor,
        hooks: Sequence[HookPoint],
        *,
        logits: bool = False,
        skip: LayerSkip | None = None,
        patch: Patch | None = None,
    ) -> ForwardResult:
        """One forward pass: activations [batch, seq, d] at each hook, optionally with a layer skipped.

        Without `logits` the pass stops right after the deepest hook. The activation
        captured at the skipped block's hook_out is the one after the skip.
        """

    def capture(self, input_ids: torch.Tensor, hooks: Sequence[HookPoint]) -> dict[HookPoint, torch.Tensor]:
        """Activations at each hook, from one forward pass stopped after the deepest hook."""
        return self.run(input_ids, hooks).acts


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """The bridge hands attn.hook_z over as [batch, seq, heads, d_head]; the store's layout has the heads side by side."""
    return tensor.flatten(2) if tensor.dim() == 4 else tensor


class TransformerLensBackend(Backend):
    name = "transformerlens"

    def __init__(self, hf_model: Any, tokenizer):
        super().__init__(hf_model, tokenizer)
        from transformer_lens.model_bridge import TransformerBridge

        self.bridge = TransformerBridge.boot_transformers(
            hf_model.name_or_path, hf_model=hf_model, tokenizer=tokenizer, device=hf_model.device
        )

    @torch.no_grad()
    def run(self, input_ids, hooks, *, logits=False, skip=None, patch=None):
        captured: dict[HookPoint, torch.Tensor] = {}
        deepest = max(hooks, key=lambda h: h.forward_order) if hooks else None
        fwd_hooks = []
        if patch is not None:
            source = patch.source or patch.hook
            sourced = {}
            if source != patch.hook:
                fwd_hooks.append((source.name, lambda tensor, hook: sourced.__setitem__("x", _flat(tensor))))

            def replace(tensor, hook):
                new = patch.fn(sourced["x"] if source != patch.hook else _flat(tensor))
                return new.reshape(tensor.shape).to(tensor.dtype)

            fwd_hooks.append((patch.hook.name, replace))
        if skip is not None:
            block_input = {}

            def remember_input(tensor, hook):
                block_input["x"] = tensor

            def pass_input_through(tensor, hook):
                tensor = tensor.clone()
                tensor[:, skip.first : skip.end] = block_input["x"][:, skip.first : skip.end]
                return tensor

            # Registered before the capturing hooks, which therefore see the skipped output.
            fwd_hooks += [
                (f"blocks.{skip.layer}.hook_in", remember_input),
                (f"blocks.{skip.layer}.hook_out", pass_input_through),
            ]

        def make_hook(point: HookPoint):
            def save(tensor, hook):
                captured[point] = _flat(tensor).detach().clone()
                if point == deepest and not logits:
                    raise _StopForward

            return save

        fwd_hooks += [(p.name, make_hook(p)) for p in hooks]
        output = None
        try:
            output = self.bridge.run_with_hooks(
                input_ids, fwd_hooks=fwd_hooks, return_type="logits" if logits else None
            )
        except _StopForward:
            pass
        finally:
            self.bridge.reset_hooks()
        return ForwardResult(captured, output.detach() if logits else None)


class NNsightBackend(Backend):
    name = "nnsight"

    def __init__(self, hf_model: Any, tokenizer):
        super().__init__(hf_model, tokenizer)
        from nnsight import TransformersModel

        # nnsight 0.8 deprecates LanguageModel, which was this class pinned to the text-generation task;
        # naming the task keeps exactly what LanguageModel built.
        self.lm = TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")
        self._layers_path = self._find_layers_path()
        self._attn_name = attention_name(decoder_layers(hf_model)[0])
        self._o_proj_name = output_projection_name(getattr(decoder_layers(hf_model)[0], self._attn_name))

    def _find_layers_path(self) -> list[str]:
        layers = decoder_layers(self.hf_model)
        for name, module in self.hf_model.named_modules():
            if module is layers:
                return name.split(".")
        raise ModelLoadError("nnsight backend: cannot locate the transformer blocks")

    def _block(self, layer: int):
        envoy = self.lm
        for attr in self._layers_path:
            envoy = getattr(envoy, attr)
        return envoy[layer]

    def _value(self, point: HookPoint):
        block = self._block(point.layer)
        if point.kind == "hook_in":
            return block.input
        if point.kind == "attn.hook_z":
            return getattr(getattr(block, self._attn_name), self._o_proj_name).input
        if point.kind == "attn.hook_out":
            return _first(getattr(block, self._attn_name).output)
        if point.kind == "mlp.hook_in":
            return block.mlp.input
        if point.kind == "mlp.hook_out":
            return block.mlp.output
        return _first(block.output)

    def _skip(self, skip: LayerSkip, block_input) -> None:
        block = self._block(skip.layer)
        output = _first(block.output)
        output[:, skip.first : skip.end] = block_input[:, skip.first : skip.end]

    def _patch_in_trace(self, patch: Patch) -> None:
        block = self._block(patch.hook.layer)
        source = patch.source or patch.hook
        if source.forward_order > patch.hook.forward_order:
            raise ValueError("A patch's source must come before the hook it replaces.")
        if patch.hook.kind in ("hook_in", "mlp.hook_in", "attn.hook_z"):
            module = {
                "hook_in": block,
                "mlp.hook_in": block.mlp,
                "attn.hook_z": getattr(getattr(block, self._attn_name), self._o_proj_name),
            }[patch.hook.kind]
            module.input = patch.fn(module.input if source == patch.hook else self._value(source))
        elif patch.hook.kind == "mlp.hook_out":
            value = self._value(source) if source != patch.hook else block.mlp.output
            block.mlp.output = patch.fn(value)
        elif patch.hook.kind == "attn.hook_out":
            attention = getattr(block, self._attn_name)
            value = self._value(source) if source != patch.hook else _first(attention.output)
            _first(attention.output)[:] = patch.fn(value)
        else:
            value = self._value(source) if source != patch.hook else _first(block.output)
            _first(block.output)[:] = patch.fn(value)

    @torch.no_grad()
    def run(self, input_ids, hooks, *, logits=False, skip=None, patch=None):
        if patch is not None:
            if hooks or skip:
                raise ValueError(
                    "The nnsight backend patches in a pass of its own: give no hooks or skip with a patch."
                )
            with self.lm.trace(input_ids):
                self._patch_in_trace(patch)
                saved_logits = self.lm.output.logits.save()
            return ForwardResult({}, getattr(saved_logits, "value", saved_logits).detach() if logits else None)
        saved = {}
        # nnsight requires modules to be read in forward order, so the skip's two steps
        # (read the block's input, overwrite its output) are slotted into the hook order.
        ordered = sorted(hooks, key=lambda h: h.forward_order)
        skip_read = (skip.layer, HOOK_KINDS.index("hook_in")) if skip else None
        skip_write = (skip.layer, HOOK_KINDS.index("hook_out")) if skip else None
        with self.lm.trace(input_ids) as tracer:
            block_input = None
            for point in ordered:
                if skip and block_input is None and point.forward_order > skip_read:
                    block_input = self._block(skip.layer).input
                if skip and skip_write is not None and point.forward_order >= skip_write:
                    self._skip(skip, block_input)
                    skip_write = None
                if skip and point.forward_order == skip_read:
                    block_input = self._block(skip.layer).input
                    saved[point] = block_input.save()
                else:
                    saved[point] = self._value(point).save()
            if skip and block_input is None:
                block_input = self._block(skip.layer).input
            if skip and skip_write is not None:
                self._skip(skip, block_input)
            if logits:
                saved_logits = self.lm.output.logits.save()
            else:
                tracer.stop()
        acts = {point: getattr(value, "value", value).detach().clone() for point, value in saved.items()}
        return ForwardResult(acts, getattr(saved_logits, "value", saved_logits).detach() if logits else None)


def make_backend(name: str, hf_model: nn.Module, tokenizer) -> Backend:
    if name == "transformerlens":
        return TransformerLensBackend(hf_model, tokenizer)
    if name == "nnsight":
        return NNsightBackend(hf_model, tokenizer)
    raise ValueError(f"Unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")


@torch.no_grad()
def bare_forward(hf_model: nn.Module, input_ids: torch.Tensor, stop_layer: int) -> None:
    """The plain HF forward pass with no hooking library, stopped after block `stop_layer`.

    The baseline that bench/harvest.py measures a harvest against.
    """

    def stop(module, args, output):
        raise _StopForward

    handle = decoder_layers(hf_model)[stop_layer].register_forward_hook(stop)
    try:
        hf_model(input_ids)
    except _StopForward:
        pass
    finally:
        handle.remove()
