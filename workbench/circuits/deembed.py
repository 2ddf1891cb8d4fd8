"""De-embeddings (Dunefsky et al.): which vocabulary tokens most drive a transcoder feature, directly and through
each attention head's OV circuit, from the weights alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.circuits.replacement import shape_of
from workbench.circuits.tasks import TaskError
from workbench.dictionaries.base import SparseCoder
from workbench.models import families


@dataclass
class DeEmbedding:
    direct: list[
        tuple[str, float]
    ]  # tokens whose embedding most drives the feature straight through the residual stream
    heads: dict[
        tuple[int, int], list[tuple[str, float]]
    ]  # (layer, head) -> tokens that drive it through that head's OV


@torch.no_grad()
def de_embeddings(hf_model: Any, tokenizer, coder: SparseCoder, layer: int, feature: int, n: int = 10) -> DeEmbedding:
    """Which tokens most drive transcoder feature `feature` at MLP `layer`, directly and through each head's OV circuit.

    The norms' gains are folded in and their per-token scales left out (they depend on the context), as in
    Dunefsky et al.'s de-embeddings: score[t] = W_E[t] . r, with r = g_mlp * W_enc[:, f] directly, and
    r = g_attn * W_V[h]^T W_O[h]^T (g_post_attn * g_mlp * W_enc[:, f]) through head h of any layer up to `layer`
    (g_post_attn: Gemma's post-attention norm; 1 elsewhere). W_E includes Gemma's sqrt(d) embedding scale.
    """
    shape = shape_of(hf_model)
    family = shape.family
    if not 0 <= feature < coder.config.n_latents:
        raise TaskError(
            f"Feature {feature} is out of range: the transcoder has features 0 to {coder.config.n_latents - 1}."
        )
    blocks = families.decoder_layers(hf_model)
    embedding = hf_model.get_input_embeddings()
    embed = embedding.weight.float() * float(getattr(embedding, "embed_scale", 1.0))
    reader = coder.W_enc[:, feature].float() * families.norm_gain(families.part(blocks[layer], family.mlp_norm))

    def top(readout: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = (embed @ readout).topk(n)
        return [(tokenizer.decode([i]), v) for i, v in zip(ids.tolist(), values.tolist())]

    heads = {}
    d_head = shape.d_head
    for source in range(layer + 1):
        block = blocks[source]
        attention = families.part(block, family.attention)
        W_O = families.output_weights(attention, family)[0].float()  # [d, H * d_head]
        W_V = families.value_weights(attention, family.qkv_layout, shape.n_heads, d_head)[
            0
        ].float()  # [n_kv * d_head, d]
        into_residual = reader
        if family.post_attn_norm:
            into_residual = reader * families.norm_gain(families.part(block, family.post_attn_norm))
        attn_gain = families.norm_gain(families.part(block, family.attn_norm))
        for head in range(shape.n_heads):
            kv = head // shape.groups
            through = W_O[:, head * d_head : (head + 1) * d_head].T @ into_residual  # [d_head]
            readout = (W_V[kv * d_head : (kv + 1) * d_head].T @ through) * attn_gain
            heads[(source, head)] = top(readout)
    return DeEmbedding(direct=top(reader), heads=heads)
