"""``distill``: recover a pruned student by matching a dense teacher's outputs (and hidden states).

No labels needed: the teacher (usually the model before pruning) runs in ``eval()`` mode under
``torch.no_grad()`` and the student learns to reproduce its outputs (cosine, MSE or any loss),
optionally its named submodules' outputs too. The sparsity pattern never changes (masks stay
fixed; zeros made permanent by ``prune.remove`` are re-zeroed after every step).

Example::

    teacher = copy.deepcopy(model)
    sparseprune.prune(model, 0.9)
    result = distill(model, teacher, loader, steps=500, lr=1e-4, output="last_hidden_state")
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..pruning.masks import masked_tensors, trainable
from .distributed import is_main_process
from .train import OptimizerFactory

__all__ = ["DistillConfig", "DistillResult", "LossFn", "distill"]

LossFn = Callable[[object, object], Tensor]
_LOSSES = ("cosine", "mse")


def _positive_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DistillConfig.{name} must be an int >= {minimum}, got {value!r}")


def _positive(name: str, value: object, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    if not ok or math.isnan(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"DistillConfig.{name} must be a number {bound}, got {value!r}")


@dataclass(frozen=True)
class DistillConfig:
    """How :func:`distill` trains; every field is also a keyword of :func:`distill`.

    Attributes:
        loss: ``"cosine"`` (``1 - cos`` along the last dimension, averaged over the rest),
            ``"mse"``, or ``loss(student_out, teacher_out) -> scalar Tensor`` called on the
            compared outputs (see ``output``).
        steps: optimizer steps to run, re-iterating ``data`` as needed; when set, ``epochs`` is
            ignored. None: run ``epochs`` passes.
        epochs: passes over ``data`` when ``steps`` is None.
        lr: peak learning rate (reached after ``warmup_steps``, then constant).
        weight_decay: AdamW's weight decay (the default optimizer only).
        optimizer: ``(params, lr) -> Optimizer`` over the student's trainable parameters;
            default AdamW.
        output: what is compared: None (the model's output as is), an int or str index into it
            (``0`` for a tuple, ``"last_hidden_state"`` for a Hugging Face output), or a
            callable ``raw_output -> Tensor``. Applied to student and teacher alike.
        match_modules: submodule names whose outputs are matched too (MSE, averaged over the
            modules): a list of names present in both models, or a ``{student_name:
            teacher_name}`` mapping. A module returning a tuple or a dict is matched on its first
            tensor. Needs ``hidden_weight > 0``.
        hidden_weight: weight of the hidden-state MSE in the total loss
            ``loss + hidden_weight * hidden_mse``.
        inputs: ``batch -> model input`` applied to each batch first, e.g. ``lambda b: b[0]``
            for ``(inputs, targets)`` loaders; default identity.
        max_seconds: stop once the loop has run this long (checked after each step).
        warmup_steps: LR ramps linearly from ``lr / warmup_steps`` to ``lr``, then constant.
        decay: after warmup, ``"constant"`` or ``"cosine"`` (to 0 at the last step; needs a
            known length: ``steps``, or ``epochs`` over data with a ``len``; a ``max_seconds``
            stop may cut it short).
        grad_clip: clip the student's gradient norm to this (None: no clipping).
        train_mode: the student is in ``train()`` mode during the loop (dropout on); False:
            ``eval()``. Its per-module flags are restored afterwards either way.
        keep_zeros: re-zero, after every optimizer step, the exact zeros found at the start in
            every unmasked parameter with ``dim >= 2`` (what keeps the sparsity of masks
            already made permanent by ``prune.remove``; masked tensors keep theirs through their
            mask). A dense weight that happens to hold an exact 0 keeps it too.
        progress: tqdm bar over steps, with the running loss (main process only).
        seed: ``torch.manual_seed`` for the loop (dropout), inside ``torch.random.fork_rng`` so
            the caller's RNG state is untouched; None: no seeding.
    """

    loss: str | LossFn = "cosine"
    steps: int | None = None
    epochs: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    optimizer: OptimizerFactory | None = None
    output: int | str | Callable[[object], Tensor] | None = None
    match_modules: Sequence[str] | Mapping[str, str] = ()
    hidden_weight: float = 0.0
    inputs: Callable[[object], object] | None = None
    max_seconds: float | None = None
    warmup_steps: int = 0
    decay: str = "constant"
    grad_clip: float | None = 1.0
    train_mode: bool = True
    keep_zeros: bool = True
    progress: bool = True
    seed: int | None = 0

    def __post_init__(self) -> None:
        if not callable(self.loss) and self.loss not in _LOSSES:
            raise ValueError(f"DistillConfig.loss must be one of {list(_LOSSES)} or a callable "
                             f"(student_out, teacher_out) -> scalar Tensor, got {self.loss!r}")
        if self.steps is not None:
            _positive_int("steps", self.steps, 0)
        _positive_int("epochs", self.epochs, 0)
        _positive_int("warmup_steps", self.warmup_steps, 0)
        if self.decay not in ("constant", "cosine"):
            raise ValueError(f"DistillConfig.decay must be 'constant' or 'cosine', got "
                             f"{self.decay!r}")
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("hidden_weight", self.hidden_weight, allow_zero=True)
        if self.max_seconds is not None:
            _positive("max_seconds", self.max_seconds)
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if self.optimizer is not None and self.weight_decay:
            raise ValueError(f"DistillConfig.weight_decay={self.weight_decay!r} applies to the "
                             "default AdamW only; set it in your optimizer factory instead")
        if not (self.output is None or callable(self.output)
                or isinstance(self.output, (int, str)) and not isinstance(self.output, bool)):
            raise ValueError("DistillConfig.output must be None, an int or str index, or a "
                             f"callable, got {self.output!r}")
        if isinstance(self.match_modules, str):
            raise ValueError("DistillConfig.match_modules must be a list of module names or a "
                             f"mapping, got the string {self.match_modules!r}")
        if bool(self.match_modules) != bool(self.hidden_weight):
            raise ValueError(f"DistillConfig: match_modules={list(self.match_modules)!r} and "
                             f"hidden_weight={self.hidden_weight!r} go together (matching "
                             "submodule outputs needs both)")


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill` did.

    Attributes:
        steps: optimizer steps taken.
        seconds: wall time of the loop.
        losses: total loss (output + weighted hidden) of each step, before its update.
        stopped_by: ``"steps"`` (``config.steps`` reached), ``"epochs"`` (all passes done) or
            ``"time"`` (``max_seconds`` ran out).
    """

    steps: int
    seconds: float
    losses: list[float]
    stopped_by: str


def _call(model: nn.Module, batch: object) -> object:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(f"distill: a batch must be a Tensor, a tuple/list (model(*batch)) or a dict "
                    f"(model(**batch)), got {type(batch).__name__}; map it with inputs=...")


def _select(out: object, output: int | str | Callable[[object], Tensor] | None) -> object:
    if output is None:
        return out
    if callable(output):
        return output(out)
    try:
        return out[output]  # type: ignore[index]
    except (IndexError, KeyError, TypeError) as err:
        raise ValueError(f"distill: output={output!r} does not index the model's output "
                         f"({type(out).__name__})") from err


def _first_tensor(value: object, where: str) -> Tensor:
    """``value`` itself, or the first tensor of a tuple/list/dict output (``(hidden, attn)``)."""
    if isinstance(value, Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value
    for item in items if isinstance(value, (tuple, list, Mapping)) else ():
        if isinstance(item, Tensor):
            return item
    raise TypeError(f"distill: {where} returned {type(value).__name__} with no tensor to match")


def _output_loss(kind: str | LossFn, s: object, t: object) -> Tensor:
    if callable(kind):
        loss = kind(s, t)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            got = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"distill: the loss callable must return a scalar Tensor, got {got}")
        return loss.reshape(())
    if not isinstance(s, Tensor) or not isinstance(t, Tensor):
        raise TypeError(f"distill: loss={kind!r} compares tensors, got {type(s).__name__} "
                        f"(student) and {type(t).__name__} (teacher); pick one with output=...")
    if s.shape != t.shape:
        raise ValueError(f"distill: student output {list(s.shape)} and teacher output "
                         f"{list(t.shape)} differ in shape")
    t = t.to(s.dtype)
    if kind == "mse":
        return nn.functional.mse_loss(s, t)
    if s.dim() == 0:
        raise ValueError("distill: loss='cosine' needs outputs with a feature dimension, got "
                         "scalars; use loss='mse'")
    return 1.0 - nn.functional.cosine_similarity(s, t, dim=-1).mean()


def _check_not_shared(student: nn.Module, teacher: nn.Module) -> None:
    """ValueError when a trainable student parameter is a teacher one or shares its memory."""
    by_id = {id(p): n for n, p in teacher.named_parameters()}
    by_ptr = {p.untyped_storage().data_ptr(): n for n, p in teacher.named_parameters()
              if p.numel() and p.device.type != "meta"}
    for name, p in student.named_parameters():
        if not p.requires_grad:  # frozen and shared (an embedding) is harmless
            continue
        other = by_id.get(id(p))
        if other is None and p.numel() and p.device.type != "meta":
            other = by_ptr.get(p.untyped_storage().data_ptr())
        if other is not None:
            raise ValueError(f"distill: student parameter {name!r} shares its tensor with teacher "
                             f"parameter {other!r}; distil into a copy (copy.deepcopy(teacher) "
                             "before pruning)")


def _resolve(model: nn.Module, name: str, which: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(f"distill: the {which} has no module {name!r} (modules include "
                         f"{names})") from err


def _hooks(student: nn.Module, teacher: nn.Module, pairs: Mapping[str, str] | Sequence[str],
           seen: dict[str, dict[str, Tensor]]) -> list:
    """Forward hooks storing each matched module's output in ``seen[which][student_name]``."""
    pairs = dict(pairs) if isinstance(pairs, Mapping) else {n: n for n in pairs}
    targets = [(which, key, name, _resolve(model, name, which))  # all resolved before any hook
               for which, model, names in (("student", student, list(pairs)),
                                           ("teacher", teacher, list(pairs.values())))
               for key, name in zip(pairs, names, strict=True)]
    handles = []
    for which, key, name, module in targets:
        def hook(_mod, _args, out, which=which, key=key, name=name):
            seen[which][key] = _first_tensor(out, f"{which} module {name!r}")
        handles.append(module.register_forward_hook(hook))
    return handles


def _hidden_loss(seen: dict[str, dict[str, Tensor]], keys: list[str]) -> Tensor:
    terms = []
    for key in keys:
        if key not in seen["student"] or key not in seen["teacher"]:
            raise ValueError(f"distill: matched module {key!r} did not run in both models' "
                             "forward pass")
        s, t = seen["student"][key], seen["teacher"][key]
        if s.shape != t.shape:
            raise ValueError(f"distill: matched module {key!r} outputs {list(s.shape)} in the "
                             f"student but {list(t.shape)} in the teacher")
        terms.append(nn.functional.mse_loss(s, t.to(s.dtype)))
    return torch.stack(terms).mean()


def _zero_masks(model: nn.Module) -> list[tuple[nn.Parameter, Tensor]]:
    """``(param, param == 0)`` for unmasked trainable params with dim >= 2 holding a zero."""
    hooked = {id(trainable(t.module, t.param)) for t in masked_tensors(model)}
    found = []
    for p in model.parameters():
        if p.requires_grad and p.dim() >= 2 and id(p) not in hooked:
            zero = p.detach() == 0
            if zero.any():
                found.append((p, zero))
    return found


def distill(student: nn.Module, teacher: nn.Module, data: Iterable,
            config: DistillConfig | None = None, **options: object) -> DistillResult:
    """Train ``student`` in place to reproduce ``teacher``'s outputs on ``data``; masks stay fixed.

    Each step runs the teacher (``eval()``, ``torch.no_grad()``) and the student on one batch,
    takes ``loss(output(s), output(t)) + hidden_weight * mean_i mse(s_i, t_i)`` over the matched
    modules ``i``, clips the student's gradients and steps the optimizer: linear warmup, then a
    constant LR or a cosine decay (``decay``). Only the student's
    ``requires_grad`` parameters are optimised. Masked tensors keep their masks through the
    pre-hook and ``keep_zeros`` keeps removed masks' zeros, so the sparsity is exactly unchanged.
    Both models' per-module ``training`` flags and the caller's RNG state are restored.

    Args:
        student: the pruned model, modified in place.
        teacher: the reference model (e.g. a deep copy taken before pruning); left unchanged.
            Both models must live on the device of the batches.
        data: re-iterable batches, e.g. a ``DataLoader``. A batch (after ``inputs``) is a Tensor
            (``model(batch)``), a tuple/list (``model(*batch)``) or a dict (``model(**batch)``);
            labels are not used.
        config: a :class:`DistillConfig`; default ``DistillConfig()``.
        **options: :class:`DistillConfig` fields overriding ``config`` (``steps=200, lr=1e-4``).

    Returns:
        A :class:`DistillResult` (steps, seconds, per-step losses, why it stopped).

    Raises:
        ValueError: a bad option, ``data`` yielding no batches, student and teacher sharing a
            parameter, no trainable student parameter, mismatched output or hidden shapes.
        TypeError: an unknown option name, or a batch of another type.
        FloatingPointError: the loss became NaN or infinite (the step is not taken).
    """
    config = config or DistillConfig()
    if options:
        known = {f.name for f in dataclasses.fields(DistillConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"distill: unknown option(s) {unknown}; options are {sorted(known)}")
        config = dataclasses.replace(config, **options)  # validates in __post_init__
    if student is teacher:
        raise ValueError("distill: student and teacher are the same module; distil into a copy")
    _check_not_shared(student, teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("distill: the student has no parameter with requires_grad=True")

    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices, enabled=config.seed is not None):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        return _loop(student, teacher, data, config, params)


def _loop(student: nn.Module, teacher: nn.Module, data: Iterable, config: DistillConfig,
          params: list[nn.Parameter]) -> DistillResult:
    opt = (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
           if config.optimizer is None else config.optimizer(params, config.lr))
    warmup = config.warmup_steps
    length = config.steps
    if length is None and hasattr(data, "__len__"):
        length = config.epochs * len(data)  # type: ignore[arg-type]
    if config.decay == "cosine" and length is None:
        raise ValueError("distill: decay='cosine' needs a known length: pass steps=, or data "
                         "with a len()")

    def scale(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if config.decay == "cosine" and length is not None:
            span = max(1, length - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / span)))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
    zeros = _zero_masks(student) if config.keep_zeros else []
    keys = list(config.match_modules)
    seen: dict[str, dict[str, Tensor]] = {"student": {}, "teacher": {}}
    handles = _hooks(student, teacher, config.match_modules, seen) if keys else []
    flags = [(m, m.training) for model in (student, teacher) for m in model.modules()]

    def step(batch: object) -> float:
        if config.inputs is not None:
            batch = config.inputs(batch)
        for d in seen.values():
            d.clear()
        with torch.no_grad():
            t_out = _select(_call(teacher, batch), config.output)
        loss = _output_loss(config.loss, _select(_call(student, batch), config.output), t_out)
        if keys:
            loss = loss + config.hidden_weight * _hidden_loss(seen, keys)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"distill: the loss is {value} at step {len(losses)}; "
                                     "lower lr or check the inputs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            for p, zero in zeros:
                p.masked_fill_(zero, 0.0)
        return value

    total = config.steps
    if total is None and hasattr(data, "__len__"):
        total = config.epochs * len(data)  # type: ignore[arg-type]
    bar = None
    if config.progress and is_main_process():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="distill", unit="step", leave=False)
    losses: list[float] = []
    stopped_by = "steps" if config.steps is not None else "epochs"
    running = 0.0
    t0 = time.perf_counter()
    try:
        student.train(config.train_mode)
        teacher.eval()
        epoch = 0
        while len(losses) < config.steps if config.steps is not None else epoch < config.epochs:
            batches = 0
            for batch in data:
                batches += 1
                losses.append(step(batch))
                if bar is not None:  # running loss: an exponential average over ~10 steps
                    running = losses[0] if len(losses) == 1 else 0.9 * running + 0.1 * losses[-1]
                    bar.set_postfix(loss=f"{running:.4f}", refresh=False)
                    bar.update(1)
                if config.steps is not None and len(losses) >= config.steps:
                    break
                if config.max_seconds is not None and \
                        time.perf_counter() - t0 >= config.max_seconds:
                    stopped_by = "time"
                    break
            if batches == 0:
                raise ValueError("distill: data yielded no batches" if epoch == 0 else
                                 f"distill: data yielded no batches on pass {epoch + 1} (a "
                                 "one-shot iterator? pass a list or a DataLoader)")
            if stopped_by == "time":
                break
            epoch += 1
    finally:
        for h in handles:
            h.remove()
        for m, was in flags:
            m.training = was
        if bar is not None:
            bar.close()
    return DistillResult(steps=len(losses), seconds=time.perf_counter() - t0, losses=losses,
                         stopped_by=stopped_by)
