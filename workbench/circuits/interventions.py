"""Checking a graph's claims on the real model: change features, see what the model does, compare with the graph.

A feature node (layer l, position p, feature f, activation a) scaled by s changes what layer l's MLP writes at p by
(s - 1) * a * W_dec[f] (a cross-layer transcoder's feature: what every layer it decodes into writes); the rest of the MLP's output,
its other features and its error, is kept. In the real model attention patterns, norms and every later MLP respond.
The graph predicts the change of a target linearly: the direct edge per unit activation, plus the paths through
later features (each passes a change of its pre-activation on one for one, as an active ReLU, JumpReLU or TopK
feature does), with attention and norms frozen.

    actual     run_model_with(hf_model, ids, readers, additions)   the model's targets with MLP outputs changed
    predicted  predicted_changes(graph, deltas)                     the graph's linear prediction
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from workbench.circuits.graph import AttributionGraph, influence, normalised
from workbench.circuits.replacement import Replacement
from workbench.models import families

Reader = Callable[
    [list[torch.Tensor], torch.Tensor], torch.Tensor
]  # (residuals after each block, normed last) -> value


def _mlp_writer(block: Any, family: families.Family) -> Any:
    """The module whose output is mlp.hook_out: Gemma's post-MLP norm, else the MLP."""
    return families.part(block, family.post_mlp_norm) if family.post_mlp_norm else block.mlp


def _output_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def run_model_with(
    hf_model: Any, ids: torch.Tensor, readers: list[Reader], additions: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each reader's value, the last position's logits) from the real model, with additions[layer] [seq, d] added
    to that layer's mlp.hook_out."""
    family = families.family_of(hf_model)
    blocks = families.decoder_layers(hf_model)
    residuals: list[torch.Tensor] = [torch.empty(0)] * len(blocks)
    normed: list[torch.Tensor] = []
    handles = []

    def add(layer: int):
        def hook(module, inputs, output):
            return output + additions[layer].to(output.dtype)

        return hook

    def keep(layer: int):
        def hook(module, inputs, output):
            residuals[layer] = _output_tensor(output)[0].float()

        return hook

    try:
        for layer, block in enumerate(blocks):
            if layer in additions:
                handles.append(_mlp_writer(block, family).register_forward_hook(add(layer)))
            handles.append(block.register_forward_hook(keep(layer)))
        final = families.part(hf_model, family.final_norm)
        handles.append(final.register_forward_hook(lambda m, i, o: normed.append(_output_tensor(o)[0, -1].float())))
        logits = hf_model(ids).logits[0, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([read(residuals, normed[-1]) for read in readers]), logits


def feature_additions(
    replacement: Replacement, changes: list[tuple[int, int, int, float]], seq: int, d_model: int
) -> dict[int, torch.Tensor]:
    """additions[layer] [seq, d] for (layer, position, feature, change of activation) tuples."""
    additions: dict[int, torch.Tensor] = {}
    for layer, position, feature, change in changes:
        for target, direction in replacement.writes(layer, feature).items():
            additions.setdefault(target, torch.zeros(seq, d_model))[position] += change * direction.detach().float()
    return additions


def predicted_changes(graph: AttributionGraph, deltas: dict[int, float]) -> np.ndarray:
    """The change of every node's input [nodes] that the graph predicts when the feature nodes deltas' keys are set
    to their activation plus deltas[node] (module docstring); read the targets' rows. An intervened feature stays
    at its set value; every other feature passes its input's change on."""
    change = np.zeros(len(graph.nodes))
    # Features are in layer order and a feature feeds only later layers, so one pass in node order sees each
    # feature's input change complete before passing it on.
    for index in np.flatnonzero(graph.kinds == "feature"):
        passed = deltas.get(int(index), change[index])
        if passed:
            change += graph.per_unit[:, index].astype(np.float64) * passed
    return change


def faithfulness(
    hf_model: Any,
    ids: torch.Tensor,
    graph: AttributionGraph,
    replacement: Replacement,
    reader: Reader,
    top: int = 10,
) -> tuple[float, np.ndarray, np.ndarray]:
    """(Pearson correlation, predicted, actual) of the first target's change when each of the graph's `top` most
    influential features is ablated alone; NaN where fewer than 3 features or no variance."""
    kinds = graph.kinds
    node_influence = influence(normalised(graph.adjacency), graph.target_weights)
    features = np.flatnonzero(kinds == "feature")
    chosen = features[np.argsort(-node_influence[features], kind="stable")][:top]
    target = int(np.flatnonzero(kinds == "logit")[0])
    base, _ = run_model_with(hf_model, ids, [reader], {})
    predicted, actual = [], []
    for index in chosen:
        node = graph.nodes[index]
        assert node.feature is not None
        delta = -node.activation
        predicted.append(predicted_changes(graph, {int(index): delta})[target])
        width = hf_model.get_input_embeddings().weight.shape[1]
        additions = feature_additions(
            replacement, [(node.layer, node.position, node.feature, delta)], ids.shape[1], width
        )
        value, _ = run_model_with(hf_model, ids, [reader], additions)
        actual.append(float(value[0] - base[0]))
    predicted_array, actual_array = np.array(predicted), np.array(actual)
    if len(chosen) < 3 or predicted_array.std() == 0 or actual_array.std() == 0:
        return float("nan"), predicted_array, actual_array
    return float(np.corrcoef(predicted_array, actual_array)[0, 1]), predicted_array, actual_array
