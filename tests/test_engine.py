"""The walk: each block runs with its own arguments, the true-sequential walks agree, experts are seen."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from secateurs import load_recipe, prune
from secateurs.engine import WalkSettings, capture_block_inputs, run_block, walk
from secateurs.models import find_blocks


class Solver:
    """A walk's solver from two functions: the observer of a target, and the solve."""

    def __init__(self, make_observer, solve):
        self.observer, self.solve = make_observer, solve


def _counter(tokens):
    """An observer class that adds each target's tokens to ``tokens[name]``."""

    class Counter:
        def __init__(self, target):
            self.target = target

        def update(self, inputs):
            tokens[self.target.name] = tokens.get(self.target.name, 0) + inputs.reshape(-1, inputs.shape[-1]).shape[0]

    return Counter


class _Toy(torch.nn.Module):
    """A model of hand-written ``blocks`` on 8-wide embeddings of 128 tokens, walked like a decoder."""

    def __init__(self, blocks):
        super().__init__()
        self.embed = torch.nn.Embedding(128, 8)
        self.layers = torch.nn.ModuleList(blocks)

    def forward(self, input_ids, use_cache=False):
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blocks_replayed_with_captured_arguments_match_the_model(family, calibration):
    """Sliding/global masks, per-layer rotary tables, GPT-2's positional arguments: replaying the captured
    inputs block by block must give exactly what the model computes."""
    model = tiny_model(family)
    _, blocks = find_blocks(model)
    expected = []
    handles = [
        b.register_forward_hook(lambda m, a, out: expected.append(out[0] if isinstance(out, tuple) else out))
        for b in blocks
    ]
    with torch.no_grad():
        model(input_ids=calibration, use_cache=False)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks, calibration, 3, torch.device("cpu"))
        hidden = inputs.hidden
        assert [h.shape[0] for h in hidden] == [3, 3, 2]
        for index, block in enumerate(blocks):
            hidden = [run_block(block, h, inputs.block_arguments(index, h)) for h in hidden]
            torch.testing.assert_close(torch.cat(hidden), expected[index])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kv_cache_passed_to_the_blocks_is_not_kept(family, calibration):
    """A model called with a cache (``use_cache=True`` and a DynamicCache: how generation calls it) hands the
    cache to every block: the captured arguments must not keep it (it would grow by every replayed batch) nor
    ask the replayed blocks to fill one."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    from secateurs.models.family import cache_argument

    model = tiny_model(family)
    _, blocks = find_blocks(model)
    expected = []
    handle = blocks[-1].register_forward_hook(
        lambda m, a, out: expected.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        model(input_ids=calibration, use_cache=False)
    handle.remove()
    cache = DynamicCache(config=model.config)
    forward, keyword = model.forward, cache_argument(model)

    def forward_with_a_cache(*args, **kwargs):  # the capture calls with use_cache=False: call as generation does
        return forward(*args, **{**kwargs, "use_cache": True, keyword: cache})

    model.forward = forward_with_a_cache
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks, calibration, 8, torch.device("cpu"))
    for arguments in inputs.arguments[8]:
        assert not [name for name, value in arguments.items() if isinstance(value, Cache)], arguments.keys()
        for name in ("cache", "past_key_values", "past_key_value", "layer_past"):
            assert arguments.get(name) is None, name
        assert arguments.get("use_cache", False) is False
    with torch.no_grad():
        hidden = inputs.hidden[0]
        for index, block in enumerate(blocks):
            hidden = run_block(block, hidden, inputs.block_arguments(index, hidden))
    assert cache.get_seq_length() == 0  # the replayed blocks wrote no keys/values into the caller's cache
    torch.testing.assert_close(hidden, expected[0])  # and the masks and positions the blocks need are kept


def test_kv_cache_under_an_older_name_is_dropped_too(calibration):
    """Older transformers call blocks with ``past_key_value(s)=``: through a block's ``**kwargs`` they are
    dropped as well, and the block's other arguments are kept as given."""
    import inspect

    from transformers import DynamicCache

    from secateurs.engine.capture import _bind_arguments

    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    hidden, positions = torch.zeros(2, 4, 32), torch.arange(4)[None]
    call = {
        "position_ids": positions,
        "use_cache": True,
        "past_key_values": DynamicCache(),
        "past_key_value": DynamicCache(),
    }
    states, arguments = _bind_arguments(inspect.signature(blocks[0].forward), (hidden,), call)
    assert states is hidden and arguments["position_ids"] is positions
    assert arguments["past_key_values"] is None and arguments["past_key_value"] is None
    assert arguments["use_cache"] is False


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_true_sequential_walks_agree(calibration, monkeypatch):
    """Batches in lockstep, the whole batch at once, and the staged fallback choose the same masks."""
    import secateurs.engine.strategies

    models = {name: tiny_model("llama") for name in ("lockstep", "whole", "staged")}
    recipe = load_recipe({"method": "wanda", "true_sequential": True})
    lockstep = prune(models["lockstep"], recipe, calibration, device="cpu", batch_size=2, progress=False)
    whole = prune(models["whole"], recipe, calibration, device="cpu", batch_size=8, progress=False)
    monkeypatch.setattr(secateurs.engine.strategies, "one_pass_fits", lambda *args: False)  # activations "do not fit"
    staged = prune(models["staged"], recipe, calibration, device="cpu", batch_size=2, progress=False)
    assert [r.walk.mode for r in (lockstep, whole, staged)] == ["one-pass", "one-pass", "staged"]
    assert lockstep.walk.batch_size == 2 and whole.walk.batch_size == 8
    assert lockstep.walk.passes_per_block == 1
    assert staged.walk.passes_per_block == 5  # q/k/v, o, gate/up, down, then the outputs
    a = _weights(models["whole"])
    for other in ("lockstep", "staged"):
        b = _weights(models[other])
        agree = sum(int(((a[k] == 0) == (b[k] == 0)).sum()) for k in a) / sum(v.numel() for v in a.values())
        assert agree > 0.999, other  # float32 sums in another order may flip a near tie


@pytest.mark.parametrize("true_sequential", [False, True])
def test_walk_writes_block_outputs_over_the_captured_buffers(calibration, monkeypatch, true_sequential):
    """The activations live in the buffers captured before block 0 for the whole walk (a block's output is
    copied over its input): a fresh long-lived tensor per block would land between the forward's freed
    temporaries and fragment the CPU heap (peak RSS)."""
    import secateurs.engine.loop

    seen = {}
    capture = secateurs.engine.loop.capture_block_inputs

    def recording_capture(*args, **kwargs):
        inputs = capture(*args, **kwargs)
        seen.update(inputs=inputs, buffers=list(inputs.hidden), first=[h.clone() for h in inputs.hidden])
        return inputs

    monkeypatch.setattr(secateurs.engine.loop, "capture_block_inputs", recording_capture)
    recipe = load_recipe({"method": "wanda", "true_sequential": true_sequential})
    prune(tiny_model("llama"), recipe, calibration, device="cpu", batch_size=3, progress=False)
    final = seen["inputs"].hidden
    assert all(h is buffer for h, buffer in zip(final, seen["buffers"], strict=True))
    assert not any(torch.equal(h, first) for h, first in zip(final, seen["first"], strict=True))


def test_lockstep_failure_in_one_batch_stops_every_batch(calibration):
    """A solve that fails while the batches wait at a Linear: the error reaches the caller, and the waiting
    batches are unwound (their hooks are gone: the model runs normally afterwards)."""
    model = tiny_model("llama")
    solved = []

    def solve(target, observer):
        solved.append(target.name)
        if len(solved) == 4:
            raise RuntimeError("solver failed")

    with pytest.raises(RuntimeError, match="solver failed"):
        walk(model, calibration, Solver(lambda t: None, solve), WalkSettings(True, batch_size=2, progress=False))
    assert len(solved) == 4
    with torch.no_grad():
        model(input_ids=calibration, use_cache=False)
    assert len(solved) == 4


def test_lockstep_refuses_batches_that_take_different_paths(calibration):
    """A block whose Linears run in an order that depends on the data cannot be walked in lockstep."""
    from torch import nn

    from secateurs.errors import UnsupportedModelError

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, hidden):
            first, second = (self.a, self.b) if hidden[0, 0, 0] > 0 else (self.b, self.a)
            return second(first(hidden))

    torch.manual_seed(0)
    toy = _Toy([Block(), Block()])
    ids = torch.zeros(4, 4, dtype=torch.long)
    ids[0], ids[1] = 1, 2
    while (toy.embed.weight[1, 0] > 0) == (toy.embed.weight[2, 0] > 0):
        toy.embed.weight.data[2, 0] *= -1
    with pytest.raises(UnsupportedModelError, match="different paths"):
        settings = WalkSettings(True, batch_size=1, progress=False)
        walk(toy, ids, Solver(lambda t: None, lambda t, o: None), settings)


def test_true_sequential_sees_pruned_inputs(calibration):
    """down_proj's statistics differ once gate/up are pruned first: its masks change, q/k/v's do not."""
    default, sequential = tiny_model("llama"), tiny_model("llama")
    prune(default, load_recipe({"method": "wanda"}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": "wanda", "true_sequential": True})
    prune(sequential, recipe, calibration, device="cpu", progress=False)
    q = "model.layers.0.self_attn.q_proj.weight"
    down = "model.layers.0.mlp.down_proj.weight"
    a, b = _weights(default), _weights(sequential)
    assert torch.equal(a[q] == 0, b[q] == 0)
    assert not torch.equal(a[down] == 0, b[down] == 0)


@pytest.mark.parametrize("true_sequential", [False, True])
def test_experts_without_tokens_fall_back_to_magnitude(calibration, true_sequential):
    model = tiny_model("mixtral")
    _, blocks = find_blocks(model)

    def route_to_first_two(module, args, output):
        logits, scores, indices = output
        return logits, scores, torch.tensor([0, 1]).expand_as(indices)

    for block in blocks:
        block.mlp.gate.register_forward_hook(route_to_first_two)
    recipe = load_recipe({"method": "wanda", "true_sequential": true_sequential})
    report = prune(model, recipe, calibration, device="cpu", progress=False)
    noted = {layer.name for layer in report.layers if layer.note is not None}
    experts = {layer.name for layer in report.layers if ".experts." in layer.name}
    assert noted == {name for name in experts if name.endswith((".2", ".3"))}
    assert all(abs(layer.sparsity - 0.5) < 1e-9 for layer in report.layers)


def test_expert_statistics_count_routed_tokens(calibration):
    """Each expert's observer sees exactly the tokens the router sent it (top-2 of 4: 2 per token)."""
    model = tiny_model("mixtral")
    tokens = {}

    walk(model, calibration, Solver(_counter(tokens), lambda target, observer: None), WalkSettings(progress=False))
    gate_up = sum(v for k, v in tokens.items() if "layers.0" in k and "gate_up_proj" in k)
    assert gate_up == calibration.numel() * 2
    assert tokens["model.layers.0.self_attn.q_proj"] == calibration.numel()


def test_one_pass_fits_what_memory_holds():
    """The one-pass walk's estimate, on the machine's real free memory: a small calibration set fits, one whose
    activations no machine holds does not (its token ids are an expanded view: nothing is allocated), and the
    hidden states the tuning keeps (``copies``) count: a set sized between the two estimates fits only without."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from secateurs.engine import available_memory, one_pass_fits
    from secateurs.models import find_targets

    hidden_size = 32  # a model whose widest projection is as wide as its hidden states (q, o, the MLP)
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    model = LlamaForCausalLM(config).eval()
    name, blocks = find_blocks(model)
    targets = find_targets(blocks[0], f"{name}.0")
    cpu = torch.device("cpu")
    assert available_memory(cpu) > 0
    assert one_pass_fits(model, targets, torch.zeros(8, 32, dtype=torch.long), 4, cpu)
    huge = torch.zeros(1, 1, dtype=torch.long).expand(10**6, 10**5)  # 1e11 tokens of 32 floats: 12.8 TB
    assert not one_pass_fits(model, targets, huge, 4, cpu)
    # per token (float32), paused batches keep 3 hidden states and 2 of the widest projection: 5 x 32 x 4 bytes,
    # and 2 more hidden states with copies=2: 7 x 32 x 4. The limit is 60% of the free memory: a size at the
    # geometric middle of the two is 18% inside one estimate and 18% outside the other.
    length = 1000  # windows of 1000 tokens, one running at a time: its temporaries are 0.01% of the total
    tokens = 0.6 * available_memory(cpu) / (4 * hidden_size * (5 * 7) ** 0.5)
    middle = torch.zeros(1, 1, dtype=torch.long).expand(int(tokens) // length, length)
    assert one_pass_fits(model, targets, middle, 1, cpu, copies=0)
    assert not one_pass_fits(model, targets, middle, 1, cpu, copies=2)


def test_an_observation_pass_stops_each_batch_after_its_last_observed_linear(calibration):
    """The two-pass walk's first pass: every target still sees every token, but after the first batch no batch
    computes down_proj's product there (its input is all the pass needs); the second pass runs it for all."""
    model = tiny_model("llama")
    tokens, products = {}, [0]

    _, blocks = find_blocks(model)
    blocks[0].mlp.down_proj.register_forward_hook(lambda *args: products.__setitem__(0, products[0] + 1))
    batches = 4
    settings = WalkSettings(False, batch_size=calibration.shape[0] // batches, progress=False)
    walk(model, calibration, Solver(_counter(tokens), lambda target, observer: None), settings)
    assert len(tokens) == 4 * len(blocks)  # q (k, v share its input), o, gate (up shares it), down
    assert all(count == calibration.numel() for count in tokens.values())
    assert products[0] == 1 + batches


def test_an_observation_pass_runs_on_when_a_later_batch_reaches_a_linear_the_first_did_not(calibration):
    """Data-dependent routing: the first batch skips ``extra``; a later batch that takes it must still reach
    ``out`` after it, although it has then made as many observed calls as the first batch made in all."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.extra, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, hidden):
            takes_extra = bool(hidden[0, 0, 0] > 0)
            hidden = self.first(hidden)
            if takes_extra:
                hidden = self.extra(hidden)
            return self.out(hidden)

    torch.manual_seed(0)
    toy = _Toy([Block()])
    ids = torch.zeros(2, 4, dtype=torch.long)
    ids[1] = 1
    with torch.no_grad():  # token 0 skips extra, token 1 takes it
        toy.embed.weight[0, 0], toy.embed.weight[1, 0] = -1.0, 1.0
    calls = []

    class Counter:
        def __init__(self, target):
            self.target = target

        def update(self, inputs):
            calls.append(self.target.name)

    walk(toy, ids, Solver(Counter, lambda target, observer: None), WalkSettings(False, batch_size=1, progress=False))
    assert calls == ["layers.0.first", "layers.0.out", "layers.0.first", "layers.0.extra", "layers.0.out"]
