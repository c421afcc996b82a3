"""Observing a block's Linears: each target's input is handed to its observer just before the target uses it,
through a forward pre-hook (Linear, Conv1D) or a torch-function mode (fused MoE experts). Linears fed the very
same tensor share one observer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Protocol

import greenlet
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models.discover import Target


class Observer(Protocol):
    def update(self, inputs: torch.Tensor) -> None: ...


MakeObserver = Callable[[Target], Observer | None]
Reduce = Callable[[Observer], None]
# the dense model's input of a target in a batch (``fit: dense``): (target, batch number) -> tensor
DenseInput = Callable[[Target, int], torch.Tensor]


class _ExpertInputs(TorchFunctionMode):
    """Sees ``F.linear(x, parameter[e])`` calls on fused 3-D expert weights and reports ``x`` for
    expert ``e``: transformers' eager experts path slices the parameter, so the weight is a view of it."""

    def __init__(self, experts: dict[int, dict[int, Target]], on_input: Callable) -> None:
        super().__init__()
        self.experts = experts
        self.on_input = on_input

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            base = getattr(weight, "_base", None)
            if base is not None and id(base) in self.experts:
                expert = (weight.storage_offset() - base.storage_offset()) // base.stride(0)
                target = self.experts[id(base)].get(expert)
                if target is not None:
                    self.on_input(target, args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


@contextmanager
def observing(targets: list[Target], on_input: Callable[[Target, torch.Tensor], None]) -> Iterator[None]:
    """While active, ``on_input(target, x)`` is called with each target's input just before it is used
    (a forward pre-hook on Linear/Conv1D, a torch-function mode for fused experts)."""
    handles = []
    experts: dict[int, dict[int, Target]] = {}
    for target in targets:
        if target.expert is None:

            def hook(module: nn.Module, args: tuple, kwargs: dict, target: Target = target) -> None:
                on_input(target, args[0] if args else kwargs["input"])

            handles.append(target.module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            experts.setdefault(id(target.parameter), {})[target.expert] = target
    try:
        with _ExpertInputs(experts, on_input) if experts else nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()


class Statistics:
    """Each target's observer, fed the target's inputs.

    A Linear fed the very tensor object that the Linear called just before it was fed (q/k/v, gate/up)
    shares that one's observer: its statistics are computed once, not once per Linear. ``keep_last_only``
    drops a group's observer as soon as the next group starts (the one-pass walk has solved it by then), so
    only the statistics being solved are held. "Just before" is per batch: the lockstep walk feeds every
    batch from its own greenlet.

    ``dense_input``: each observer also gets the dense model's input of the same tokens. Every walk feeds a
    target its batches in order, once each per pass (the lockstep resumes the batches in order), so the k-th
    input a target is fed is batch k's.
    """

    def __init__(
        self, make_observer: MakeObserver, keep_last_only: bool = False, dense_input: DenseInput | None = None
    ) -> None:
        self.make_observer = make_observer
        self.keep_last_only = keep_last_only
        self.dense_input = dense_input
        self.leader: dict[Target, Target] = {}
        self.observers: dict[Target, Observer | None] = {}
        self.last: dict[greenlet.greenlet, tuple[torch.Tensor, Target]] = {}  # per batch
        self.fed: dict[Target, int] = {}  # batches each target was fed in this pass

    def feed(self, target: Target, inputs: torch.Tensor) -> None:
        batch = greenlet.getcurrent()
        if target not in self.leader:
            last = self.last.get(batch)
            shares = last is not None and inputs is last[0] and target.expert is None
            leader = self.leader[last[1]] if shares else target
            self.leader[target] = leader
            if leader is target:
                if self.keep_last_only:
                    self.observers.clear()
                self.observers[target] = self.make_observer(target)
        self.last[batch] = (inputs, target)
        number = self.fed.get(target, 0)
        self.fed[target] = number + 1
        if self.leader[target] is target:
            observer = self.observers[target]
            if observer is not None and self.dense_input is not None:
                observer.update(inputs, self.dense_input(target, number))
            elif observer is not None:
                observer.update(inputs)

    def observer(self, target: Target) -> Observer | None:
        """The target's statistics, or None when no input ever reached it (an expert no token was routed to)."""
        leader = self.leader.get(target)
        return self.observers.get(leader) if leader is not None else None

    def end_pass(self) -> None:
        self.last.clear()  # holds activations otherwise
        self.fed.clear()

    def reduce_all(self, targets: list[Target], reduce: Reduce | None) -> None:
        """Complete every observer with the other ranks', in the targets' order (the same on every rank); a
        target this rank never fed (an expert no token was routed to here) still takes part, empty."""
        if reduce is None:
            return
        for target in targets:
            if self.leader.get(target, target) is not target:
                continue  # shares the statistics of the Linear before it
            if target not in self.leader:
                self.leader[target] = target
                self.observers[target] = self.make_observer(target)
            observer = self.observers[target]
            if observer is not None:
                reduce(observer)


def eager_experts(model: nn.Module) -> Callable[[], None]:
    """Route fused MoE experts through transformers' eager loop (F.linear per expert) so their inputs
    can be observed; returns the function that restores the previous implementation."""
    previous = getattr(getattr(model, "config", None), "_experts_implementation", None)
    if previous in (None, "eager") or not hasattr(model, "set_experts_implementation"):
        return lambda: None
    model.set_experts_implementation("eager")
    return lambda: model.set_experts_implementation(previous)
