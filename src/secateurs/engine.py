"""The block-by-block walk (see ../shared/DESIGN.md): capture the first block's inputs, then for each
block observe its weights' inputs, solve (prune), and propagate the pruned block's outputs to the next.

The engine knows no methods: the caller gives ``make_observer(target)`` (statistics to stream, or None)
and ``solve(target, observer)`` (prunes ``target.weight()`` in place). Three walks:

* two-pass (default, the Wanda paper's procedure): per block, one pass in batches with hooks gathering
  statistics, then every weight is solved, then a second pass computes the pruned block's outputs;
* one-pass true-sequential: a forward pre-hook on each Linear gathers its statistics from every batch and
  prunes it before any batch goes past it, so later Linears see pruned earlier ones and the block's output
  is already the next block's input. The batches run in lockstep, each in its own coroutine, one at a
  time (see ``_Lockstep``): the cost of one batched pass, where the whole batch at once runs 1.3x to 1.7x
  slower per token on a CPU. Fused MoE experts (routing differs between batches) take the whole batch at once;
* staged true-sequential, the fallback when the calibration activations do not fit in memory: one pass in
  batches per stage of Linears that share an input (q/k/v, o, gate/up, down), then one pass for the outputs.

Any walk can tune each block after it is pruned (``tune``, e.g. ``secateurs.ebft``): the block's inputs and
the dense block's outputs on them are kept (twice the calibration activations more), the caller's ``tune``
changes the pruned block's weights, and the tuned block's outputs go on to the next block. With
``tune_target="model"`` the outputs aimed at are the dense model's own: a dense stream walks beside the pruned
one (in the same memory), so each block is also tuned to undo the drift of the pruned blocks before it.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import greenlet
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from .checkpoint import WalkState
from .errors import ResumeError, UnsupportedModelError
from .models.discover import Target, check_token_ids, find_blocks, find_targets


class Observer(Protocol):
    def update(self, inputs: torch.Tensor) -> None: ...


MakeObserver = Callable[[Target], Observer | None]
Solve = Callable[[Target, Observer | None], None]
# (block, its pruned targets, the block's inputs, the dense block's outputs on them, arguments per batch size)
Tune = Callable[[nn.Module, list[Target], list[torch.Tensor], list[torch.Tensor], dict], list[float]]

# Calibration windows per forward in the batched walks: measured on a 2-core CPU with SmolLM2 (512 tokens a
# window), 4 ran a block 25% faster than 16 and 2x faster than the whole batch of 128 (cache-friendly sizes).
DEFAULT_BATCH_SIZE = 4
# what a tuned block aims at: the dense block's outputs on its own inputs, or the dense model's activations
TUNE_TARGETS = ("block", "model")

# A captured KV cache grows by gigabytes and is never needed for calibration.
_NO_CACHE = {"cache": None, "past_key_values": None, "past_key_value": None, "layer_past": None, "use_cache": False}


class _StopForward(Exception):
    """Raised after the last block has recorded its arguments: nothing after the blocks is needed."""


@dataclass
class BlockInputs:
    """The first block's input hidden states (one tensor per batch) and every block's other arguments,
    recorded once per batch size (masks and position embeddings depend on it, not on the tokens)."""

    hidden: list[torch.Tensor]
    arguments: dict[int, list[dict[str, Any]]]

    def block_arguments(self, index: int, batch: torch.Tensor) -> dict[str, Any]:
        return self.arguments[batch.shape[0]][index]


@dataclass
class WalkReport:
    mode: str
    batch_size: int
    passes_per_block: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tuned: list[dict[str, Any]] = field(default_factory=list)  # per block, with ``tune``


def _bind_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """Split a block call into its hidden states and keyword arguments, with the KV cache dropped."""
    bound = signature.bind(*args, **kwargs)
    arguments = dict(bound.arguments)
    parameters = signature.parameters
    hidden = arguments.pop(next(iter(parameters)))
    for name, parameter in parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and arguments.pop(name, ()):
            raise UnsupportedModelError("a decoder block takes extra positional arguments: not supported")
    for name, value in _NO_CACHE.items():
        if name in arguments:
            arguments[name] = value
    return hidden, arguments


def run_block(block: nn.Module, hidden: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    output = block(hidden, **arguments)
    return output[0] if isinstance(output, (tuple, list)) else output


def _move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move embeddings, rotary tables, norms... to ``device``; blocks stay where they are."""

    def visit(module: nn.Module) -> None:
        if module is blocks:
            return
        for child in module.children():
            visit(child)
        for parameter in module.parameters(recurse=False):
            if parameter.device.type != "meta":  # an offloaded model's head: not read, not needed
                parameter.data = parameter.data.to(device)
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)

    visit(model)


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int, device: torch.device
) -> BlockInputs:
    """Run the model on ``input_ids`` with every block replaced by a recorder that passes its input
    through: block 0's inputs are kept, and each block's own arguments (sliding or global masks,
    per-layer rotary tables...) are recorded, so every block later runs with exactly what the model
    would give it. The last recorder stops the forward: no head, no logits."""
    hidden: list[torch.Tensor] = []
    arguments: dict[int, list[dict[str, Any]]] = {}
    recording: list[list[dict[str, Any]] | None] = [None]

    def recorder(index: int, signature: inspect.Signature) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            states, block_arguments = _bind_arguments(signature, args, kwargs)
            if index == 0:
                hidden.append(states)
            if recording[0] is not None:
                recording[0].append(block_arguments)
            if index == len(blocks) - 1:
                raise _StopForward
            return states

        return forward

    check_token_ids(model, input_ids)
    for index, block in enumerate(blocks):
        block.forward = recorder(index, inspect.signature(block.forward))
    _move_outside_blocks(model, blocks, device)
    try:
        for batch in input_ids.split(batch_size):
            recording[0] = None if batch.shape[0] in arguments else arguments.setdefault(batch.shape[0], [])
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for block in blocks:
            del block.forward
        if device.type != "cpu":
            _move_outside_blocks(model, blocks, torch.device("cpu"))
    return BlockInputs(hidden, arguments)


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


def release_free_memory() -> None:
    """Give the allocator's free pages back to the system (glibc's malloc_trim; nothing elsewhere). Between
    blocks, freed activations and weights otherwise stay resident in malloc's arenas, fragmented: measured here
    that is a few hundred MB of peak RSS over a walk, for about a millisecond a block."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def fix_mmap_threshold() -> None:
    """Give every allocation of 1 MiB or more its own mapping, returned to the system when freed (glibc's
    mallopt; nothing elsewhere, nor when the user set MALLOC_MMAP_THRESHOLD_). glibc's default threshold rises
    to the size of each large block freed, after which activations come from the heap and fragment it: on
    the Q-CPU walk that cost 150-350 MB of peak RSS that malloc_trim between blocks did not give back.
    The price is a page fault per fresh activation: in memory, Wanda's Q-CPU walk took 23% longer (offloaded,
    SparseGPT's took 30% longer and Wanda's no longer), so only the memory-first mode (``--offload disk``)
    sets it."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def available_memory(device: torch.device | str = "cpu") -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def one_pass_fits(
    model: nn.Module,
    targets: list[Target],
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    copies: int = 0,
) -> bool:
    """Rough bound on one block's activations in the one-pass walk with batches of ``batch_size`` windows in
    lockstep: every paused batch holds a few copies of the hidden states and of the widest projection (its
    residual, the input of the Linear it waits at), the running batch its temporaries and, where they are
    materialized, its attention scores; ``copies`` more hidden states per token are kept (tuning: 2)."""
    samples, length = input_ids.shape
    element = torch.finfo(next(model.parameters()).dtype).bits // 8
    config = getattr(model, "config", None)
    hidden_size = getattr(config, "hidden_size", 0) or max(t.in_features for t in targets)
    widest = max(t.weight().shape[0] for t in targets)
    tokens = samples * length
    running = min(batch_size, samples) * length
    needed = element * (tokens * ((3 + copies) * hidden_size + 2 * widest) + running * (8 * hidden_size + 4 * widest))
    if getattr(config, "_attn_implementation", "eager") == "eager":
        heads = getattr(config, "num_attention_heads", 1)
        needed += min(batch_size, samples) * heads * length**2 * element * 2
    return needed < 0.6 * available_memory(device)


def walk(
    model: nn.Module,
    input_ids: torch.Tensor,
    make_observer: MakeObserver,
    solve: Solve,
    *,
    ignore: list[str] | tuple[str, ...] = (),
    true_sequential: bool = False,
    observe_only: bool = False,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    state: WalkState | None = None,
    store: BlockStore | None = None,
    reduce: Callable[[Observer], None] | None = None,
    tune: Tune | None = None,
    tune_target: str = "block",
) -> WalkReport:
    """Prune every target of every decoder block of ``model`` in place, block by block.

    ``observe_only``: one pass per block of the unchanged model; ``solve`` receives every target's statistics
    (a layer-wise allocation such as OWL reads the dense model's statistics before pruning). ``state``: saved
    after every block, and restored first when it holds finished blocks (``--resume``). ``store`` puts a block's
    weights on the device and takes them off (default: they live in memory; ``secateurs.offload`` reads them
    from disk). ``reduce`` completes an observer's statistics with the other ranks' before it is solved
    (``secateurs.distributed``). ``tune`` changes each block's weights after it is pruned, before its outputs
    go on (see the module's docstring); the report holds each block's error before and after. ``tune_target``:
    ``block``, the dense block's outputs on the pruned block's inputs (EBFT's), or ``model``, the dense model's
    (one of ``TUNE_TARGETS``, which the recipe checks).
    """
    store = store or MemoryBlocks(torch.device(device))
    device = torch.device(device)
    blocks_name, blocks = find_blocks(model)
    first_targets = find_targets(blocks[0], f"{blocks_name}.0", ignore) or find_targets(blocks[0], "")
    samples = input_ids.shape[0]
    mode = "observe-only" if observe_only else "two-pass"
    if true_sequential and not observe_only:
        experts = any(t.expert is not None for t in first_targets)
        if experts:
            batch_size = samples  # routing differs between batches: no lockstep, the whole batch at once
        copies = 0 if tune is None else 2  # the block's inputs and the dense block's outputs
        fits = one_pass_fits(model, first_targets, input_ids, batch_size or DEFAULT_BATCH_SIZE, device, copies)
        # an expert no token reached on a rank would skip a collective in the one-pass walk: reduce per stage
        mode = "one-pass" if fits and not (experts and reduce is not None) else "staged"
        if not fits:
            batch_size = max(1, samples // 8)
    if state is not None and state.blocks_done:  # the interrupted run's walk, so that the result is identical
        mode, batch_size = state.extra.get("mode", mode), state.extra["batch_size"]
    batch_size = min(batch_size or DEFAULT_BATCH_SIZE, samples)
    if state is not None:
        state.extra.update(mode=mode, batch_size=batch_size)
    report = WalkReport(mode=mode, batch_size=batch_size)
    if state is not None and tune is not None:  # the blocks tuned before an interruption stay in the report
        report.tuned = state.extra.setdefault("tuned", [])
    if mode == "staged":
        report.notes.append(
            f"the whole calibration batch ({samples} samples) does not fit in memory at once: "
            f"true-sequential walk in stages, batches of {batch_size}"
        )
    seconds = dict.fromkeys(("capture", "load", "observe", "solve", "propagate", "tune", "write"), 0.0)
    timed_solve = _timed(solve, seconds)

    restore_experts = _eager_experts(model)
    try:
        with torch.no_grad():
            start = time.perf_counter()
            store.load_outside()
            try:
                inputs = capture_block_inputs(model, blocks, input_ids, batch_size, device)
            finally:
                store.release_outside()
            seconds["capture"] = time.perf_counter() - start
            # the dense model's activations beside the pruned ones (tuning toward the dense model's outputs)
            reference = [h.clone() for h in inputs.hidden] if tune is not None and tune_target == "model" else None
            first = _restore(state, blocks, [inputs.hidden] if reference is None else [inputs.hidden, reference])
            passes = 0
            bar = tqdm(blocks, desc="pruning", unit="block", disable=not progress, initial=first)
            for index, block in enumerate(blocks):
                if index < first:
                    continue
                start = time.perf_counter()
                store.load(index, block)
                seconds["load"] += time.perf_counter() - start
                targets = find_targets(block, f"{blocks_name}.{index}", ignore)
                arguments = {size: per_block[index] for size, per_block in inputs.arguments.items()}
                step = {"two-pass": _two_pass, "one-pass": _one_pass, "staged": _staged, "observe-only": _observe_only}[
                    mode
                ]
                if tune is not None and mode != "observe-only":
                    pruned = functools.partial(find_targets, block, f"{blocks_name}.{index}", ignore)
                    step = functools.partial(_tuned_step, step, tune, report.tuned, index, pruned, reference)
                passes += step(block, targets, inputs.hidden, arguments, make_observer, timed_solve, seconds, reduce)
                start = time.perf_counter()
                if state is not None:
                    state.save_block(index, f"{blocks_name}.{index}", block, inputs.hidden + (reference or []))
                store.release(index, block)
                release_free_memory()
                seconds["write"] += time.perf_counter() - start
                bar.update()
            bar.close()
            report.passes_per_block = passes / max(1, len(blocks) - first)
    finally:
        restore_experts()
    report.seconds = seconds
    return report


def _tuned_step(
    step, tune: Tune, records: list, index: int, pruned, reference, block, targets, hidden, arguments, *walk_state
) -> int:  # noqa: ANN001
    """``step`` (prune the block), with the block tuned after it: the block's inputs and the outputs aimed at are
    kept first, and the tuned block's outputs end in ``hidden``. The outputs aimed at are the unpruned block's on
    the same inputs or, with a ``reference`` stream (the dense model's inputs of this block), the unpruned block's
    on those, which then become the stream's next inputs. ``pruned()`` finds the block's weights again after the
    step (a structured cut gives modules new, smaller ones). The record's error is the share of the dense block's
    update (output - input) that the block misses, sum ||y - y_dense||^2 / sum ||y_dense - x_dense||^2 over the
    calibration tokens, before and after tuning; a tuning that does not lower it is undone."""
    make_observer, solve, seconds, reduce = walk_state
    start = time.perf_counter()
    inputs = [batch.clone() for batch in hidden]
    if reference is None:
        dense = [run_block(block, batch, arguments[batch.shape[0]]) for batch in inputs]
        update = sum(float((y.float() - x.float()).pow(2).sum()) for x, y in zip(inputs, dense, strict=True))
    else:
        update = 0.0
        for j, batch in enumerate(reference):
            output = run_block(block, batch, arguments[batch.shape[0]])
            update += float((output.float() - batch.float()).pow(2).sum())
            _overwrite(reference, j, output)
        dense = reference

    def error() -> float:
        missed = sum(float((h.float() - y.float()).pow(2).sum()) for h, y in zip(hidden, dense, strict=True))
        return missed / update if update else 0.0

    seconds["tune"] += time.perf_counter() - start
    passes = step(block, targets, hidden, arguments, make_observer, solve, seconds, reduce)
    start = time.perf_counter()
    before = error()
    untuned = {name: tensor.clone() for name, tensor in block.state_dict().items()}
    losses = tune(block, pruned(), inputs, dense, arguments)

    def propagate() -> None:
        for j, batch in enumerate(inputs):
            _overwrite(hidden, j, run_block(block, batch, arguments[batch.shape[0]]))

    propagate()
    after = error()
    kept = after < before
    if not kept:  # the block is left as pruned, and so are its outputs
        block.load_state_dict(untuned)
        propagate()
    records.append(
        {
            "block": index,
            "error_before": round(before, 6),
            "error_after": round(after, 6),
            "kept": kept,
            "epoch_losses": [round(loss, 6) for loss in losses],
        }
    )
    seconds["tune"] += time.perf_counter() - start
    return passes + 2


class BlockStore(Protocol):
    """Where a block's weights live between its turns (see ``walk``)."""

    def load(self, index: int, block: nn.Module) -> None: ...

    def release(self, index: int, block: nn.Module) -> None: ...

    def load_outside(self) -> None: ...

    def release_outside(self) -> None: ...


class MemoryBlocks:
    """The whole model is in memory: a block goes to the compute device for its turn and comes back."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def load(self, index: int, block: nn.Module) -> None:
        block.to(self.device)

    def release(self, index: int, block: nn.Module) -> None:
        if self.device.type != "cpu":
            block.to("cpu")

    def load_outside(self) -> None:
        pass

    def release_outside(self) -> None:
        pass


def _restore(state: WalkState | None, blocks: nn.ModuleList, streams: list[list[torch.Tensor]]) -> int:
    """Load an interrupted run's finished blocks and the next block's inputs into ``streams`` (the pruned stream's
    batches, then the dense stream's where one walks beside it); returns the first block to walk."""
    if state is None or not state.blocks_done:
        return 0
    saved = state.restore(blocks, load_blocks=state.extra.get("restore_blocks", True))
    if saved is not None:
        device = streams[0][0].device
        if [tuple(h.shape) for h in saved] != [tuple(h.shape) for stream in streams for h in stream]:
            raise ResumeError("the saved calibration inputs do not match this run's batches: run without --resume")
        for stream in streams:
            stream[:], saved = [h.to(device) for h in saved[: len(stream)]], saved[len(stream) :]
    return state.blocks_done


def _timed(solve: Solve, seconds: dict[str, float]) -> Solve:
    def timed(target: Target, observer: Observer | None) -> None:
        start = time.perf_counter()
        solve(target, observer)
        seconds["solve"] += time.perf_counter() - start

    return timed


def _eager_experts(model: nn.Module) -> Callable[[], None]:
    """Route fused MoE experts through transformers' eager loop (F.linear per expert) so their inputs
    can be observed; returns the function that restores the previous implementation."""
    previous = getattr(getattr(model, "config", None), "_experts_implementation", None)
    if previous in (None, "eager") or not hasattr(model, "set_experts_implementation"):
        return lambda: None
    model.set_experts_implementation("eager")
    return lambda: model.set_experts_implementation(previous)


class _Statistics:
    """Each target's observer, fed the target's inputs.

    A Linear fed the very tensor object that the Linear called just before it was fed (q/k/v, gate/up)
    shares that one's observer: its statistics are computed once, not once per Linear. ``keep_last_only``
    drops a group's observer as soon as the next group starts (the one-pass walk has solved it by then), so
    only the statistics being solved are held. "Just before" is per batch: the lockstep walk feeds every
    batch from its own greenlet.
    """

    def __init__(self, make_observer: MakeObserver, keep_last_only: bool = False) -> None:
        self.make_observer = make_observer
        self.keep_last_only = keep_last_only
        self.leader: dict[Target, Target] = {}
        self.observers: dict[Target, Observer | None] = {}
        self.last: dict[greenlet.greenlet, tuple[torch.Tensor, Target]] = {}  # per batch

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
        if self.leader[target] is target:
            observer = self.observers[target]
            if observer is not None:
                observer.update(inputs)

    def observer(self, target: Target) -> Observer | None:
        """The target's statistics, or None when no input ever reached it (an expert no token was routed to)."""
        leader = self.leader.get(target)
        return self.observers.get(leader) if leader is not None else None

    def end_pass(self) -> None:
        self.last.clear()  # holds activations otherwise


def _reduce_all(statistics: _Statistics, targets: list[Target], reduce: Callable[[Observer], None] | None) -> None:
    """Complete every observer with the other ranks', in the targets' order (the same on every rank); a target
    this rank never fed (an expert no token was routed to here) still takes part, with empty statistics."""
    if reduce is None:
        return
    for target in targets:
        if statistics.leader.get(target, target) is not target:
            continue  # shares the statistics of the Linear before it
        if target not in statistics.leader:
            statistics.leader[target] = target
            statistics.observers[target] = statistics.make_observer(target)
        observer = statistics.observers[target]
        if observer is not None:
            reduce(observer)


def _pass(block: nn.Module, hidden: list[torch.Tensor], arguments: dict, keep: bool) -> None:
    for j, batch in enumerate(hidden):
        output = run_block(block, batch, arguments[batch.shape[0]])
        if keep:
            _overwrite(hidden, j, output)


def _overwrite(hidden: list[torch.Tensor], index: int, output: torch.Tensor) -> None:
    """Keep a block's output in its input's buffer: the long-lived activation buffers then stay where they
    were first allocated, and do not land between the forward's freed temporaries, which fragments the
    CPU allocator's heap (peak RSS)."""
    old = hidden[index]
    if old.shape == output.shape and old.dtype == output.dtype and old.device == output.device:
        old.copy_(output)
    else:
        hidden[index] = output


def _observe_pass(block, targets, hidden, arguments, statistics: _Statistics, seconds) -> None:  # noqa: ANN001
    start = time.perf_counter()
    with observing(targets, statistics.feed):
        _pass(block, hidden, arguments, keep=False)
    statistics.end_pass()
    seconds["observe"] += time.perf_counter() - start


def _observe_only(block, targets, hidden, arguments, make_observer, solve, seconds, reduce=None) -> int:  # noqa: ANN001
    statistics = _Statistics(make_observer)
    start = time.perf_counter()
    with observing(targets, statistics.feed):
        _pass(block, hidden, arguments, keep=True)
    statistics.end_pass()
    seconds["observe"] += time.perf_counter() - start
    _reduce_all(statistics, targets, reduce)
    for target in targets:
        solve(target, statistics.observer(target))
    return 1


def _two_pass(block, targets, hidden, arguments, make_observer, solve, seconds, reduce=None) -> int:  # noqa: ANN001
    statistics = _Statistics(make_observer)
    _observe_pass(block, targets, hidden, arguments, statistics, seconds)
    _reduce_all(statistics, targets, reduce)
    for target in targets:
        solve(target, statistics.observer(target))
    del statistics
    start = time.perf_counter()
    _pass(block, hidden, arguments, keep=True)
    seconds["propagate"] += time.perf_counter() - start
    return 2


def _one_pass(block, targets, hidden, arguments, make_observer, solve, seconds, reduce=None) -> int:  # noqa: ANN001
    statistics = _Statistics(make_observer, keep_last_only=True)
    solved: set[Target] = set()

    def feed(target: Target, inputs: torch.Tensor) -> bool:
        if target in solved:  # a weight used twice is pruned once, on its first use
            return False
        statistics.feed(target, inputs)
        return True

    def complete(target: Target) -> None:  # every batch has fed the target
        if reduce is not None and statistics.leader[target] is target:
            reduce(statistics.observer(target))
        solve(target, statistics.observer(target))
        solved.add(target)

    start = time.perf_counter()
    solve_before = seconds["solve"]
    if len(hidden) == 1:  # one batch (the whole batch: fused experts) needs no lockstep

        def on_input(target: Target, inputs: torch.Tensor) -> None:
            if feed(target, inputs):
                complete(target)

        with observing(targets, on_input):
            _pass(block, hidden, arguments, keep=True)
    else:
        lockstep = _Lockstep(feed, complete)
        with observing(targets, lockstep.arrive):
            lockstep.run(block, hidden, arguments)
    statistics.end_pass()
    for target in targets:  # never used (an expert no token was routed to)
        if target not in solved:
            solve(target, None)
    seconds["propagate"] += time.perf_counter() - start - (seconds["solve"] - solve_before)
    return 1


class _Lockstep:
    """Runs a block on every batch in lockstep at its targets, one batch at a time, in one thread.

    Each batch runs in its own greenlet (a coroutine with its own stack): at a target's forward pre-hook it
    feeds the target its input and yields to the scheduler, which resumes the next batch. When every batch
    waits at the same target, its statistics are whole: the scheduler solves it (``complete``) and resumes
    the batches, which go on with the pruned weight. Every Linear thus sees every batch before any batch goes
    past it (true-sequential), in one pass of cache-sized batches. One thread keeps torch's per-thread state
    (grad mode) and the allocator's memory shared by the batches. The batches must reach the same targets in
    the same order (a dense block's control flow does not depend on its data); a block where they do not is
    an error, never a wrong statistic.
    """

    def __init__(self, feed: Callable[[Target, torch.Tensor], bool], complete: Callable[[Target], None]) -> None:
        self.feed = feed
        self.complete = complete

    def arrive(self, target: Target, inputs: torch.Tensor) -> None:
        """The forward pre-hook: runs in a batch's greenlet."""
        if self.feed(target, inputs):
            greenlet.getcurrent().parent.switch(target)

    def run(self, block: nn.Module, hidden: list[torch.Tensor], arguments: dict) -> None:
        def batch(number: int) -> None:
            _overwrite(hidden, number, run_block(block, hidden[number], arguments[hidden[number].shape[0]]))

        runners = [greenlet.greenlet(functools.partial(batch, number)) for number in range(len(hidden))]
        try:
            while True:
                reached = [runner.switch() for runner in runners]  # each runs to its next target, or its end
                if all(runner.dead for runner in runners):
                    return
                if any(runner.dead for runner in runners) or any(t is not reached[0] for t in reached):
                    names = sorted({getattr(t, "name", "the end of the block") for t in reached})
                    raise UnsupportedModelError(
                        f"the calibration batches of a block take different paths ({', '.join(names)}): run the "
                        "true-sequential walk with --batch-size equal to --nsamples"
                    )
                self.complete(reached[0])
        finally:
            for runner in runners:  # after an error or Ctrl-C: unwind the batches still waiting at a target
                if not runner.dead:
                    runner.throw(greenlet.GreenletExit)


def _staged(block, targets, hidden, arguments, make_observer, solve, seconds, reduce=None) -> int:  # noqa: ANN001
    """True-sequential in batches: the first pass gives every target's statistics and the stages (groups of
    Linears fed the same tensor; all experts of one fused parameter), in call order; stage 0 is solved from
    it, and every later stage gets one more pass with the earlier stages pruned."""
    statistics = _Statistics(make_observer)
    _observe_pass(block, targets, hidden, arguments, statistics, seconds)
    _reduce_all(statistics, targets, reduce)
    stages: dict[object, list[Target]] = {}
    for target, leader in statistics.leader.items():  # dicts keep the call order
        key = ("experts", id(target.parameter)) if target.expert is not None else leader
        stages.setdefault(key, []).append(target)
    passes = 1
    for number, stage in enumerate(stages.values()):
        if number > 0:  # stage 0's statistics from the first pass are already exact
            statistics = _Statistics(make_observer)
            _observe_pass(block, stage, hidden, arguments, statistics, seconds)
            _reduce_all(statistics, stage, reduce)
            passes += 1
        for target in stage:
            solve(target, statistics.observer(target))
    seen = {target for stage in stages.values() for target in stage}
    for target in targets:
        if target not in seen:
            solve(target, None)
    start = time.perf_counter()
    _pass(block, hidden, arguments, keep=True)
    seconds["propagate"] += time.perf_counter() - start
    return passes + 1
