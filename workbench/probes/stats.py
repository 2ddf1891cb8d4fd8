"""Running mean and max over tokens, per key, without keeping the tokens."""

from __future__ import annotations

import math
from collections import defaultdict

import torch


class MeanMax:
    def __init__(self) -> None:
        self._sum: dict = defaultdict(float)
        self._count: dict = defaultdict(int)
        self._max: dict = defaultdict(lambda: -math.inf)

    def add(self, key, values: torch.Tensor) -> None:
        values = values.detach().double().reshape(-1)
        if values.numel() == 0:
            return
        self._sum[key] += values.sum().item()
        self._count[key] += values.numel()
        self._max[key] = max(self._max[key], values.max().item())

    def keys(self) -> list:
        return sorted(self._sum)

    def mean(self, key) -> float:
        return self._sum[key] / self._count[key]

    def max(self, key) -> float:
        return self._max[key]

    def count(self, key) -> int:
        return self._count[key]
