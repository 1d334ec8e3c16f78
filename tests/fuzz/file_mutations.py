"""One random mutation of a whole-model file's dict (what ``sparseprune.save`` writes).

The dict holds ``format``, ``packed`` (each packed layer's constructor arguments), ``identity``,
``widths`` (structured pruning's attrs / shapes / folded BatchNorms), ``compact`` (the layers
whose CSR ``row_ptr`` / ``col_idx`` are varint bytes) and ``state_dict``. :func:`mutate_file`
damages one of them: a packed entry of the state_dict (as for an eager state_dict, plus
byte-level varint damage), one layer's spec, or the model-level entries.
"""

from __future__ import annotations

import random

import torch

from sparseprune.structured.io import WIDTH_ATTRS

from .mutations import ALL_BUFFERS, HEADER, mutate_state

_PACKED_ENTRIES = (HEADER, *ALL_BUFFERS, "filter_shape")


def _varint_edit(rng: random.Random, t: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Byte-level damage to a varint stream (7 bits per byte, high bit: more bytes follow):
    a continuation bit set (two numbers merge: one count or gap fewer) or cleared (one splits
    in two), a byte replaced by 0x00 / 0x7F / 0x80 / 0xFF, a byte inserted or deleted, a
    number near 2**35 inserted (beyond any int32 column) or an overlong 6-byte number."""
    a = bytearray(t.numpy().tobytes())
    how = rng.randrange(7) if a else rng.choice((3, 5, 6))
    i = rng.randrange(len(a)) if a else 0
    if how == 0:
        a[i] |= 0x80
        desc = f"continuation bit set on byte {i}"
    elif how == 1:
        a[i] &= 0x7F
        desc = f"continuation bit cleared on byte {i}"
    elif how == 2:
        old, a[i] = a[i], rng.choice((0x00, 0x7F, 0x80, 0xFF))
        desc = f"byte {i} {old:#x} -> {a[i]:#x}"
    elif how == 3:
        value = rng.choice((0x00, 0x01, 0x7F, 0x80))
        a.insert(i, value)
        desc = f"byte {value:#x} inserted at {i}"
    elif how == 4:
        del a[i]
        desc = f"byte {i} deleted"
    elif how == 5:
        a[i:i] = bytes([0xFF] * 4 + [0x0F])
        desc = f"the 5-byte number 2**35 - 1 inserted at {i}"
    else:
        a[i:i] = bytes([0x80] * 5 + [0x00])
        desc = f"an overlong 6-byte zero inserted at {i}"
    out = torch.frombuffer(a, dtype=torch.uint8).clone() if a else torch.empty(0, dtype=torch.uint8)
    return out, desc


def _spec_value(rng: random.Random, key: str, old: object) -> object:
    """Another value for a spec field: sizes one off, zero, negative, huge, of the wrong type;
    conv tuples with one entry changed, the wrong length, swapped or flattened (3x3 -> 9x1
    keeps the packed shape: such a file loads with another geometry); other strings."""
    if isinstance(old, bool):
        return rng.choice([not old, 0, 1, None, "True"])
    if isinstance(old, int):
        return rng.choice([old - 1, old + 1, 0, -1, 2 * old, 2**40, True, 1.5, None, str(old),
                           [old]])
    if isinstance(old, list):
        new = list(old)
        how = rng.randrange(6)
        if how == 0 and new:
            i = rng.randrange(len(new))
            new[i] = rng.choice([new[i] + 1, new[i] - 1, 0, -1, 3])
        elif how == 1:
            new = new[:1] if rng.random() < 0.5 else new + new[:1]
        elif how == 2 and key == "kernel_size":
            new = rng.choice([new[::-1], [new[0] * new[-1], 1]])
        elif how == 3:
            new = [1.5, *new[1:]] if rng.random() < 0.5 else [True, *new[1:]]
        else:
            new = rng.choice(["same", "valid", 2, None, []])
        return new
    return rng.choice(["reflect", "replicate", "circular", "zeros", "bogus", "same", "valid", "",
                       0, None])


def _spec_edit(rng: random.Random, packed: dict, name: str) -> tuple[str, str]:
    """A layer's spec changed: a field's value (:func:`_spec_value`), a field dropped or an
    unknown one added, another type, no dict at all, the layer renamed, its spec copied onto a
    module that is not packed (the ReLU "1"), or the layer left out of ``packed``."""
    spec = packed[name]
    how = rng.randrange(12)
    if how < 5:
        key = rng.choice([k for k in spec if k != "type"])
        old, spec[key] = spec[key], _spec_value(rng, key, spec[key])
        return "spec_value", f"packed[{name!r}][{key!r}] {old!r} -> {spec[key]!r}"
    if how == 5:
        key = rng.choice(list(spec))
        del spec[key]
        return "spec_drop", f"packed[{name!r}] without {key!r}"
    if how == 6:
        key = rng.choice(["weight", "kernels", "name", "format"])
        spec[key] = rng.choice([1, "csr", [], None])
        return "spec_add", f"packed[{name!r}][{key!r}] = {spec[key]!r}"
    if how == 7:
        kind = "SparseConv2d" if spec["type"] == "SparseLinear" else "SparseLinear"
        spec["type"] = rng.choice([kind, "Linear", 3, None])
        return "spec_type", f"packed[{name!r}]['type'] = {spec['type']!r}"
    if how == 8:
        packed[name] = rng.choice(["SparseLinear", None, [1, 2], 3])
        return "spec_type", f"packed[{name!r}] = {packed[name]!r}"
    if how == 9:
        new = rng.choice([name + "x", "9", "1", ""])
        packed[new] = packed.pop(name)
        return "spec_name", f"packed layer {name!r} renamed {new!r}"
    if how == 10:
        target = rng.choice(["1", ""])
        packed[target] = dict(spec)
        return "spec_name", f"packed[{target!r}] = a copy of {name!r}'s spec"
    del packed[name]
    return "spec_drop", f"packed layer {name!r} left out"


def _model_edit(rng: random.Random, data: dict, layers: dict[str, str]) -> tuple[object, str, str]:
    """Model-level damage: the ``compact`` list (an entry dropped, duplicated, a non-CSR or
    missing layer added, a non-string, not a list), ``identity`` (a packed layer, the ReLU, a
    missing module, not a list), ``widths`` (width attributes set on any module, packed layers
    included; recorded shapes; folded pairs; missing or non-dict parts), ``format``, a missing
    top-level entry, a state_dict that is not a dict or has a key too few or too many.
    Returns (the new data, kind, description)."""
    how = rng.randrange(8)
    names = list(layers)
    if how == 0:
        c = data["compact"]
        extra = rng.choice([*(n + "." for n in names), "9.", "", 3, "0"])
        choice = rng.randrange(4)
        if choice == 0 and c:
            c.pop(rng.randrange(len(c)))
        elif choice == 1 and c:
            c.append(c[0])
        elif choice == 2:
            c.append(extra)
        else:
            data["compact"] = rng.choice([names[0] + ".", None, {}, [[]]])
        return data, "compact", f"compact -> {data['compact']!r}"
    if how == 1:
        ident = rng.choice([[rng.choice(names)], ["1"], ["9"], [3], "1", None])
        data["identity"] = ident
        return data, "identity", f"identity -> {ident!r}"
    if how in (2, 3):
        w = data["widths"]
        mod = rng.choice([*names, "1", "", "9"])
        attr = rng.choice([*WIDTH_ATTRS[:6], "normalized_shape", "eps", "weight"])
        value = rng.choice([0, 1, 3, 8, 16, -1, "x", None, 1.5, [3]])
        w["attrs"][mod] = {attr: value}
        return data, "widths_attrs", f"widths['attrs'][{mod!r}] = {{{attr!r}: {value!r}}}"
    if how == 4:
        w = data["widths"]
        sd = data["state_dict"]
        choice = rng.randrange(5)
        if choice < 2:
            key = rng.choice([*sd, "1.weight", names[0] + ".values"])
            shape = list(sd[key].shape) if key in sd else [3]
            shape = rng.choice([shape, [3], [-1], "x", [2**40], shape + [1]])
            w["shapes"][key] = shape
            desc = f"widths['shapes'][{key!r}] = {shape!r}"
        elif choice == 2:
            pair = (rng.choice([*names, "1", "9"]), rng.choice([*names, "1", "9"]))
            w["folded"] = {pair[0]: pair[1]}
            desc = f"widths['folded'] = {w['folded']!r}"
        elif choice == 3:
            part = rng.choice(["attrs", "shapes", "folded"])
            if rng.random() < 0.5:
                w[part] = rng.choice([None, [], "x"])
                desc = f"widths[{part!r}] = {w[part]!r}"
            else:
                del w[part]
                desc = f"widths without {part!r}"
        else:
            data["widths"] = rng.choice([None, [], "x"])
            desc = f"widths -> {data['widths']!r}"
        return data, "widths", desc
    if how == 5:
        data["format"] = rng.choice(["sparseprune.model/2", "sparseprune.structured/1", None, 1])
        return data, "format", f"format -> {data['format']!r}"
    if how == 6:
        if rng.random() < 0.2:
            return list(data), "top", "the file holds a list"
        key = rng.choice(["packed", "state_dict", "identity", "compact", "widths", "extra"])
        if key == "extra":
            data[key] = 1
        elif rng.random() < 0.5:
            del data[key]
        else:
            data[key] = rng.choice([None, [], "x", 0])
        return data, "top", f"top-level {key!r} damaged"
    sd = data["state_dict"]
    choice = rng.randrange(3)
    if choice == 0:
        key = rng.choice([k for k in sd if k.endswith(".bias")])
        del sd[key]
        desc = f"state_dict without {key!r}"
    elif choice == 1:
        key = rng.choice(["9.weight", names[0] + ".weight", "1.weight", names[-1] + ".extra"])
        sd[key] = torch.zeros(3)
        desc = f"state_dict gained {key!r}"
    else:
        src = rng.choice([k for k in sd if not k.endswith(".bias")])
        dst = rng.choice(names) + "." + src.split(".", 1)[1]
        sd[dst] = sd.pop(src)
        desc = f"state_dict {src!r} renamed {dst!r}"
    return data, "state_dict_keys", desc


def mutate_file(rng: random.Random, data: dict, layers: dict[str, str]
                ) -> tuple[object, str, str, str]:
    """One mutation of ``data`` (edited in place where it stays a dict); ``layers`` maps the
    packed layers' names to their format labels. Returns (data, label, kind, description):
    label is the damaged layer's format label, or "model" for model-level damage."""
    roll = rng.random()
    name = rng.choice(list(layers))
    label = layers[name]
    prefix = name + "."
    sd = data["state_dict"]
    if roll < 0.6:
        keys = [k for k in sd if k.startswith(prefix) and k[len(prefix):] in _PACKED_ENTRIES]
        varints = [k for k in keys if prefix in data["compact"]
                   and k[len(prefix):] in ("row_ptr", "col_idx")]
        if varints and rng.random() < 0.4:
            key = rng.choice(varints)
            sd[key], desc = _varint_edit(rng, sd[key])
            return data, label, "varint", f"{key}: {desc}"
        kind, desc = mutate_state(rng, sd, keys, prefix)
        return data, label, kind, desc
    if roll < 0.8:
        kind, desc = _spec_edit(rng, data["packed"], name)
        return data, label, kind, desc
    data, kind, desc = _model_edit(rng, data, layers)
    return data, "model", kind, desc
