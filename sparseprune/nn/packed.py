"""``PackedModule``: what every module with a packed sparse weight shares.

It holds one validated ``PackedWeight`` (whose native object owns the data: there are no weight
buffers a user could edit in place behind a kernel's back), a float32 ``bias`` buffer, and an
optional fixed kernel choice; it writes and reads the packed weight in ``state_dict`` (header +
the format's canonical buffers, validated on load), pickles through the native object, and keeps
the packed weight float32 on the CPU whatever ``.to()`` / ``.half()`` ask. Subclasses add
``from_dense``, ``to_dense`` and ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats import FORMATS, PackedWeight, parse_header

__all__ = ["PackedModule", "prepare_for_compile"]


def _real_tensors():
    """A context in which new tensors are real even inside torch.export's fake mode."""
    import contextlib

    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
    except ImportError:  # older torch: no fake mode to leave
        return contextlib.nullcontext()
    return unset_fake_temporarily()


def prepare_for_compile(model: nn.Module) -> nn.Module:
    """Calls ``prepare_for_tracing`` on every packed module of ``model`` (returns ``model``).

    Needed for ``torch.compile(model, fullgraph=True)``; without it compile still works, with a
    graph break where a packed weight's tensors are first made."""
    for m in model.modules():
        if isinstance(m, PackedModule):
            m.prepare_for_tracing()
    return model

_HEADER = "format_header"


class PackedModule(nn.Module):
    """Base of ``SparseLinear`` (and later ``SparseConv2d``).

    Packed layers live on the CPU whatever the default device: built inside
    ``with torch.device("meta")`` (lazy loading), they hold a real, all-zero CPU weight that
    ``load_state_dict`` then validates and replaces; ``.to("meta")`` / ``to_empty(device=...)``
    to another device are refused at the call.

    Args:
        weight: the packed weight.
        bias_features: length of the bias, or None for no bias.
        name: the layer's name in its model, used in error messages (``convert`` sets it).
        kernels: kernel names (from ``sparseprune.ops.list_kernels()``) to run instead of the
            default choice, e.g. what ``convert`` measured fastest; () for the default.
    """

    def __init__(self, weight: PackedWeight, bias_features: int | None, *, name: str = "",
                 kernels: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.name = name
        self._set_weight(weight)
        self.register_buffer("bias", None if bias_features is None
                             else torch.zeros(bias_features, device="cpu"))
        self.kernels = tuple(kernels)

    # --- the packed weight ---
    def _expected_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def _set_weight(self, weight: PackedWeight) -> None:
        if not isinstance(weight, PackedWeight):
            raise TypeError(f"{self._where()}: weight must be a PackedWeight, got "
                            f"{type(weight).__name__}")
        if weight.shape != self._expected_shape():
            raise ValueError(f"{self._where()}: weight shape {weight.shape} does not match "
                             f"{self._expected_shape()}")
        self.__dict__["_packed_weight"] = weight
        for key in self._DERIVED:
            self.__dict__.pop(key, None)

    @property
    def weight(self) -> PackedWeight:
        """The packed weight (immutable; assign a new one with ``set_weight``)."""
        return self.__dict__["_packed_weight"]

    def set_weight(self, weight: PackedWeight) -> None:
        """Replaces the packed weight (same shape; any format)."""
        self._set_weight(weight)

    @property
    def format(self) -> str:
        """The packed format's name, e.g. ``"sell"``."""
        return self.weight.NAME

    @property
    def kernels(self) -> tuple[str, ...]:
        return self.__dict__["_kernels"]

    @kernels.setter
    def kernels(self, names: tuple[str, ...]) -> None:
        names = tuple(names)
        if names:
            self._check_kernels(names)  # ValueError now, not at the first call
        self.__dict__["_kernels"] = names
        self.__dict__.pop("_plan_cache", None)

    def _check_kernels(self, names: tuple[str, ...]) -> None:
        """ValueError unless ``names`` are kernels this module's weight can run here."""
        ops.make_plan(self.weight.FORMAT_ID, names)

    # Derived, machine-specific entries of __dict__: dropped when pickled, rebuilt on use.
    _DERIVED = ("_plan_cache", "_traced_cache", "_bias_np")

    def _plan(self) -> object | None:
        """The native kernel plan for ``kernels`` (None: default), built once."""
        if not self.__dict__["_kernels"]:
            return None
        plan = self.__dict__.get("_plan_cache")
        if plan is None:
            plan = self.__dict__["_plan_cache"] = ops.make_plan(self.weight.FORMAT_ID,
                                                                self.__dict__["_kernels"])
        return plan

    def _traced_tensors(self) -> list[torch.Tensor]:
        """The canonical buffers as tensors, for the traceable custom op (made once per weight:
        under ``torch.export`` they become the graph's constants)."""
        cached = self.__dict__.get("_traced_cache")
        if cached is None or cached[0] is not self.weight:
            # Made outside torch.jit.trace's recording, so every trace (and trace's own
            # re-run check) sees the same constants rather than a from_numpy call.
            # Also outside export's fake mode: the cache must hold real tensors (a FakeTensor
            # kept here would leak into the next export or compile).
            get = getattr(torch._C, "_get_tracing_state", None)
            state = get() if get is not None else None
            if state is not None:
                torch._C._set_tracing_state(None)
            try:
                with _real_tensors():
                    t = self.weight.tensors()
            finally:
                if state is not None:
                    torch._C._set_tracing_state(state)
            cached = self.__dict__["_traced_cache"] = (self.weight,
                                                       [t[b] for b in self.weight.BUFFERS])
        return cached[1]

    def prepare_for_tracing(self) -> None:
        """Makes the tensors the traced custom op takes now (one canonical copy of the weight),
        so ``torch.compile(fullgraph=True)`` finds them instead of calling into the native
        object, which it cannot trace. ``sparseprune.prepare_for_compile(model)`` does it for
        every packed module of a model."""
        self._traced_tensors()

    # --- the bias ---
    def _bias(self) -> torch.Tensor | None:
        b = self._buffers["bias"]
        if b is not None and not (b.dtype is torch.float32 and b.is_contiguous()):
            b = b.to(torch.float32).contiguous()
        return b

    def _bias_numpy(self):
        """A NumPy view of the float32 bias, kept while the buffer (and its storage) stay the
        same object; in-place edits of its values need no refresh (the view shares memory)."""
        b = self._buffers["bias"]
        if b is None:
            return None
        cached = self.__dict__.get("_bias_np")
        if cached is not None and cached[0] is b and cached[1] == b.data_ptr():
            return cached[2]
        if not (b.dtype is torch.float32 and b.is_contiguous()):
            return self._bias().detach().numpy()  # a converted copy: never cached (could go stale)
        view = b.detach().numpy()
        self.__dict__["_bias_np"] = (b, b.data_ptr(), view)
        return view

    def __prepare_scriptable__(self):
        # torch.jit.script compiles Python source; a packed layer's forward calls native code
        # through numpy, which TorchScript cannot express.
        raise RuntimeError(f"{self._where()}: torch.jit.script cannot compile packed sparse "
                           "layers; use torch.jit.trace, torch.compile or torch.export (all "
                           "run the kernels through the sparseprune custom ops)")

    # --- persistence ---
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        # Derived, machine-specific: rebuilt on first use after unpickling.
        for key in self._DERIVED:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.__dict__["_kernels"]:
            try:
                self._check_kernels(self.__dict__["_kernels"])
            except ValueError:
                # Unpickled on a CPU that cannot run the stored choice: same results with the
                # default kernels, only the speed choice is lost.
                self.__dict__["_kernels"] = ()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _HEADER] = self.weight.header()
        for name, t in self.weight.tensors().items():
            destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        where = self._where()
        all_buffers = {b for cls in FORMATS.values() for b in cls.BUFFERS}
        ours = [prefix + b for b in sorted(all_buffers)] + [prefix + _HEADER]
        if prefix + _HEADER in state_dict:
            cls, shape, params = parse_header(state_dict[prefix + _HEADER], name=where)
            if shape != self._expected_shape():
                raise ValueError(f"{where}: state_dict holds a [{shape[0]}x{shape[1]}] weight")
            missing = [b for b in cls.BUFFERS if prefix + b not in state_dict]
            if missing:
                raise ValueError(f"{where}: state_dict has a {cls.NAME} header but not "
                                 f"{missing}; packed weights load as a whole")
            tensors = {b: state_dict[prefix + b] for b in cls.BUFFERS}
            self._set_weight(cls.from_tensors(tensors, shape, params, name=where))
            self.__dict__["_kernels"] = ()  # a choice made for another weight does not apply
        else:
            present = [k for k in ours if k in state_dict]
            if present:
                # Loading some packed buffers without the header would leave an unchecked,
                # inconsistent weight; refuse even with strict=False.
                raise ValueError(f"{where}: state_dict has {present} but no {prefix + _HEADER}; "
                                 "packed weights load as a whole")
            if strict:
                missing_keys.append(prefix + _HEADER)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        consumed = set(ours)
        unexpected_keys[:] = [k for k in unexpected_keys if k not in consumed]

    # --- dtype / device ---
    def _apply(self, fn, recurse=True):
        # The packed weight is float32 on the CPU and stays so: .half()/.double()/.bfloat16()
        # leave it (and the bias) in float32 and the layer keeps working; a move to another
        # device is refused here rather than failing at the next call.
        probe = fn(torch.zeros(1, device="cpu"))
        if isinstance(probe, torch.Tensor) and probe.device.type != "cpu":
            raise RuntimeError(f"{self._where()}: packed sparse weights run on the CPU only; "
                               f"cannot move to {probe.device}")
        bias = self._buffers.get("bias")
        out = super()._apply(fn, recurse)
        new = self._buffers.get("bias")
        if bias is not None and new is not None and new.dtype != torch.float32:
            self._buffers["bias"] = bias  # keep the exact float32 values (no rounding)
        return out
