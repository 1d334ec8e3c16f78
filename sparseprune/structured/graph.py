"""Trace a model with ``torch.fx`` and build its channel dependency graph.

``DependencyGraph.build(model, example_inputs)`` runs the traced graph once on the example inputs
(in eval mode, without gradients) and, node by node, labels every channel-carrying tensor
dimension with atoms (see ``labels.py``). The op rules in ``rules/`` say how labels flow and
which atoms must be removed together; ``interpreter.py`` applies them node by node. The result
lists:

- *attachments*: ``(parameter or buffer, dim) -> atom per index``: the slices to cut;
- *attributes*: ``(module, attribute) -> atoms``: e.g. ``out_channels`` becomes the kept count;
- *groups*: sets of coupled units (classes of atoms) produced by the same layers;
- *unprunable*: every op that pinned channels, with node, module and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .._modules import eval_mode
from .flops import mac_counter
from .interpreter import LabelInterpreter, has_name_rule
from .labels import FIXED, AtomTable
from .norms import PrunedLayerNorm
from .records import _CostItem

__all__ = [
    "Attachment",
    "DependencyGraph",
    "Group",
    "StructuredTraceError",
    "Unprunable",
    "trace",
]


# how grouped convs lose channels (``trace(grouped=...)``, ``PlanConfig.grouped``)
GROUPED = ("channels", "groups")


class StructuredTraceError(RuntimeError):
    """The model cannot be traced by ``torch.fx`` (data-dependent control flow, etc.)."""


@dataclass(frozen=True)
class Unprunable:
    """An op that pinned channels: they are kept, never cut."""

    node: str
    module: str | None
    why: str
    channels: int

    def __str__(self) -> str:
        where = f"{self.node} ({self.module})" if self.module else self.node
        return f"{where}: {self.why} [{self.channels} channel(s) kept]"


@dataclass
class Attachment:
    """Index ``i`` of ``tensor`` along ``dim`` belongs to atom ``atoms[i]``.

    ``kind`` is one of ``weight`` (conv/linear/embedding weights and free parameters), ``bias``,
    ``norm`` (affine weight of a normalisation) or ``stat`` (running statistics).
    """

    tensor: str
    dim: int
    atoms: np.ndarray
    kind: str


@dataclass
class Group:
    """Units (channels, or whole heads) produced by coupled layers; widths are decided per group.

    ``classes``: root atom id of each unit, int64 ``[n]``. ``unit_channels``: channels one unit
    stands for in the narrowest producing layer (1 for plain channels, head_dim for heads).
    """

    index: int
    classes: np.ndarray
    producers: list[str]
    unit_channels: int
    fixed_units: int = 0

    @property
    def name(self) -> str:
        extra = f" (+{len(self.producers) - 1} coupled)" if len(self.producers) > 1 else ""
        return f"{self.producers[0]}{extra}"

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class DependencyGraph:
    """Everything the planner and the surgery need to know about a traced model."""

    model: nn.Module
    example_inputs: tuple
    atoms: AtomTable = field(default_factory=AtomTable)
    attachments: dict[tuple[str, int], Attachment] = field(default_factory=dict)
    attrs: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    producers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    macs_items: list[_CostItem] = field(default_factory=list)
    # tensors written by ops other than the MAC items (norms, activations, adds, pooling):
    # elements and the channel dims that scale them; the latency model charges them by size
    memory_items: list[_CostItem] = field(default_factory=list)
    unprunable: list[Unprunable] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    layer_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # self-attention nn.MultiheadAttention calls whose heads may go: name -> (query shape,
    # need_weights), so the latency model can time the module by head count
    attention_calls: dict[str, tuple[tuple[int, ...], bool]] = field(default_factory=dict)
    # LayerNorm / RMSNorm modules whose normalised dim may shrink: name -> atoms, and the dim
    # of the module's input it normalises (-1: the last; 1: NCHW, torchvision's LayerNorm2d)
    norms: dict[str, np.ndarray] = field(default_factory=dict)
    norm_dims: dict[str, int] = field(default_factory=dict)
    layer_norm: str = "prune"  # "keep": LayerNorm widths stay
    # norms kept whole because their removed channels were not zero in the masked model:
    # name -> reason (found by ``plan``, which then traces again)
    fixed_norms: dict[str, str] = field(default_factory=dict)
    # grouped (not depthwise) convs: "channels" (the same positions leave every group) or
    # "groups" (whole groups leave; the group count shrinks)
    grouped: str = "channels"
    # module int attributes read as reshape literals (``width_attrs.py``): the nodes whose
    # arguments follow each attribute (None: something else reads it too), the reshapes that
    # let it shrink, and those found unsafe by ``plan`` (kept, with the reason)
    width_literals: dict[tuple[str, str], set[str] | None] = field(default_factory=dict)
    width_users: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    fixed_widths: dict[tuple[str, str], str] = field(default_factory=dict)
    leaf_modules: tuple[type, ...] = ()
    # the traced graph and every node's labels (``zeros.py`` walks them)
    fx_graph: fx.Graph | None = field(default=None, repr=False)
    node_labels: dict = field(default_factory=dict, repr=False)
    _traced_args: dict[str, tuple] | None = field(default=None, repr=False)
    _param_atoms: set[int] = field(default_factory=set, repr=False)
    roots: np.ndarray | None = field(default=None, repr=False)  # atom id -> class, once final

    # ---- building blocks used by the op rules -------------------------------------------------

    def add_norm(self, name: str, atoms: np.ndarray, dim: int) -> None:
        """Record that norm module ``name`` normalises ``atoms`` (dim ``dim`` of its input); a
        module called twice must normalise the same channels."""
        if name in self.norms:
            self.unify(self.norms[name], atoms)
        self.norms[name] = atoms
        self.norm_dims[name] = dim

    def new_block(self, n: int, owner: str, *, param: bool = False, tile: int = 1,
                  repeat: int = 1) -> np.ndarray:
        """Fresh atoms for ``n`` channels produced by ``owner`` (``param``: a dim of a free
        parameter such as a position embedding, not a layer's output), each repeated ``repeat``
        times in a row, the whole repeated ``tile`` times: a grouped conv's ``n * tile``
        outputs, where position ``i`` of every group is one unit (``tile``), or its
        ``n * repeat`` outputs where one whole group is one unit (``repeat``).
        Returns int64 ``[n * repeat * tile]``."""
        atoms = np.tile(np.repeat(self.atoms.new(n), repeat), tile)
        self.producers.append((owner, atoms))
        if param:
            self._param_atoms.update(atoms.tolist())
        return atoms

    def head_block(self, heads: int, width: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
        """``(inner, per_head)``: ``heads * width`` fresh atoms for attention's inner width, all
        ``width`` of a head sharing one (heads leave whole), and that one atom per head."""
        inner = self.new_block(heads * width, owner)
        grid = inner.reshape(heads, width)
        self.unify(grid, grid[:, :1])
        return inner, grid[:, 0]

    def linear_out(self, name: str, m: nn.Module) -> np.ndarray:
        """Fresh atoms for the outputs of Linear ``name`` (module ``m``), attached to its weight
        rows and bias and to ``out_features``."""
        out = self.new_block(m.out_features, name)
        self.attach(f"{name}.weight", 0, out, "weight")
        if m.bias is not None:
            self.attach(f"{name}.bias", 0, out, "bias")
        self.set_attr(name, "out_features", out)
        return out

    def pinned_block(self, n: int, owner: str) -> np.ndarray:
        """``n`` fresh atoms, already kept: what a layer's input dim is attached to when its
        input carries no channel labels (a model input), so that a second call of the same
        module on a prunable input cannot shrink the shared weight under the first call."""
        atoms = self.new_block(n, owner)
        for r in np.unique(self.atoms.roots(atoms)):
            self.atoms.union(r, FIXED)
        return atoms

    def attach(self, tensor: str, dim: int, atoms: np.ndarray, kind: str) -> None:
        """Tie index ``i`` of ``tensor`` along ``dim`` to ``atoms[i]``; shared weights unify."""
        atoms = np.asarray(atoms, dtype=np.int64)
        key = (tensor, dim)
        old = self.attachments.get(key)
        if old is None:
            self.attachments[key] = Attachment(tensor, dim, atoms, kind)
        else:
            self.atoms.union_arrays(old.atoms, atoms)

    def set_attr(self, module: str, attr: str, atoms: np.ndarray) -> None:
        """After pruning, ``module.attr`` becomes the number of kept entries of ``atoms``."""
        key = (module, attr)
        atoms = np.asarray(atoms, dtype=np.int64)
        old = self.attrs.get(key)
        if old is None:
            self.attrs[key] = atoms
        elif old.shape == atoms.shape:
            self.atoms.union_arrays(old, atoms)
        else:
            self.fix(np.concatenate([old, atoms]), module, module, f"{attr} used with two widths")

    def fix(self, atoms: np.ndarray | None, node: str, module: str | None, why: str, *,
            report_params: bool = False) -> None:
        """Pin ``atoms`` (their channels are kept) and record why (``report_params``: also
        when they are only dims of free parameters)."""
        if atoms is None or np.size(atoms) == 0:
            return
        roots = np.unique(self.atoms.roots(np.unique(atoms)))
        free = roots[roots != FIXED]
        if free.size == 0:
            return
        for r in free:
            self.atoms.union(r, FIXED)
        # Dims of free parameters that never met a channel (a position embedding's token dim)
        # are not channels: pin them silently.
        lone = [] if report_params else [r for r in free if r in self._param_atoms]
        if len(lone) < free.size:
            self.unprunable.append(Unprunable(node, module, why, int(free.size - len(lone))))

    def note_unprunable(self, node: str, module: str | None, why: str, channels: int) -> None:
        """Name an op that kept ``channels`` channels whose atoms ``fix`` pinned silently."""
        self.unprunable.append(Unprunable(node, module, why, channels))

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        self.atoms.union_arrays(a, b)

    def add_macs(self, base: float, dims: Sequence[np.ndarray | None], module: str | None) -> None:
        self.macs_items.append(_CostItem(float(base), [d for d in dims if d is not None], module))

    # ---- queries ------------------------------------------------------------------------------

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer called ``name`` in the traced model."""
        mod_name, _, attr = name.rpartition(".")
        return getattr(self.model.get_submodule(mod_name), attr)

    def finalize(self) -> None:
        """Group coupled units once tracing is done."""
        roots = self.atoms.all_roots()
        self.roots = roots
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        owners: dict[int, list[str]] = {}
        for owner, atoms in self.producers:
            r = np.unique(roots[atoms])
            r = r[r != FIXED]
            if r.size == 0:
                continue
            base = find(int(r[0]))
            for x in r[1:]:
                rx = find(int(x))
                if rx != base:
                    parent[rx] = base
            owners.setdefault(int(r[0]), []).append(owner)
        members: dict[int, list[int]] = {}
        for x in parent:
            members.setdefault(find(x), []).append(x)
        group_owners: dict[int, list[str]] = {}
        for first, names in owners.items():
            group_owners.setdefault(find(first), []).extend(names)
        unit: dict[int, int] = {}
        for _owner, atoms in self.producers:
            r = roots[atoms]
            r = r[r != FIXED]
            if r.size == 0:
                continue
            g = find(int(r[0]))
            per = r.size // np.unique(r).size
            unit[g] = min(unit.get(g, per), per)
        self.groups = []
        for i, (g, classes) in enumerate(sorted(members.items(), key=lambda kv: min(kv[1]))):
            self.groups.append(
                Group(
                    index=i,
                    classes=np.array(sorted(classes), dtype=np.int64),
                    producers=list(dict.fromkeys(group_owners.get(g, ["<parameter>"]))),
                    unit_channels=max(1, unit.get(g, 1)),
                )
            )

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_inputs: tuple | torch.Tensor,
        *,
        protect_output: bool = True,
        leaf_modules: Sequence[type] = (),
        layer_norm: str = "prune",
        grouped: str = "channels",
    ) -> DependencyGraph:
        return trace(
            model, example_inputs, protect_output=protect_output, leaf_modules=leaf_modules,
            layer_norm=layer_norm, grouped=grouped,
        )


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Sequence[type]) -> None:
        super().__init__()
        self._extra_leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._extra_leaves and isinstance(m, self._extra_leaves):
            return True
        if isinstance(m, (nn.MultiheadAttention, PrunedLayerNorm)):  # + HeadPruned...MHA
            return True
        if has_name_rule(m):  # e.g. StochasticDepth, whose body fx would inline or wrap
            return True
        return super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module, leaf_modules: Sequence[type] = ()) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` with clear errors for untraceable code."""
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, AttributeError, ...
        raise StructuredTraceError(
            f"torch.fx could not trace {type(model).__name__}.forward: {type(exc).__name__}: "
            f"{exc}. Structured pruning needs a traceable forward; move data-dependent control "
            "flow into a submodule and pass its type in leaf_modules=(...) (its channels will "
            "be kept)."
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def trace(
    model: nn.Module,
    example_inputs: tuple | torch.Tensor,
    *,
    protect_output: bool = True,
    leaf_modules: Sequence[type] = (),
    layer_norm: str = "prune",
    grouped: str = "channels",
    fixed_norms: dict[str, str] | None = None,
    fixed_widths: dict[tuple[str, str], str] | None = None,
) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and return its dependency graph.

    Args:
        model: the model; left unchanged (it runs once in eval mode, without gradients).
        example_inputs: a tensor or a tuple of positional inputs, e.g. ``[1, 3, 224, 224]``.
        protect_output: pin every channel dimension of the outputs (the output shape is kept).
        leaf_modules: module types not to trace into; their channels are kept.
        layer_norm: "prune" (default: LayerNorm widths shrink with their group, exactly: the
            surgery makes them ``PrunedLayerNorm``s whose statistics still count the removed,
            zero channels) or "keep" (they stay). RMSNorm widths always shrink, exactly
            (weight and eps are rescaled).
        grouped: grouped convs (1 < groups < in_channels, not depthwise): "channels" (a unit
            is the same position in every group; the group count stays) or "groups" (a unit is
            one whole group: the group count, in/out channels and the next layers shrink).
            Both are exact.
        fixed_norms: ``{norm module: reason}`` kept whole (``plan`` passes the norms whose
            removed channels were not zero in the masked model).
        fixed_widths: ``{(module, attribute): reason}``: width attributes that reshape
            literals may not follow (``plan`` passes those its final check rejected).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if layer_norm not in ("keep", "prune"):
        raise ValueError(f"layer_norm must be 'keep' or 'prune'; got {layer_norm!r}")
    if grouped not in GROUPED:
        raise ValueError(f"grouped must be one of {GROUPED}; got {grouped!r}")
    graph = DependencyGraph(model=model, example_inputs=example_inputs, layer_norm=layer_norm,
                            grouped=grouped, fixed_norms=dict(fixed_norms or {}),
                            fixed_widths=dict(fixed_widths or {}),
                            leaf_modules=tuple(leaf_modules))
    with eval_mode(model), torch.no_grad():
        # traced in eval mode: `self.training` branches (dropout, stochastic depth) take the
        # inference path the pruned model is checked on
        gm = symbolic_trace(model, leaf_modules)
        gm.eval()  # its submodules are the model's: restored with them
        with mac_counter() as counter:  # MACs of the ops no rule costs (see the interpreter)
            interp = LabelInterpreter(gm, graph, protect_output=protect_output,
                                      flops=counter.get_total_flops)
            interp.run(*example_inputs)
    graph.fx_graph, graph.node_labels = gm.graph, interp.node_labels  # for zeros.py
    graph._traced_args = None  # the width-attribute proofs' cache, used while tracing only
    graph.finalize()
    return graph
