"""Small offline data sets as tensors: scikit-learn's digits and MNIST-1D (generated locally).

Both are optional imports; a missing package raises an ImportError naming it. MNIST-1D is made
by ``mnist1d.data.make_dataset(get_dataset_args())`` (seeded, ~3 s); its download helper is
never called.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batches", "Split", "digits", "mnist1d"]


@dataclass(frozen=True)
class Split:
    """Train / validation / test tensors; ``x`` float32, ``y`` int64 class labels."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int

    def loader(self, part: str, batch_size: int = 64, shuffle: bool = False,
               seed: int = 0) -> Batches:
        """Batches of ``part`` (``"train"``, ``"val"`` or ``"test"``)."""
        return Batches(getattr(self, f"x_{part}"), getattr(self, f"y_{part}"), batch_size,
                       shuffle, seed)


class Batches:
    """A re-iterable, seeded mini-batch loader over in-memory tensors (no DataLoader workers).

    With ``shuffle``, epoch ``e`` uses the permutation of ``seed + e``, so runs repeat.
    Under ``torch.distributed``, each rank takes every ``world_size``-th sample (set
    ``rank`` / ``world_size``), ``len(x) // world_size`` of them on every rank (the few left
    over are dropped), so that all ranks run the same number of batches (DDP steps).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(x) != len(y):
            raise ValueError(f"Batches: {len(x)} inputs but {len(y)} targets")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.world_size = rank, world_size

    def _per_rank(self) -> int:
        return len(self.x) // self.world_size if self.world_size > 1 else len(self.x)

    def __len__(self) -> int:
        n = self._per_rank()
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
            self.epoch += 1
        else:
            order = torch.arange(n)
        order = order[self.rank::self.world_size][: self._per_rank()]
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def _split(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, val: int,
           seed: int, classes: int) -> Split:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    v, t = order[:val], order[val:]

    def f(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

    def i(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)

    return Split(f(x[t]), i(y[t]), f(x[v]), i(y[v]), f(x_test), i(y_test), classes)


def digits(seed: int = 0, test_size: float = 0.3, val: int = 200) -> Split:
    """scikit-learn's 8x8 digits (1797 images), scaled to [0, 1], flattened to 64 features.

    Stratified train/test split by ``seed`` (test 30 %: 540 images, 0.19 pt each); ``val``
    training images are held out for sensitivity analysis.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") \
            from err
    data = load_digits()
    x = data.data.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=test_size,
                                              random_state=seed, stratify=data.target)
    return _split(x_tr, y_tr, x_te, y_te, val, seed, 10)


_MNIST1D: dict = {}


def mnist1d(seed: int = 0, val: int = 400) -> Split:
    """MNIST-1D (4000 train / 1000 test sequences of length 40), generated locally.

    The data itself is the package's default (its seed 42, cached per process); ``seed`` picks
    the ``val`` training sequences held out.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("the MNIST-1D data set needs the mnist1d package: pip install mnist1d") \
            from err
    if "data" not in _MNIST1D:
        _MNIST1D["data"] = make_dataset(get_dataset_args())
    d = _MNIST1D["data"]
    return _split(d["x"], d["y"], d["x_test"], d["y_test"], val, seed, 10)
