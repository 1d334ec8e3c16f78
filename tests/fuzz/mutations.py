"""One random mutation of a packed layer's entries, as damaged or tampered data would carry it.

:func:`mutate_state` edits a state_dict (a new tensor or value per edited key; the clean tensors
are never written), :func:`mutate_in_place` edits one tensor object in place (what a user can do
to an exported program's constants). Each mutation returns a short description that names the
key, the index and the values, so a failing case can be read without replaying it.
"""

from __future__ import annotations

import math
import random

import torch

from sparseprune.formats import FORMATS, MAGIC

HEADER = "format_header"
ALL_BUFFERS = sorted({b for cls in FORMATS.values() for b in cls.BUFFERS})
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint16, torch.uint8)
_DTYPES = (*_INT_DTYPES, torch.float32, torch.float64, torch.float16, torch.bool)
# Lengths a stride-0 tensor claims (besides the exact one and one more): beyond any memory,
# beyond this machine's, at the int32 edge, a mere million.
_HUGE = (2**40, 2**33 + 1, 2**31, 2**31 - 1, 2**20)


def _bits(dtype: torch.dtype) -> tuple[int, bool]:
    info = torch.iinfo(dtype)
    return info.bits, info.min < 0


def wrap(value: int, dtype: torch.dtype) -> int:
    """``value`` as a writer storing it in ``dtype`` would: two's complement wrap-around."""
    bits, signed = _bits(dtype)
    value %= 1 << bits
    return value - (1 << bits) if signed and value >= 1 << (bits - 1) else value


def _extremes(dtype: torch.dtype) -> list:
    """Boundary values of a dtype: the ends of its range and the limits a check may mishandle
    (int32 / uint16 / 2**k edges), NaN, +-Inf, the largest float, a subnormal, -0.0."""
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        return [math.nan, math.inf, -math.inf, info.max, -info.max, info.tiny / 4, -0.0, 1e30]
    if dtype == torch.bool:
        return [True, False]
    info = torch.iinfo(dtype)
    edges = [0, 1, -1, 2**7, 2**8, 2**15, 2**16 - 1, 2**16, 2**31 - 1, 2**31, 2**32, 2**62,
             info.max, info.min]
    return sorted({min(max(v, info.min), info.max) for v in edges})


def _edit_one(rng: random.Random, t: torch.Tensor, how: str) -> tuple[torch.Tensor, str] | None:
    """A copy of ``t`` with one element changed: to a boundary value (``extreme``), a random
    plausible one (``random_value``: indices and counts near the layer's sizes), by one
    (``off_by_one``: the classic bound mistakes), or sign-flipped (``negate``: a signed writer
    read as unsigned, or the reverse)."""
    a = t.detach().numpy().copy()
    if a.size == 0 or t.dtype == torch.bool:
        return None
    i = rng.randrange(a.size)
    old = a[i].item()
    floating = t.dtype.is_floating_point
    if how == "extreme":
        new = rng.choice(_extremes(t.dtype))
    elif how == "random_value":
        new = rng.gauss(0, 10) if floating else rng.randint(-2 * a.size - 4, 2 * a.size + 4)
    elif how == "off_by_one":
        new = old + rng.choice((-1, 1))
    else:
        new = -old if old else -1
    if not floating:
        new = wrap(int(new), t.dtype)
    a[i] = new
    return torch.from_numpy(a), f"[{i}] {old} -> {a[i].item()}"


def _resized(rng: random.Random, t: torch.Tensor, how: str) -> tuple[torch.Tensor, str] | None:
    """Length changes: one element dropped at either end (``truncate``), one appended
    (``extend``: a copy of the last, a zero or a random value), all dropped (``empty``)."""
    if how == "empty":
        return t[:0].clone(), f"emptied ({t.numel()} -> 0)"
    if how == "truncate":
        if not t.numel():
            return None
        first = rng.random() < 0.5
        return (t[1:] if first else t[:-1]).clone(), f"dropped the {'first' if first else 'last'}"
    extra = t[-1:].clone() if t.numel() and rng.random() < 0.5 else torch.zeros(1, dtype=t.dtype)
    if rng.random() < 0.3 and not t.dtype.is_floating_point and t.dtype != torch.bool:
        extra = torch.tensor([wrap(rng.randint(0, 2 * t.numel() + 4), t.dtype)]).to(t.dtype)
    return torch.cat([t, extra]), f"appended {extra.tolist()}"


def _reordered(rng: random.Random, t: torch.Tensor, how: str) -> tuple[torch.Tensor, str] | None:
    """Order changes: a random permutation (``shuffle``), two elements swapped (``swap_elems``,
    often neighbours: one unsorted pair), all set to one value (``fill``: 0, 1 or the first)."""
    n = t.numel()
    if how == "fill":
        value = rng.choice([0, 1, t[0].item() if n else 0])
        return torch.full_like(t, value), f"filled with {value}"
    if n < 2:
        return None
    if how == "shuffle":
        perm = torch.tensor(rng.sample(range(n), n))
        return t[perm].clone(), "shuffled"
    i = rng.randrange(n - 1)
    j = i + 1 if rng.random() < 0.6 else rng.randrange(n)
    out = t.clone()
    out[i], out[j] = t[j].clone(), t[i].clone()
    return out, f"swapped [{i}] and [{j}]"


def _retyped(rng: random.Random, t: torch.Tensor, how: str) -> tuple[object, str] | None:
    """What the tensor is rather than what it holds: another dtype (``dtype``), a stride-0
    tensor claiming a huge or the exact length (``expand``: must be refused before any copy, or
    read right), another shape (``shape``: 2-D or 0-d), a sparse COO tensor (``layout``), a
    storage-less ``meta`` tensor (``device``), or no tensor at all (``non_tensor``)."""
    if how == "dtype":
        dtype = rng.choice([d for d in _DTYPES if d != t.dtype])
        return t.to(dtype), f"cast to {dtype}"
    if how == "expand":
        n = rng.choice([*_HUGE, t.numel(), t.numel() + 1])
        one = t[:1] if t.numel() else torch.zeros(1, dtype=t.dtype)
        return one.expand(n), f"stride-0 view of {one.tolist()} claiming {n} entries"
    if how == "shape":
        if rng.random() < 0.5 or not t.numel():
            return t.reshape(1, -1).clone(), f"reshaped to {(1, t.numel())}"
        return t[0].clone(), "a 0-d scalar"
    if how == "layout":
        idx = torch.arange(t.numel()).unsqueeze(0)
        return torch.sparse_coo_tensor(idx, t.clone(), (t.numel(),)), "a sparse COO tensor"
    if how == "device":
        return t.to("meta"), "moved to the meta device"
    value = rng.choice([0, 7, None, "tensor", [int(v) for v in t.to(torch.int64)[:4]], 1.5])
    return value, f"replaced by {value!r}"


def _stride2(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` as a non-contiguous view (every other entry of a doubled copy)."""
    return torch.stack((t, t), dim=1).flatten()[::2]


def _same_values(rng: random.Random, t: torch.Tensor, how: str) -> tuple[torch.Tensor, str]:
    """The same values in another form, which must load exactly as the original: a strided
    (non-contiguous) view, a float negative-bit view of the negated values, a Parameter."""
    choice = rng.randrange(3)
    if choice == 0 or (choice == 1 and not t.dtype.is_floating_point):
        return _stride2(t), "the same values as a stride-2 view"
    if choice == 1:
        return torch._neg_view(-t), "the same values as a negative-bit view"
    return torch.nn.Parameter(t.clone(), requires_grad=t.dtype.is_floating_point), \
        "the same values as a Parameter"


TENSOR_MUTATIONS = {
    "extreme": _edit_one, "random_value": _edit_one, "off_by_one": _edit_one,
    "negate": _edit_one, "truncate": _resized, "extend": _resized, "empty": _resized,
    "shuffle": _reordered, "swap_elems": _reordered, "fill": _reordered, "dtype": _retyped,
    "expand": _retyped, "shape": _retyped, "layout": _retyped, "device": _retyped,
    "non_tensor": _retyped, "same_values": _same_values,
}


def _header_field(rng: random.Random, h: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A header that lies plausibly: another format id (csr <-> sell share buffers), other
    format parameters (valid ones of any format, or out of range), a shape one off, doubled,
    zero or overflowing, another magic, dtype id or layout version, or the 6-entry legacy
    header (valid for csr only)."""
    if rng.random() < 0.1:
        return h[:6].clone(), "the 6-entry legacy header"
    out = h.clone()
    field = rng.choice([0, 1, 1, 2, 3, 4, 5, 6, 6, 7])
    old = int(out[field])
    if field == 0:
        new = rng.choice([0, MAGIC + 1, MAGIC - 1, MAGIC ^ (1 << 32)])
    elif field == 1:
        new = rng.choice([0, 1, 2, 3, 4, 5, -1])
    elif field in (2, 3):
        new = rng.choice([0, 2, -1, 2**32 + 1])
    elif field in (4, 5):
        new = rng.choice([old - 1, old + 1, 2 * old, 0, -1, 2**31, 2**40, 2**62])
    else:
        new = rng.choice([0, 1, 2, 3, 4, 8, 16, 17, -1, 2**32 + 1])
        if rng.random() < 0.4:  # a whole valid pair of another format or block shape
            pair = rng.choice([(1, 4), (2, 4), (4, 8), (1, 2), (4, 1), (2, 1), (8, 1), (1, 1),
                               (2, 2), (16, 16), (0, 0)])
            out[6], out[7] = pair
            return out, f"params {h[6:].tolist()} -> {list(pair)}"
    out[field] = new
    return out, f"header[{field}] {old} -> {new}"


def mutate_state(rng: random.Random, sd: dict, keys: list[str], prefix: str = ""
                 ) -> tuple[str, str]:
    """Applies one mutation to ``sd`` among ``keys`` (the layer's packed entries, prefixed);
    returns (kind, description).

    Besides the per-tensor mutations: ``header_field`` (see :func:`_header_field`),
    ``drop_key`` (a packed entry missing), ``add_key`` (an unexpected key, which strict loading
    reports, or another format's buffer name, which a packed layer ignores) and
    ``swap_buffers`` (two entries' contents exchanged: right dtypes in the wrong places).
    """
    key = rng.choice(keys)
    roll = rng.random()
    if key.endswith(HEADER) and roll < 0.35:
        sd[key], desc = _header_field(rng, sd[key])
        return "header_field", f"{key}: {desc}"
    if roll < 0.06:
        del sd[key]
        return "drop_key", f"dropped {key}"
    if roll < 0.11:
        extra = rng.choice(["bogus", *(b for b in ALL_BUFFERS if prefix + b not in sd)])
        sd[prefix + extra] = torch.zeros(rng.randrange(4), dtype=rng.choice(_DTYPES))
        return "add_key", f"added {prefix + extra} {tuple(sd[prefix + extra].shape)}"
    if roll < 0.16:
        other = rng.choice([k for k in keys if k != key])
        sd[key], sd[other] = sd[other], sd[key]
        return "swap_buffers", f"swapped {key} and {other}"
    while True:
        kind = rng.choice(list(TENSOR_MUTATIONS))
        done = TENSOR_MUTATIONS[kind](rng, sd[key], kind)
        if done is not None:
            sd[key] = done[0]
            return kind, f"{key}: {done[1]}"


# --- in place (export): the tensor object stays, its size, strides or values change ---

IN_PLACE = ("extreme", "random_value", "off_by_one", "negate", "shuffle", "swap_elems", "fill",
            "truncate", "extend", "empty", "expand", "strided", "peer")


def mutate_in_place(rng: random.Random, t: torch.Tensor, peers: list[torch.Tensor]
                    ) -> tuple[str, str]:
    """Edits ``t`` in place (under ``torch.no_grad()``): element edits and reorders (as for a
    state_dict) written with ``copy_``; ``truncate`` / ``extend`` / ``empty`` through
    ``resize_`` / ``set_``; ``expand``: ``set_`` onto its own storage with stride 0, claiming up
    to 2**22 entries (the exported graph copies every constant before the op sees it, so a
    claim beyond memory would fail in torch's copy, not in sparseprune); ``strided``: the same
    values behind stride 2; ``peer``: the contents of another layer's tensor of the same dtype.
    Returns (kind, description)."""
    with torch.no_grad():
        while True:
            kind = rng.choice(IN_PLACE)
            if kind in ("extreme", "random_value", "off_by_one", "negate", "shuffle",
                        "swap_elems", "fill"):
                fn = _edit_one if kind in ("extreme", "random_value", "off_by_one",
                                           "negate") else _reordered
                done = fn(rng, t, kind)
                if done is None:
                    continue
                t.copy_(done[0])
                return kind, done[1]
            if kind in ("truncate", "extend", "empty"):
                done = _resized(rng, t, kind)
                if done is None:
                    continue
                t.set_(done[0])
                return kind, done[1]
            if kind == "expand":
                if not t.numel():
                    continue
                n = rng.choice([2**12, 2**20, 2**22, t.numel(), t.numel() + 1])
                t.set_(t.untyped_storage(), t.storage_offset(), (n,), (0,))
                return kind, f"stride-0 over its first entry claiming {n} entries"
            if kind == "strided":
                t.set_(_stride2(t))
                return kind, "the same values behind stride 2"
            same = [p for p in peers if p.dtype == t.dtype and p is not t]
            if not same:
                continue
            p = rng.choice(same)
            t.set_(p.clone())
            return kind, f"replaced by another layer's {p.numel()}-entry {p.dtype} tensor"

