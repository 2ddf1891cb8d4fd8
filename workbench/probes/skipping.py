"""Probe 2: skip a layer at the positions before t, and measure what changes at positions >= t.

Skipping block s (its output made equal to its input, at positions 1..t-1) leaves the
residual stream at positions >= t untouched until attention reads the changed earlier
positions. For every later block l the probe measures
    ||Delta_l^orig - Delta_l^skip|| / ||Delta_l^orig||,   Delta_l = h_{l+1} - h_l,
per token at positions >= t, and the change in the output distribution there: the L2
norm of the probability change and KL(orig || skip). One extra forward pass per skipped
layer; the clean pass is shared with the other probes.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def relative_update_change(delta_orig: torch.Tensor, delta_skip: torch.Tensor) -> torch.Tensor:
    """Per token; inputs [..., d]."""
    return (delta_orig.double() - delta_skip.double()).norm(dim=-1) / delta_orig.double().norm(dim=-1).clamp_min(_EPS)


def output_change(log_probs_orig: torch.Tensor, logits_skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2 of the probability change, KL(orig || skip)) per token; inputs [..., vocab]."""
    log_probs_skip = torch.log_softmax(logits_skip.float(), dim=-1)
    probs_orig = log_probs_orig.exp()
    l2 = (probs_orig - log_probs_skip.exp()).norm(dim=-1)
    kl = (probs_orig * (log_probs_orig - log_probs_skip)).sum(-1).clamp_min(0)
    return l2, kl
