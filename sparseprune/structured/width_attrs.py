"""Module int attributes that a reshape reads as a literal width (torchvision ViT's
``x.reshape(n, self.hidden_dim, n_h * n_w)``): fx records the value, not the attribute, so a
pruned width can only follow if the surgery rewrites the attribute.

Two checks, both by tracing the model again with the attribute changed (``torch.fx`` only, no
forward run): while the model is traced, :func:`literal_readers` finds the nodes whose
arguments follow the attribute (changed by one) and accepts the attribute only if they are all
view/reshape calls; once the widths are planned, :func:`unproven_widths` traces with the planned
value itself and requires the same graph with exactly the reshapes that let the width shrink
changed, and in those only that literal. Control flow on the attribute, derived values (``//
2``, ``min``) or a reshape of another tensor then show up as a changed graph or an extra
changed node, and the width is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

if TYPE_CHECKING:
    from .graph import DependencyGraph
    from .planner import Plan

__all__ = ["literal_readers", "unproven_widths"]

_RESHAPES = {("call_method", "view"), ("call_method", "reshape"),
             ("call_function", str(torch.reshape))}


def _traced_args(graph: DependencyGraph, overrides: dict[tuple[str, str], int]) -> dict | None:
    """``{node name: (op, target, args, kwargs)}`` of the model traced with ``overrides``
    applied to module attributes (restored afterwards); None when it does not trace."""
    from .graph import symbolic_trace

    saved = []
    try:
        for (path, attr), value in overrides.items():
            mod = graph.model.get_submodule(path)
            saved.append((mod, attr, getattr(mod, attr)))
            object.__setattr__(mod, attr, value)
        gm = symbolic_trace(graph.model, graph.leaf_modules)
    except Exception:  # noqa: BLE001 (any failure to trace means: not proven)
        return None
    finally:
        for mod, attr, value in reversed(saved):
            object.__setattr__(mod, attr, value)
    return {n.name: (n.op, str(n.target),
                     fx.node.map_arg((n.args, n.kwargs), lambda a: a.name))
            for n in gm.graph.nodes}


def _base(graph: DependencyGraph) -> dict | None:
    if graph._traced_args is None:
        graph._traced_args = _traced_args(graph, {})
    return graph._traced_args


def literal_readers(graph: DependencyGraph, path: str, attr: str) -> set[str] | None:
    """Names of the nodes whose arguments change when ``attr`` of module ``path`` changes by
    one, if there are some and all are view/reshape calls; else None. Cached per attribute."""
    key = (path, attr)
    if key in graph.fixed_widths:
        return None
    if key not in graph.width_literals:
        value = getattr(graph.model.get_submodule(path), attr)
        base, bumped = _base(graph), _traced_args(graph, {key: value + 1})
        changed = None
        if base is not None and bumped is not None and set(base) == set(bumped):
            changed = {k for k in base if base[k] != bumped[k]}
            if not changed or any(base[k][:2] not in _RESHAPES for k in changed):
                changed = None
        graph.width_literals[key] = changed
    return graph.width_literals[key]


def _subst(x: Any, old: int, new: int) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_subst(v, old, new) for v in x)
    if isinstance(x, dict):
        return {k: _subst(v, old, new) for k, v in x.items()}
    return new if isinstance(x, int) and not isinstance(x, bool) and x == old else x


def unproven_widths(plan: Plan) -> dict[tuple[str, str], str]:
    """``{(module, attribute): reason}`` for each width attribute the plan would rewrite whose
    new value the traced graph does not follow exactly as planned (see the module docstring)."""
    graph = plan.graph
    bad: dict[tuple[str, str], str] = {}
    for key, users in graph.width_users.items():
        atoms = graph.attrs.get(key)
        path, attr = key
        value = getattr(graph.model.get_submodule(path), attr)
        kept = int(plan.keep_of(atoms).sum()) if atoms is not None else value
        if kept == value:
            continue
        where = f"{path or type(graph.model).__name__}.{attr}"
        base = _traced_args(graph, {})
        new = _traced_args(graph, {key: kept})
        if base is None or new is None or set(base) != set(new):
            bad[key] = (f"{where} = {kept} traces to another graph (control flow or a size "
                        "derived from it): its reshape literals keep their width")
            continue
        changed = {k for k in base if base[k] != new[k]}
        extra = sorted(changed - users)
        wrong = [k for k in users if _subst(base[k], value, kept) != new[k]]
        if extra or wrong:
            bad[key] = (f"{where} is also read by {', '.join((extra or wrong)[:3])} in a way "
                        "the pruned width does not follow: its reshape literals keep their width")
    return bad
