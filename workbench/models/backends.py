"""Two hooked-model backends behind one interface.

`capture(input_ids, hooks)` runs the model on a batch, returns the activations
at the given canonical hook points, and stops the forward pass right after the
deepest one: a harvest at layer 6 of 30 does not pay for layers 7-29.
Both backends wrap the same loaded HF model, so they differ only in how they hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.hooks import HOOK_KINDS, HookPoint
from workbench.models.families import decoder_layers, family_of

# Hugging Face models are typed `Any` where their config and attributes are read: these are per-architecture
# attributes that torch's stubs type as `Tensor | Module`.

BACKENDS = ("transformerlens", "nnsight")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once everything needed is captured."""


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass(frozen=True)
class LayerSkip:
    """Make block `layer` pass its input through unchanged at positions first..end-1.

    This is the layer-skipping intervention of Csordás et al. (2025). Position 0 (the BOS)
    is left alone by default, as in their code, because models park attention there.

    `resume` = (block input, block output) of `layer` from a clean pass on the same batch: blocks 0..layer then
    do not run again (they would compute exactly these); the pass starts from them. Activations captured at
    blocks before `layer` are then meaningless.
    """

    layer: int
    end: int
    first: int = 1
    resume: tuple[torch.Tensor, torch.Tensor] | None = None


def _resumed_outputs(skip: LayerSkip, hooks: Sequence[HookPoint]) -> list[torch.Tensor]:
    """With skip.resume: what blocks 0..skip.layer return instead of running. Those before the skipped block return
    its clean input (its own input then is that); the skipped block returns its clean output with its input passed
    through at the skipped positions, which is the skip itself."""
    assert skip.resume is not None
    if any(point.layer <= skip.layer for point in hooks):
        raise ValueError("A skip pass resumed from a clean pass has no activations at or before the skipped layer.")
    block_input, block_output = skip.resume
    skipped = block_output.clone()
    skipped[:, skip.first : skip.end] = block_input[:, skip.first : skip.end]
    return [block_input] * skip.layer + [skipped]


@contextmanager
def _blocks_return(hf_model: nn.Module, outputs: list[torch.Tensor]):
    """For one pass, block i returns outputs[i] without running (the TransformerLens backend's LayerSkip.resume).

    Every supported family's blocks return a plain tensor (transformers 5). An instance-level forward that someone
    else installed is put back afterwards."""
    # The bridge wraps each HF block in a BlockBridge that forwards attribute writes; stub the HF block itself, through
    # __dict__ so that no wrapper's __setattr__ is involved.
    blocks = [getattr(layer, "original_component", layer) for layer in decoder_layers(hf_model)[: len(outputs)]]
    previous = [block.__dict__.get("forward") for block in blocks]
    for block, value in zip(blocks, outputs):
        block.__dict__["forward"] = lambda *args, _value=value, **kwargs: _value
    try:
        yield
    finally:
        for block, forward in zip(blocks, previous):
            if forward is None:
                del block.__dict__["forward"]
            else:
                block.__dict__["forward"] = forward


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
        self.family = family_of(hf_model)
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

    def _bridge_name(self, point: HookPoint) -> str:
        """The bridge's name for a hook: its attn/mlp.hook_out is the sublayer's own output, before Gemma's post-norms,
        which our hook_out includes (families.py), so those two read the post-norms' outputs there."""
        post = {"attn.hook_out": self.family.post_attn_norm, "mlp.hook_out": self.family.post_mlp_norm}
        if post.get(point.kind):
            return f"blocks.{point.layer}.{'ln1_post' if point.kind == 'attn.hook_out' else 'ln2_post'}.hook_out"
        return point.name

    @torch.no_grad()
    def run(self, input_ids, hooks, *, logits=False, skip=None, patch=None):
        captured: dict[HookPoint, torch.Tensor] = {}
        deepest = max(hooks, key=lambda h: h.forward_order) if hooks else None
        fwd_hooks = []
        if patch is not None:
            source = patch.source or patch.hook
            sourced = {}
            if source != patch.hook:
                fwd_hooks.append(
                    (self._bridge_name(source), lambda tensor, hook: sourced.__setitem__("x", _flat(tensor)))
                )

            def replace(tensor, hook):
                new = patch.fn(sourced["x"] if source != patch.hook else _flat(tensor))
                return new.reshape(tensor.shape).to(tensor.dtype)

            fwd_hooks.append((self._bridge_name(patch.hook), replace))
        resumed = _resumed_outputs(skip, hooks) if skip is not None and skip.resume is not None else []
        if skip is not None and not resumed:
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

        fwd_hooks += [(self._bridge_name(p), make_hook(p)) for p in hooks]
        output = None
        try:
            with _blocks_return(self.hf_model, resumed):
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
        self._layers_path = self.family.layers.split(".")

    def _block(self, layer: int):
        envoy = self.lm
        for attr in self._layers_path:
            envoy = getattr(envoy, attr)
        return envoy[layer]

    def _sublayer_output(self, block, kind: str):
        """The envoy whose output is attn.hook_out or mlp.hook_out (a post-norm where the family has one)."""
        if kind == "attn.hook_out":
            return getattr(block, self.family.post_attn_norm or self.family.attention)
        return getattr(block, self.family.post_mlp_norm or "mlp")

    def _out_projection(self, block):
        return getattr(getattr(block, self.family.attention), self.family.out_proj)

    def _value(self, point: HookPoint):
        block = self._block(point.layer)
        if point.kind == "hook_in":
            return block.input
        if point.kind == "attn.hook_z":
            return self._out_projection(block).input
        if point.kind in ("attn.hook_out", "mlp.hook_out"):
            return _first(self._sublayer_output(block, point.kind).output)
        if point.kind == "mlp.hook_in":
            return block.mlp.input
        return _first(block.output)

    def _run_resumed(self, input_ids, ordered: list[HookPoint], logits: bool, skip: LayerSkip) -> ForwardResult:
        """A skip pass that starts from a clean pass's residual (LayerSkip.resume): blocks 0..layer are skipped."""
        outputs = _resumed_outputs(skip, ordered)
        saved, saved_logits = {}, None
        with self.lm.trace(input_ids) as tracer:
            for index, value in enumerate(outputs):
                self._block(index).skip(value)
            for point in ordered:
                saved[point] = self._value(point).save()
            if logits:
                saved_logits = self.lm.output.logits.save()
            else:
                tracer.stop()
        return _collected(saved, saved_logits)

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
                "attn.hook_z": self._out_projection(block),
            }[patch.hook.kind]
            module.input = patch.fn(module.input if source == patch.hook else self._value(source))
        elif patch.hook.kind in ("attn.hook_out", "mlp.hook_out"):
            module = self._sublayer_output(block, patch.hook.kind)
            value = self._value(source) if source != patch.hook else _first(module.output)
            if isinstance(module.output, tuple):  # attention returns (output, weights)
                module.output[0][:] = patch.fn(value)
            else:
                module.output = patch.fn(value)
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
        saved, saved_logits = {}, None
        # nnsight requires modules to be read in forward order, so the skip's two steps
        # (read the block's input, overwrite its output) are slotted into the hook order.
        ordered = sorted(hooks, key=lambda h: h.forward_order)
        if skip is not None and skip.resume is not None:
            return self._run_resumed(input_ids, ordered, logits, skip)
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
        return _collected(saved, saved_logits)


def _collected(saved: dict, saved_logits) -> ForwardResult:
    """The values an nnsight trace saved (proxies before nnsight 0.5, plain tensors after), detached."""
    acts = {point: getattr(value, "value", value).detach().clone() for point, value in saved.items()}
    logits = None if saved_logits is None else getattr(saved_logits, "value", saved_logits).detach()
    return ForwardResult(acts, logits)


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
