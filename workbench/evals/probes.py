"""The linear probes the benchmarks fit, as SAEBench fits them.

Every probe is scikit-learn's L2-regularised LogisticRegression (lbfgs), as SAEBench's k-sparse probes are. SAEBench
trains its dense letter probes with Adam instead; lbfgs's minimum-norm solution keeps the probe's direction on the
signal (an Adam-trained probe spread 85% of its norm over irrelevant directions on planted data, which hid absorbers
whose cosine with it fell under 0.1). The L1 probe that ranks features for the splits stays in torch (Adam), as
SAEBench's does: it only orders features.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression


def train_linear_probes(
    x: torch.Tensor, y: torch.Tensor, l1: float = 0.0, steps: int = 400, lr: float = 1e-2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest logistic probes for every column of y [n, classes] (0/1) on x [n, d]: (weights [classes, d], bias).

    Each class's positives are weighted by negatives / positives, so a rare class is not ignored. With l1 > 0 the
    loss adds l1 * mean over classes of the summed |weights| (SAEBench's sparse probe for finding feature splits).
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = x.float(), y.float()
    n_classes = y.shape[1]
    weight = (torch.randn(n_classes, x.shape[1], generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    positives = y.sum(0).clamp_min(1)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(len(y) - positives) / positives)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=(1e-3) ** (1 / steps))  # lr -> lr / 1000
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn(x @ weight.T + bias, y)
        if l1:
            loss = loss + l1 * weight.abs().sum(1).mean()
        loss.backward()
        optimiser.step()
        decay.step()
    return weight.detach(), bias.detach()


def dense_letter_probes(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest probes, classes balanced: (weights [classes, d], bias [classes]) in the activation space."""
    weights, biases = torch.zeros(n_classes, x.shape[1]), torch.zeros(n_classes)
    features = x.double().numpy()
    for c in range(n_classes):
        if not 0 < int((y == c).sum()) < len(y):  # a class with no examples (or nothing else) predicts nothing
            biases[c] = -1.0
            continue
        probe = fit_small_probe(features, (y == c).numpy(), balanced=True)
        weights[c], biases[c] = torch.from_numpy(probe.coef_[0]).float(), float(probe.intercept_[0])
    return weights, biases


def f1_score(predicted: np.ndarray, actual: np.ndarray) -> float:
    true_positives = float((predicted & actual).sum())
    denominator = float(predicted.sum() + actual.sum())
    return 2 * true_positives / denominator if denominator else 0.0


def fit_small_probe(x_train: np.ndarray, y_train: np.ndarray, balanced: bool = False) -> LogisticRegression:
    """SAEBench's probe on a few features: L2, C = 1 (class-balanced for absorption's k-sparse probes)."""
    probe = LogisticRegression(max_iter=1000, class_weight="balanced" if balanced else None)
    return probe.fit(x_train, y_train)
