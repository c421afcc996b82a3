"""EBFT block-wise tuning: pruned weights stay zero, other weights stay as they were, the block error falls,
and the tuned model is closer to the dense one than the one-shot result it starts from."""

import json

import pytest
import torch
from tiny_models import tiny_model
from torch import nn

from secateurs import load_recipe, prune
from secateurs.engine import WalkParts
from secateurs.errors import RecipeError
from secateurs.models import find_blocks
from secateurs.models.discover import Target, find_targets
from secateurs.tuning import TuneSettings, kept_masks, tune_block

FAST = ["--calib", "builtin", "--nsamples", "8", "--seqlen", "32", "--quiet", "--device", "cpu"]


class TwoLayer(nn.Module):
    """A block by hand: x + W2 relu(W1 x), and a fused 3-D parameter of two experts, one of them ignored."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8, bias=False)
        self.experts = nn.Parameter(torch.randn(2, 8, 8) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = x @ self.experts[0].t() + x @ self.experts[1].t()
        return x + self.down(torch.relu(self.up(x))) + mixed


def _pruned_block() -> tuple[TwoLayer, list[Target]]:
    block = TwoLayer()
    targets = [
        Target("up", block.up, block.up.weight),
        Target("down", block.down, block.down.weight),
        Target("experts.0", block, block.experts, expert=0),
    ]
    with torch.no_grad():
        for target in targets:
            weight = target.weight()
            weight.masked_fill_(weight.abs() < weight.abs().median(), 0)
    return block, targets


def test_kept_masks_cover_only_the_targets():
    block, targets = _pruned_block()
    masks = kept_masks(targets)
    assert set(masks) == {block.up.weight, block.down.weight, block.experts}
    assert torch.equal(masks[block.up.weight], block.up.weight != 0)
    assert torch.equal(masks[block.experts][0], block.experts[0] != 0)
    assert not masks[block.experts][1].any()  # the ignored expert is not tuned


def test_kept_masks_of_a_transposed_weight():
    conv = nn.Linear(4, 6)  # stands for GPT-2's Conv1D: [in, out] stored, the target's view transposed
    stored = nn.Parameter(torch.randn(4, 6))
    stored.data[0, :3] = 0
    target = Target("c_fc", conv, stored, transposed=True)
    assert torch.equal(kept_masks([target])[stored], stored != 0)


def test_tuning_keeps_zeros_and_other_weights_and_lowers_the_error():
    dense = TwoLayer()  # the same seed: the block before pruning
    block, targets = _pruned_block()
    inputs = [torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        outputs = [dense(x) for x in inputs]
    zeros = {t.name: t.weight() == 0 for t in targets}
    ignored, down = block.experts[1].detach().clone(), block.down.weight.detach().clone()
    up_bias = block.up.bias.detach().clone()

    def error() -> float:
        with torch.no_grad():
            return sum(float((block(x) - y).pow(2).mean()) for x, y in zip(inputs, outputs, strict=True))

    before = error()
    with torch.no_grad():
        losses = tune_block(block, targets, inputs, outputs, {4: {}}, TuneSettings(epochs=20, lr=1e-2))
    assert error() < 0.5 * before
    assert losses[-1] < losses[0]
    for target in targets:
        assert torch.equal(target.weight() == 0, zeros[target.name]), target.name  # the same zeros, exactly
    assert torch.equal(block.experts[1], ignored)  # not a target: untouched
    assert torch.equal(block.up.bias, up_bias)  # biases are not tuned
    assert not torch.equal(block.down.weight, down)  # a target: tuned
    assert all(p.grad is None for p in block.parameters())


def _logit_distance(model, dense, ids) -> float:
    with torch.no_grad():
        return float((model(input_ids=ids).logits - dense(input_ids=ids).logits).pow(2).mean())


@pytest.mark.parametrize(
    ("family", "method", "pattern"),
    [
        ("llama", "sparsegpt", "unstructured"),
        ("llama", "wanda", "2:4"),
        ("gpt2", "magnitude", "unstructured"),
        ("mixtral", "wanda", "unstructured"),
        ("gemma3", "sparsegpt", "4:8"),
    ],
)
def test_ebft_keeps_the_pattern_and_moves_the_model_toward_the_dense_one(family, method, pattern, calibration):
    dense = tiny_model(family)
    one_shot, tuned = tiny_model(family), tiny_model(family)
    plain = prune(
        one_shot, load_recipe({"method": method, "pattern": pattern}), calibration, device="cpu", progress=False
    )
    recipe = load_recipe({"method": method, "pattern": pattern, "ebft": {"epochs": 4}})
    report = prune(tuned, recipe, calibration, device="cpu", progress=False)

    assert report.sparsity == plain.sparsity == 0.5
    blocks_name, blocks = find_blocks(tuned)
    weights = {t.name: t.weight() for i, b in enumerate(blocks) for t in find_targets(b, f"{blocks_name}.{i}")}
    assert len(weights) == len(report.layers)
    for layer in report.layers:  # the zeros the solve left, still there after tuning, no more, no fewer
        weight = weights[layer.name]
        assert int((weight == 0).sum()) == round(layer.sparsity * weight.numel()), layer.name
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            kept = (weight != 0).reshape(weight.shape[0], -1, m).sum(-1)
            assert bool((kept == n).all()), layer.name
    records = report.walk.ebft.blocks
    assert [r.block for r in records] == list(range(len(blocks)))
    assert all(r.error_after < r.error_before for r in records), records
    assert report.walk.seconds["tune"] > 0
    assert _logit_distance(tuned, dense, calibration) < _logit_distance(one_shot, dense, calibration)


def test_a_tuning_that_raises_the_error_is_undone(calibration):
    """A learning rate far too large: every block's tuning makes it worse, so every block stays as pruned."""
    plain, tuned = tiny_model("llama"), tiny_model("llama")
    prune(plain, load_recipe({"method": "wanda"}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": "wanda", "ebft": {"epochs": 2, "lr": 10.0}})
    report = prune(tuned, recipe, calibration, device="cpu", progress=False)
    records = report.walk.ebft.blocks
    assert records and not any(r.kept for r in records), records
    assert all(r.error_after >= r.error_before for r in records)
    for (name, weight), (_, expected) in zip(tuned.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.equal(weight, expected), name


def test_ebft_leaves_ignored_layers_as_they_are(calibration):
    model = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("o_proj.weight")}
    recipe = load_recipe({"method": "wanda", "ignore": ["*.o_proj"], "ebft": {"epochs": 2}})
    prune(model, recipe, calibration, device="cpu", progress=False)
    for name, weight in model.named_parameters():
        if name in before:
            assert torch.equal(weight, before[name]), name


def test_ebft_on_a_bfloat16_model_keeps_its_dtype(calibration):
    model = tiny_model("llama").to(torch.bfloat16)
    recipe = load_recipe({"method": "wanda", "ebft": {"epochs": 2}})
    report = prune(model, recipe, calibration, device="cpu", progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(r.error_after < r.error_before for r in report.walk.ebft.blocks)


def test_bfloat16_products_tune_the_float32_weights_and_keep_the_zeros():
    """Mixed precision: the products in bfloat16, the weights Adam steps stay float32 and the zeros stay zero;
    the error falls as with float32 products."""
    dense = TwoLayer()
    inputs = [torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        outputs = [dense(x) for x in inputs]
    errors = {}
    for precision in ("float32", "bfloat16"):
        block, targets = _pruned_block()
        zeros = {t.name: t.weight() == 0 for t in targets}
        settings = TuneSettings(epochs=20, lr=1e-2, precision=precision)
        losses = tune_block(block, targets, inputs, outputs, {4: {}}, settings)
        assert all(p.dtype == torch.float32 for p in block.parameters())
        for target in targets:
            assert torch.equal(target.weight() == 0, zeros[target.name]), target.name
        errors[precision] = losses[-1] / losses[0]
    assert errors["bfloat16"] < 0.5
    assert errors["bfloat16"] == pytest.approx(errors["float32"], abs=0.05)


def test_bfloat16_products_run_in_bfloat16():
    """The Linears' products inside the tuning are bfloat16 ones (autocast); outside it, float32 again."""
    seen: list[torch.dtype] = []
    block, targets = _pruned_block()
    block.down.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    inputs = [torch.randn(4, 5, 8)]
    settings = TuneSettings(epochs=1, lr=1e-3, precision="bfloat16")
    tune_block(block, targets, inputs, [torch.zeros(4, 5, 8)], {4: {}}, settings)
    with torch.no_grad():
        block(inputs[0])
    assert seen == [torch.bfloat16, torch.float32]


def test_auto_precision_is_bfloat16_only_where_the_device_has_bfloat16_units(monkeypatch):
    from secateurs.tuning.adam import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) == "float32"
    assert resolve_precision("bfloat16", cpu) == "bfloat16"  # asked for: given, even if emulated
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", cpu) == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_precision("auto", cpu) == "bfloat16"


def test_the_report_names_the_precision_the_tuning_ran_in(calibration, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    recipe = load_recipe({"method": "wanda", "ebft": {"epochs": 1, "precision": "auto"}})
    report = prune(tiny_model("llama"), recipe, calibration, device="cpu", progress=False)
    assert report.walk.ebft.precision == "float32"  # auto, resolved on a CPU without bfloat16 units
    assert recipe.to_dict()["ebft"]["precision"] == "auto"  # the recipe keeps what was asked


@pytest.mark.parametrize("target", ["block", "model"])
def test_each_block_is_fitted_to_the_outputs_its_target_names(target, calibration, monkeypatch):
    """``block``: the dense block's outputs on the pruned model's inputs of the block; ``model``: the dense
    model's own activations after the block (its hidden states), whatever the pruned blocks before changed."""
    import secateurs.tuning.ebft
    from secateurs.engine import WalkSettings, walk
    from secateurs.tuning import Ebft, EbftTuner

    dense, model = tiny_model("llama"), tiny_model("llama")
    with torch.no_grad():
        hidden_states = dense(input_ids=calibration, output_hidden_states=True).hidden_states
    aimed_at: list[torch.Tensor] = []

    def record(block, targets, inputs, dense_outputs, arguments, settings) -> list[float]:
        aimed_at.append(torch.cat(dense_outputs))
        return []

    class Solver:
        def observer(self, target):
            return None

        def solve(self, target, observer) -> None:
            weight = target.weight()
            weight.masked_fill_(weight.abs() < weight.abs().median(), 0)

    monkeypatch.setattr(secateurs.tuning.ebft, "tune_block", record)
    hooks = [EbftTuner(Ebft(epochs=1, target=target))]
    walk(model, calibration, Solver(), WalkSettings(progress=False), WalkParts(hooks=hooks))
    assert len(aimed_at) == 2
    # hidden_states[1] is block 0's output; the last one, block 1's, has the final norm applied
    torch.testing.assert_close(aimed_at[0], hidden_states[1])
    with torch.no_grad():
        last = dense.model.norm(aimed_at[1])
    if target == "model":
        torch.testing.assert_close(last, hidden_states[2])
    else:  # block 1 saw the pruned block 0's outputs
        assert not torch.allclose(last, hidden_states[2], atol=1e-2)


def test_ebft_toward_the_dense_model_moves_the_model_toward_it(calibration):
    dense, one_shot, tuned = tiny_model("llama"), tiny_model("llama"), tiny_model("llama")
    prune(one_shot, load_recipe({"method": "sparsegpt"}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": "sparsegpt", "ebft": {"epochs": 4, "target": "model"}})
    report = prune(tuned, recipe, calibration, device="cpu", progress=False)
    assert report.walk.ebft.target == "model"
    assert report.sparsity == 0.5
    assert all(r.kept for r in report.walk.ebft.blocks)
    assert _logit_distance(tuned, dense, calibration) < _logit_distance(one_shot, dense, calibration)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": -1}, "ebft.epochs"),
        ({"epochs": 1.5}, "ebft.epochs"),
        ({"epochs": 2, "lr": 0}, "ebft.lr"),
        ({"epochs": 2, "lr": float("nan")}, "ebft.lr"),
        ({"epochs": 2, "target": "dense"}, "ebft.target"),
        ({"epochs": 2, "precision": "float16"}, "ebft.precision"),
    ],
)
def test_bad_ebft_settings_are_refused(options, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"method": "wanda", "ebft": options})


@pytest.mark.bad_input
def test_ebft_needs_calibration_even_for_magnitude():
    from secateurs.errors import CalibrationError

    recipe = load_recipe({"method": "magnitude", "ebft": {"epochs": 2}})
    # magnitude alone reads no activation: the message names the stage that does, and what to give
    with pytest.raises(CalibrationError, match=r"^ebft reads calibration activations: give calibration data"):
        prune(tiny_model("llama"), recipe, None, device="cpu", progress=False)


@pytest.mark.bad_input
def test_ebft_refuses_several_ranks(calibration):
    recipe = load_recipe({"method": "wanda", "ebft": {"epochs": 2}})
    with pytest.raises(RecipeError, match="workers 1"):
        prune(tiny_model("llama"), recipe, calibration, device="cpu", parts=WalkParts(reduce=lambda o: None))


@pytest.mark.parametrize("target", ["mlp", "heads"])
def test_ebft_after_a_width_cut_moves_the_smaller_model_toward_the_dense_one(target, calibration, tmp_path):
    from transformers import AutoModelForCausalLM

    dense, cut, tuned = tiny_model("llama"), tiny_model("llama"), tiny_model("llama")
    width = {"name": "width", "target": target, "ratio": 0.5, "multiple": 8, "reconstruct": False}
    prune(cut, load_recipe({"method": width}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": width, "ebft": {"epochs": 4, "lr": 1e-4}})  # the tiny model's small weights
    report = prune(tuned, recipe, calibration, device="cpu", progress=False)
    assert tuned.config.to_dict() == cut.config.to_dict()
    assert {n: p.shape for n, p in tuned.named_parameters()} == {n: p.shape for n, p in cut.named_parameters()}
    records = report.walk.ebft.blocks
    assert len(records) == 2 and all(r.kept and r.error_after < r.error_before for r in records), records
    assert _logit_distance(tuned, dense, calibration) < _logit_distance(cut, dense, calibration)
    tuned.save_pretrained(tmp_path / "tuned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=calibration).logits, tuned(input_ids=calibration).logits)


def test_cli_prune_with_ebft_reports_every_block(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from secateurs.cli import main

    out = tmp_path / "out"
    args = ["prune", str(tiny_folder), "--method", "sparsegpt", "--ebft-epochs", "2", "--out", str(out), *FAST]
    assert main([*args, "--json"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out.strip().splitlines()[-1])  # --json: one line, what the report says
    assert summary["out"] == str(out) and summary["sparsity"] == 0.5 and printed.err == ""
    report = json.loads((out / "secateurs.json").read_text())
    assert report["sparsity"] == 0.5 and report["walk"]["ebft"]["epochs"] == 2
    assert report["recipe"]["ebft"]["epochs"] == 2
    assert report["walk"]["ebft"]["lr"] == 1e-3
    assert len(report["walk"]["ebft"]["blocks"]) == 2
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    weights = [p for n, p in reloaded.named_parameters() if "layers" in n and n.endswith("proj.weight")]
    assert sum(int((w == 0).sum()) for w in weights) == sum(w.numel() for w in weights) // 2


@pytest.mark.parametrize("target", ["block", "model"])
def test_in_bfloat16_only_the_pruning_pass_runs_in_float32(calibration, target):
    """With bfloat16 tuning, the tune stage's passes (the dense target, the tuning, the outputs handed on) all
    multiply in bfloat16; the strategy's pass that gathers the Hessians and prunes stays float32."""
    model = tiny_model("llama")
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features != model.config.vocab_size:
            module.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    recipe = load_recipe({"method": "sparsegpt", "ebft": {"epochs": 2, "target": target, "precision": "bfloat16"}})
    report = prune(model, recipe, calibration, device="cpu", progress=False)
    linears = sum(len(find_targets(block, "")) for block in find_blocks(model)[1])
    batches = -(-calibration.shape[0] // report.walk.batch_size)
    assert seen.count(torch.float32) == linears * batches  # one pass: SparseGPT's, true-sequential
    assert seen.count(torch.bfloat16) >= linears * batches * (1 + 2 + 1)  # target, two epochs, outputs
