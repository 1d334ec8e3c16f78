"""Channel atoms and the union-find that couples them.

An *atom* is one index of one prunable dimension (an output channel of a conv, a feature of a
Linear, one entry of a parameter dimension). Tracing labels every tensor dimension that carries
channels with an array of atom ids; ops that force two channels to be removed together unify their
atoms. After tracing, each union-find class is one removable *unit* (a channel, or a whole
attention head) and every parameter slice attached to one of its atoms goes with it.

Atom 0 is ``FIXED``: a class that contains it can never be removed (model inputs and outputs,
unsupported ops, normalisations over channels).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FIXED", "AtomTable", "TensorLabels"]

FIXED = 0

# Labels of one tensor: one entry per dimension, an int64 array of atom ids (length = that dim's
# size) when the dimension carries prunable channels, else None.
TensorLabels = tuple


class AtomTable:
    """Union-find over atom ids; the smaller id is the root, so ``FIXED`` (0) always wins."""

    def __init__(self) -> None:
        self._parent: list[int] = [FIXED]

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int) -> np.ndarray:
        """Allocate ``n`` fresh atoms; returns their ids as int64 ``[n]``."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self._parent
        a = int(a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra < rb:
            self._parent[rb] = ra
        else:
            self._parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Unify ``a[i]`` with ``b[i]`` elementwise (arrays broadcast against each other)."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
        for x, y in pairs:
            if x != y:
                self.union(x, y)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        """Root of every atom, same shape as ``atoms``."""
        atoms = np.asarray(atoms)
        flat = np.fromiter((self.find(a) for a in atoms.ravel()), dtype=np.int64, count=atoms.size)
        return flat.reshape(atoms.shape)

    def all_roots(self) -> np.ndarray:
        """Root of every atom allocated so far, int64 ``[len(self)]``."""
        return self.roots(np.arange(len(self._parent), dtype=np.int64))

    def is_free(self, atoms: np.ndarray) -> bool:
        """True when some atom of ``atoms`` is not yet coupled to ``FIXED``."""
        return any(self.find(a) != FIXED for a in np.unique(np.asarray(atoms)))
