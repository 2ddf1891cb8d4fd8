"""Measuring codebooks against TokFSM's ground truth: purity per site, and interventions.

An intervention takes contexts that end in state A (at A's last digit) and forces the codes
that state B usually gets, at some sites: at A's last digit only, or at each of A's digits (the
code of B's digit in the same place). Then it asks:
  - how much predicted probability lands on B's successors, and on A's (exactly),
  - the Jensen-Shannon divergence between the predicted next state and B's true transitions,
  - how often a sampled next state is one of B's successors (steering by generation).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workbench.codebooks.attach import CodebookModel, code_purity
from workbench.codebooks.fsm import TokFSM, sample_next_states
from workbench.dictionaries.codebook import CodebookError


@torch.no_grad()
def next_state_probabilities(model: nn.Module, context: torch.Tensor, n_states: int, digits: int) -> torch.Tensor:
    """[batch, n_states]: P(next state = s | context) = P(first digit) * P(second digit | first), for 2-digit states."""
    if digits != 2:
        raise CodebookError("next_state_probabilities handles 2-digit states (up to 100).")
    first = torch.softmax(model(context).logits[:, -1, :10], -1)  # [batch, 10]
    batch = context.shape[0]
    extended = torch.cat([context.repeat_interleave(10, 0), torch.arange(10).repeat(batch)[:, None]], dim=1)
    second = torch.softmax(model(extended).logits[:, -1, :10], -1).reshape(batch, 10, 10)
    joint = (first[:, :, None] * second).reshape(batch, 100)[:, :n_states]
    return joint / joint.sum(-1, keepdim=True)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between rows of p and q."""
    m = (p + q) / 2

    def kl(a, b):
        return (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)

    return (kl(p, m) + kl(q, m)) / 2


def last_digit_positions(fsm: TokFSM, seq_len: int) -> list[int]:
    """Positions of each state's last digit that have a whole next state after them."""
    return list(range(fsm.digits, seq_len - fsm.digits, fsm.digits))


@torch.no_grad()
def site_purities(coded: CodebookModel, tokens: torch.Tensor, states: torch.Tensor) -> dict[str, float]:
    """Per site: the purity of its top code for the true current state (see code_purity)."""
    coded(tokens)
    labels = states.numpy().ravel()
    return {site: code_purity(coded.codes[site][..., 0].numpy().ravel(), labels) for site in coded.sites}


def chance_purity(states: torch.Tensor) -> float:
    """The purity of a code that fires everywhere: the share of the commonest state."""
    labels = states.numpy().ravel()
    labels = labels[labels >= 0]
    return np.bincount(labels).max() / len(labels)


@torch.no_grad()
def state_codes(coded: CodebookModel, fsm: TokFSM, tokens: torch.Tensor, states: torch.Tensor) -> dict[str, np.ndarray]:
    """Per site, [n_states, digits]: the top code that fires most often at each digit of each state."""
    coded(tokens)
    last = last_digit_positions(fsm, tokens.shape[1])
    result = {}
    for site in coded.sites:
        n_codes = coded.bottleneck(site).total_codes
        per_digit = []
        for digit in range(fsm.digits):
            positions = [p - (fsm.digits - 1 - digit) for p in last]
            table = np.zeros((fsm.n_states, n_codes))
            np.add.at(
                table, (states[:, positions].numpy().ravel(), coded.codes[site][:, positions, 0].numpy().ravel()), 1
            )
            per_digit.append(table.argmax(1))
        result[site] = np.stack(per_digit, axis=1)
    return result


@dataclass
class InterventionResult:
    sites: list[str]
    digits: str  # last | all
    n_contexts: int
    on_target: tuple[float, float]  # (before, after): mean predicted mass on B's successors
    on_current: tuple[float, float]  # on A's successors
    js_to_target: tuple[float, float]  # mean JS divergence to B's true transitions
    sampled_target: tuple[float, float]  # share of sampled next states that are B's successors


@torch.no_grad()
def intervene(
    coded: CodebookModel,
    fsm: TokFSM,
    codes_of_state: dict[str, np.ndarray],
    sites: list[str],
    tokens: torch.Tensor,
    states: torch.Tensor,
    position: int,
    seed: int = 0,
    digits: str = "last",
) -> InterventionResult:
    """Force state B's codes at `sites` for a random B != A per context, at `position` (a last digit) or, with
    digits="all", at every digit of the state ending there."""
    if digits not in ("last", "all"):
        raise CodebookError(f"digits must be 'last' or 'all', not '{digits}'.")
    forced_digits = range(fsm.digits) if digits == "all" else [fsm.digits - 1]
    context, current = tokens[:, : position + 1], states[:, position]
    offset = np.random.default_rng(seed).integers(1, fsm.n_states, len(current))
    target = (current + torch.from_numpy(offset)) % fsm.n_states
    truth = torch.from_numpy(fsm.transitions).float()
    before = next_state_probabilities(coded, context, fsm.n_states, fsm.digits)
    sampled_before = sample_next_states(coded, fsm, context, seed=seed)
    after = torch.zeros_like(before)
    sampled_after = torch.zeros_like(sampled_before)
    for state in target.unique().tolist():
        rows = (target == state).nonzero().flatten()
        with ExitStack() as stack:
            for site in sites:
                for digit in forced_digits:
                    at = position - (fsm.digits - 1 - digit)
                    stack.enter_context(coded.forcing(site, int(codes_of_state[site][state, digit]), slice(at, at + 1)))
            after[rows] = next_state_probabilities(coded, context[rows], fsm.n_states, fsm.digits)
            sampled_after[rows] = sample_next_states(coded, fsm, context[rows], seed=seed + state)

    def mass(p, on):
        return (p * (truth[on] > 0)).sum(-1).mean().item()

    def sampled_share(sampled):
        valid = sampled >= 0
        hits = torch.zeros_like(valid)
        hits[valid] = truth[target[valid], sampled[valid]] > 0
        return hits.float().mean().item()

    return InterventionResult(
        sites=sites,
        digits=digits,
        n_contexts=len(context),
        on_target=(mass(before, target), mass(after, target)),
        on_current=(mass(before, current), mass(after, current)),
        js_to_target=(
            js_divergence(before, truth[target]).mean().item(),
            js_divergence(after, truth[target]).mean().item(),
        ),
        sampled_target=(sampled_share(sampled_before), sampled_share(sampled_after)),
    )
