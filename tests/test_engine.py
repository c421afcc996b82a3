"""The walk: each block runs with its own arguments, the true-sequential walks agree, experts are seen."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from secateurs import Recipe, prune
from secateurs.engine import capture_block_inputs, run_block, walk
from secateurs.models import find_blocks


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


def test_kv_cache_is_dropped_from_captured_arguments(calibration):
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, blocks, calibration, 8, torch.device("cpu"))
    for arguments in inputs.arguments[8]:
        assert arguments.get("past_key_values") is None
        assert arguments.get("use_cache", False) is False


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_true_sequential_walks_agree(calibration, monkeypatch):
    """Batches in lockstep, the whole batch at once, and the staged fallback choose the same masks."""
    import secateurs.engine

    models = {name: tiny_model("llama") for name in ("lockstep", "whole", "staged")}
    recipe = Recipe("wanda", true_sequential=True)
    lockstep = prune(models["lockstep"], recipe, calibration, device="cpu", batch_size=2, progress=False)
    whole = prune(models["whole"], recipe, calibration, device="cpu", batch_size=8, progress=False)
    monkeypatch.setattr(secateurs.engine, "one_pass_fits", lambda *args: False)  # activations "do not fit"
    staged = prune(models["staged"], recipe, calibration, device="cpu", batch_size=2, progress=False)
    assert [r["walk"]["mode"] for r in (lockstep, whole, staged)] == ["one-pass", "one-pass", "staged"]
    assert lockstep["walk"]["batch_size"] == 2 and whole["walk"]["batch_size"] == 8
    assert lockstep["walk"]["passes_per_block"] == 1
    assert staged["walk"]["passes_per_block"] == 5  # q/k/v, o, gate/up, down, then the outputs
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
    import secateurs.engine

    seen = {}
    capture = secateurs.engine.capture_block_inputs

    def recording_capture(*args, **kwargs):
        inputs = capture(*args, **kwargs)
        seen.update(inputs=inputs, buffers=list(inputs.hidden), first=[h.clone() for h in inputs.hidden])
        return inputs

    monkeypatch.setattr(secateurs.engine, "capture_block_inputs", recording_capture)
    recipe = Recipe("wanda", true_sequential=true_sequential)
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
        walk(model, calibration, lambda t: None, solve, true_sequential=True, batch_size=2, progress=False)
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

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(128, 8)
            self.layers = nn.ModuleList([Block(), Block()])

        def forward(self, input_ids, use_cache=False):
            hidden = self.embed(input_ids)
            for layer in self.layers:
                hidden = layer(hidden)
            return hidden

    torch.manual_seed(0)
    toy = Toy()
    ids = torch.zeros(4, 4, dtype=torch.long)
    ids[0], ids[1] = 1, 2
    while (toy.embed.weight[1, 0] > 0) == (toy.embed.weight[2, 0] > 0):
        toy.embed.weight.data[2, 0] *= -1
    with pytest.raises(UnsupportedModelError, match="different paths"):
        walk(toy, ids, lambda t: None, lambda t, o: None, true_sequential=True, batch_size=1, progress=False)


def test_true_sequential_sees_pruned_inputs(calibration):
    """down_proj's statistics differ once gate/up are pruned first: its masks change, q/k/v's do not."""
    default, sequential = tiny_model("llama"), tiny_model("llama")
    prune(default, Recipe("wanda"), calibration, device="cpu", progress=False)
    prune(sequential, Recipe("wanda", true_sequential=True), calibration, device="cpu", progress=False)
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
    report = prune(model, Recipe("wanda", true_sequential=true_sequential), calibration, device="cpu", progress=False)
    noted = {layer["name"] for layer in report["layers"] if "note" in layer}
    experts = {layer["name"] for layer in report["layers"] if ".experts." in layer["name"]}
    assert noted == {name for name in experts if name.endswith((".2", ".3"))}
    assert all(abs(layer["sparsity"] - 0.5) < 1e-9 for layer in report["layers"])


def test_expert_statistics_count_routed_tokens(calibration):
    """Each expert's observer sees exactly the tokens the router sent it (top-2 of 4: 2 per token)."""
    model = tiny_model("mixtral")
    tokens = {}

    class Counter:
        def __init__(self, target):
            self.target = target

        def update(self, inputs):
            tokens[self.target.name] = tokens.get(self.target.name, 0) + inputs.reshape(-1, inputs.shape[-1]).shape[0]

    walk(model, calibration, Counter, lambda target, observer: None, progress=False)
    gate_up = sum(v for k, v in tokens.items() if "layers.0" in k and "gate_up_proj" in k)
    assert gate_up == calibration.numel() * 2
    assert tokens["model.layers.0.self_attn.q_proj"] == calibration.numel()
