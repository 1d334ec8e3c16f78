"""Small models shared by the pruning tests (seeded, CPU, milliseconds to build)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn


class MLP(nn.Sequential):
    """A digits-sized MLP: 64 -> 48 -> 32 -> 10."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 10))


class CNN(nn.Module):
    """A small CNN on [B, 3, 8, 8]: a 3-channel stem, a 3x3 conv, a 1x1 conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.fc = nn.Linear(16 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run these tiny models on one intra-op thread, restored afterwards.

    Their ops are far too small to gain from threads, and on a busy 2-core machine OpenMP's
    spinning workers made a 15-step conv fine-tune 25x slower (5.6 s vs 0.2 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeded(cls: type[nn.Module]) -> Callable[[int], nn.Module]:
    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return cls()

    return make


@pytest.fixture
def make_mlp() -> Callable[[int], nn.Module]:
    """``make_mlp(seed)`` -> a fresh MLP with the same weights for the same seed."""
    return _seeded(MLP)


@pytest.fixture
def make_cnn() -> Callable[[int], nn.Module]:
    """``make_cnn(seed)`` -> a fresh CNN with the same weights for the same seed."""
    return _seeded(CNN)

