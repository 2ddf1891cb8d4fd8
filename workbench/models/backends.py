"""Two hooked-model backends behind one interface.

`capture(input_ids, hooks)` runs the model on a batch, returns the activations
at the given canonical hook points, and stops the forward pass right after the
deepest one: a harvest at layer 6 of 30 does not pay for layers 7-29.
Both backends wrap the same loaded HF model, so they differ only in how they hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from workbench.errors import ModelLoadError
from workbench.hooks import HookPoint

BACKENDS = ("transformerlens", "nnsight")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once everything needed is captured."""


def decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a HF causal LM (Llama/Mistral/Qwen, GPT-2, GPT-NeoX)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module = hf_model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ModelLoadError(f"Cannot find the transformer blocks of {type(hf_model).__name__}; supported layouts: Llama-like, GPT-2, GPT-NeoX.")


def _attention_name(block: nn.Module) -> str:
    for name in ("self_attn", "attn", "attention"):
        if hasattr(block, name):
            return name
    raise ModelLoadError(f"Cannot find the attention module of {type(block).__name__}.")


def _first(output):
    return output[0] if isinstance(output, tuple) else output


class Backend(ABC):
    name: str

    def __init__(self, hf_model: nn.Module, tokenizer):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.n_layers = len(decoder_layers(hf_model))
        self.d_model = int(hf_model.config.hidden_size)

    @abstractmethod
    def capture(self, input_ids: torch.Tensor, hooks: Sequence[HookPoint]) -> dict[HookPoint, torch.Tensor]:
        """Activations [batch, seq, d] at each hook, from one forward pass stopped after the deepest hook."""


class TransformerLensBackend(Backend):
    name = "transformerlens"

    def __init__(self, hf_model: nn.Module, tokenizer):
        super().__init__(hf_model, tokenizer)
        from transformer_lens.model_bridge import TransformerBridge

        self.bridge = TransformerBridge.boot_transformers(
            hf_model.name_or_path, hf_model=hf_model, tokenizer=tokenizer, device=hf_model.device
        )

    @torch.no_grad()
    def capture(self, input_ids, hooks):
        captured: dict[HookPoint, torch.Tensor] = {}
        deepest = max(hooks, key=lambda h: h.forward_order)

        def make_hook(point: HookPoint):
            def save(tensor, hook):
                captured[point] = tensor.detach().clone()
                if point == deepest:
                    raise _StopForward
                return tensor

            return save

        try:
            self.bridge.run_with_hooks(input_ids, fwd_hooks=[(p.name, make_hook(p)) for p in hooks])
        except _StopForward:
            pass
        finally:
            self.bridge.reset_hooks()
        return captured


class NNsightBackend(Backend):
    name = "nnsight"

    def __init__(self, hf_model: nn.Module, tokenizer):
        super().__init__(hf_model, tokenizer)
        from nnsight import LanguageModel

        self.lm = LanguageModel(hf_model, tokenizer=tokenizer)
        self._layers_path = self._find_layers_path()
        self._attn_name = _attention_name(decoder_layers(hf_model)[0])

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
        if point.kind == "attn.hook_out":
            return _first(getattr(block, self._attn_name).output)
        if point.kind == "mlp.hook_in":
            return block.mlp.input
        if point.kind == "mlp.hook_out":
            return block.mlp.output
        return _first(block.output)

    @torch.no_grad()
    def capture(self, input_ids, hooks):
        saved = {}
        # nnsight requires modules to be read in forward order.
        ordered = sorted(hooks, key=lambda h: h.forward_order)
        with self.lm.trace(input_ids) as tracer:
            for point in ordered:
                saved[point] = self._value(point).save()
            tracer.stop()
        return {point: getattr(value, "value", value).detach().clone() for point, value in saved.items()}


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
