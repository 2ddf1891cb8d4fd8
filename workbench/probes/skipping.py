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

from workbench.probes.distributions import OutputDistribution

_EPS = 1e-12


def relative_update_change(delta_orig: torch.Tensor, delta_skip: torch.Tensor) -> torch.Tensor:
    """Per token; inputs [..., d]."""
    return (delta_orig.double() - delta_skip.double()).norm(dim=-1) / delta_orig.double().norm(dim=-1).clamp_min(_EPS)


def output_change(
    clean: OutputDistribution, logits_skip: torch.Tensor, later: slice, skipped: slice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L2 of the probability change and KL(clean || skip) at the `later` positions, KL at the `skipped` ones), per
    token; logits [batch, positions, vocab], with one log_softmax over both position ranges."""
    log_probs_skip = torch.log_softmax(logits_skip.float(), dim=-1)
    at_later = clean[:, later]
    return (
        at_later.l2_to(log_probs_skip[:, later]),
        at_later.kl_to(log_probs_skip[:, later]),
        clean[:, skipped].kl_to(log_probs_skip[:, skipped]),
    )
