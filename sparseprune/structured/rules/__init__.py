"""How channel labels flow through each op (the dependency rules).

Each rule gets a ``_Ctx`` (node, argument values and labels, the real result) and returns the
labels of the result. Rules are found by module type (``MODULE_RULES``), by function object
(``FUNCTION_RULES``), by method name (``METHOD_RULES``) or, for modules and fx-wrapped functions
of libraries not imported here, by name (``MODULE_NAME_RULES``, ``FUNCTION_NAME_RULES``); an
op with no rule pins every channel of its inputs and is named in the plan.
``register_module_rule`` lets users add module types.

The rules are split by what they cover; importing this package registers all of them:

- ``core.py``: ``_Ctx``, ``IntDep``, the registries and the helpers shared by several kinds;
- ``functional.py``: elementwise math, reductions, softmax, pooling, matmul/sdpa/``F.linear``;
- ``shapes.py``: size queries, transpose/permute, (un)squeeze, expand/repeat, view/reshape;
- ``indexing.py``: getitem, chunk/split/unbind, cat/stack;
- ``modules.py``: module rules (activations, pooling, conv, linear, embedding, norms, PReLU);
- ``attention.py``: ``nn.MultiheadAttention`` and the head-count attributes ``HEAD_ATTRS``;
- ``window.py``: Swin's window attention and patch merging (torchvision, matched by name).

The fx interpreter that applies them is ``sparseprune.structured.interpreter``.
"""

from __future__ import annotations

from typing import Any

# The rule modules register their rules on import (the order does not matter: no two of them
# register the same key).
from . import attention, functional, indexing, modules, shapes, window  # noqa: F401
from .attention import HEAD_ATTRS
from .core import (
    FUNCTION_NAME_RULES,
    FUNCTION_RULES,
    METHOD_RULES,
    MODULE_NAME_RULES,
    MODULE_RULES,
    IntDep,
    Rule,
    register_module_rule,
)

# What a custom module rule works with; importable from here as before the split.
from .core import _Ctx as _Ctx
from .core import _none_labels as _none_labels
from .core import _unknown as _unknown

__all__ = [
    "FUNCTION_NAME_RULES",
    "FUNCTION_RULES",
    "HEAD_ATTRS",
    "METHOD_RULES",
    "MODULE_NAME_RULES",
    "MODULE_RULES",
    "IntDep",
    "LabelInterpreter",
    "Rule",
    "register_module_rule",
]


def __getattr__(name: str) -> Any:
    # ``LabelInterpreter`` used to live here; it is looked up lazily because the interpreter
    # imports this package.
    if name == "LabelInterpreter":
        from ..interpreter import LabelInterpreter

        return LabelInterpreter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
