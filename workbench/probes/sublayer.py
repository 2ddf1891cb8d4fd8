"""Probe 1: how large are each sublayer's writes relative to the residual stream, and how aligned?

For block l with residual input h, attention output a, MLP output m and output h_next:
    attn_norm_ratio   ||a|| / ||h||
    mlp_norm_ratio    ||m|| / ||h + a||
    layer_norm_ratio  ||a + m|| / ||h||
    cos_attn_resid    cos(a, h)
    cos_mlp_resid     cos(m, h + a)
    cos_layer_resid   cos(a + m, h)
    cos_next_resid    cos(h_next, h)
each per token (every position but the BOS), then averaged and maxed over tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUBLAYER_METRICS = (
    "attn_norm_ratio",
    "mlp_norm_ratio",
    "layer_norm_ratio",
    "cos_attn_resid",
    "cos_mlp_resid",
    "cos_layer_resid",
    "cos_next_resid",
)
_EPS = 1e-12


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return numerator.norm(dim=-1) / denominator.norm(dim=-1).clamp_min(_EPS)


def sublayer_measures(
    h: torch.Tensor, a: torch.Tensor, m: torch.Tensor, h_next: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-token measures; inputs are [..., d] and the outputs [...]."""
    h, a, m, h_next = (t.double() for t in (h, a, m, h_next))
    mid = h + a
    update = a + m
    return {
        "attn_norm_ratio": _ratio(a, h),
        "mlp_norm_ratio": _ratio(m, mid),
        "layer_norm_ratio": _ratio(update, h),
        "cos_attn_resid": F.cosine_similarity(a, h, dim=-1, eps=_EPS),
        "cos_mlp_resid": F.cosine_similarity(m, mid, dim=-1, eps=_EPS),
        "cos_layer_resid": F.cosine_similarity(update, h, dim=-1, eps=_EPS),
        "cos_next_resid": F.cosine_similarity(h_next, h, dim=-1, eps=_EPS),
    }
