"""The codebook bottleneck on planted clusters: recovery, straight-through gradients, dead codes, bad input."""

import pytest
import torch

from workbench.dictionaries.codebook import CodebookBottleneck, CodebookError


def _clusters(n_clusters=16, d=32, per_cluster=200, noise=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, d, generator=generator)
    labels = torch.arange(n_clusters).repeat_interleave(per_cluster)
    x = (
        centres[labels]
        + noise * torch.randn(len(labels), d, generator=generator) * centres.norm(dim=1, keepdim=True)[labels] / d**0.5
    )
    return x, labels, centres


def test_kmeans_init_recovers_planted_clusters_and_codes_are_pure():
    x, labels, centres = _clusters()
    bottleneck = CodebookBottleneck(32, 16, k=1)
    bottleneck.kmeans_init(x)
    codes = bottleneck.eval()(x).codes_BK[:, 0]
    # Each cluster maps to one code, and each code to one cluster (purity and coverage).
    purity = sum(torch.bincount(codes[labels == c]).max().item() for c in range(16)) / len(x)
    assert purity > 0.97
    assert len(set(codes.tolist())) >= 15
    # A code vector sits at its cluster's centre, so the quantised output reconstructs x.
    out = bottleneck(x)
    assert out.recon_loss.item() < 0.05 * x.pow(2).sum(-1).mean().item()


def test_gradient_is_straight_through_for_x_and_exact_for_the_chosen_codes():
    bottleneck = CodebookBottleneck(8, 10, k=3)
    x = torch.randn(5, 8, requires_grad=True)
    out = bottleneck(x)
    weights = torch.randn(5, 8)
    (out.out_BD * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # identity Jacobian for the input
    chosen = set(out.codes_BK.reshape(-1).tolist())
    for code in range(10):
        expected = sum(weights[b] for b in range(5) if code in out.codes_BK[b].tolist())
        assert (
            torch.allclose(bottleneck.codebook.grad[code], torch.as_tensor(expected, dtype=torch.float32))
            if code in chosen
            else bottleneck.codebook.grad[code].abs().max() == 0
        )
    # The forward value is the sum of the chosen codes; mean divides it by k.
    assert torch.allclose(out.out_BD, bottleneck.codebook[out.codes_BK].sum(1))
    mean = CodebookBottleneck(8, 10, k=3, reduce="mean")
    mean.load_state_dict(bottleneck.state_dict())
    assert torch.allclose(mean(x).out_BD, out.out_BD / 3)


def test_dead_codes_are_reseeded_from_recent_activations():
    x, _, _ = _clusters(n_clusters=4, d=16, per_cluster=50)
    bottleneck = CodebookBottleneck(16, 12, k=1)
    bottleneck.kmeans_init(torch.cat([x, torch.randn(8, 16) * 10]))  # some codes land far from the data
    bottleneck.train()
    for _ in range(5):
        bottleneck(x)
    dead_before = int((bottleneck.since_used >= 500).sum())
    assert dead_before > 0
    replaced = bottleneck.replace_dead(x, window_tokens=500)
    assert replaced == dead_before and int((bottleneck.since_used >= 500).sum()) == 0
    # The re-seeded codes are activations that were seen.
    exact = (bottleneck.codebook.detach()[:, None] - x[None]).abs().amax(-1).min(dim=1).values == 0
    assert int(exact.sum()) >= replaced


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d=8, n_codes=4, k=5), "k must be between 1 and the codebook size"),
        (dict(d=8, n_codes=4, k=0), "k must be between 1 and the codebook size"),
        (dict(d=8, n_codes=4, k=1, reduce="max"), "reduce must be"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(CodebookError, match=message):
        CodebookBottleneck(**kwargs)


def test_wrong_width_and_too_few_activations_are_refused():
    bottleneck = CodebookBottleneck(8, 4)
    with pytest.raises(CodebookError, match="8-dimensional"):
        bottleneck(torch.randn(2, 6))
    with pytest.raises(CodebookError, match="at least 4 activations"):
        bottleneck.kmeans_init(torch.randn(3, 8))
