"""Distillation after pruning: the pruned model's zeros stay, only the pruned layers' kept weights change, and
its predictions move toward the dense model's."""

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from secateurs import load_recipe, prune
from secateurs.engine import WalkParts
from secateurs.errors import RecipeError

FAST = ["--calib", "builtin", "--nsamples", "8", "--seqlen", "32", "--quiet", "--device", "cpu"]


def _kl_to(dense, model, ids) -> float:
    """KL(dense || model) of the next-token distributions, nats per token: what the distillation minimises."""
    with torch.no_grad():
        aimed = F.log_softmax(dense(input_ids=ids).logits, -1).flatten(0, 1)
        predicted = F.log_softmax(model(input_ids=ids).logits, -1).flatten(0, 1)
    return float(F.kl_div(predicted, aimed, log_target=True, reduction="batchmean"))


@pytest.mark.parametrize(
    ("family", "method", "pattern"), [("llama", "sparsegpt", "unstructured"), ("qwen2", "wanda", "2:4")]
)
def test_distillation_keeps_the_zeros_and_moves_the_predictions_toward_the_dense_model(
    family, method, pattern, calibration
):
    dense, one_shot, distilled = tiny_model(family), tiny_model(family), tiny_model(family)
    prune(one_shot, load_recipe({"method": method, "pattern": pattern}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": method, "pattern": pattern, "distill": {"epochs": 3, "lr": 3e-4}})
    report = prune(distilled, recipe, calibration, device="cpu", progress=False)

    pruned = {layer.name for layer in report.layers}
    changed = 0
    for (name, weight), (_, before) in zip(distilled.named_parameters(), one_shot.named_parameters(), strict=True):
        if name.removesuffix(".weight") in pruned:
            assert torch.equal(weight == 0, before == 0), name  # the same zeros, exactly: the pattern holds
            changed += not torch.equal(weight, before)
        else:  # embeddings, norms, biases, the head: as they were
            assert torch.equal(weight, before), name
    assert changed == len(pruned)
    assert report.sparsity == 0.5
    assert len(report.distill.epoch_losses) == 3
    assert report.distill.epoch_losses[-1] < report.distill.epoch_losses[0]
    assert _kl_to(dense, distilled, calibration) < 0.5 * _kl_to(dense, one_shot, calibration)
    assert all(p.device.type == "cpu" and p.grad is None for p in distilled.parameters())


def test_distillation_follows_ebft(calibration):
    dense, tuned, both = tiny_model("llama"), tiny_model("llama"), tiny_model("llama")
    prune(tuned, load_recipe({"method": "sparsegpt", "ebft": {"epochs": 2}}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": "sparsegpt", "ebft": {"epochs": 2}, "distill": {"epochs": 2}})
    report = prune(both, recipe, calibration, device="cpu", progress=False)
    assert report.walk.ebft.blocks and report.distill.epochs == 2
    assert _kl_to(dense, both, calibration) < _kl_to(dense, tuned, calibration)


def _sharp_llama() -> torch.nn.Module:
    """The tiny Llama with its weight matrices 8x larger (std 0.16, about 1/sqrt(hidden) as a trained model's):
    at the config's 0.02 a cut barely moves its near-uniform predictions (KL ~1e-5), below Adam's step noise."""
    model = tiny_model("llama")
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(8)
    return model


@pytest.mark.parametrize(
    "options",
    [
        {"name": "width", "target": "mlp", "ratio": 0.5, "multiple": 8},
        {"name": "width", "target": "heads", "ratio": 0.5},
        {"name": "depth", "remove": 1},
    ],
)
def test_distillation_heals_a_structured_cut(options, calibration):
    """After a width or depth cut nothing is zero by design: every weight matrix of the smaller blocks is
    tuned (embeddings, norms and the head are not), and the predictions move toward the dense model's."""
    dense, cut, healed = _sharp_llama(), _sharp_llama(), _sharp_llama()
    prune(cut, load_recipe({"method": options}), calibration, device="cpu", progress=False)
    recipe = load_recipe({"method": options, "distill": {"epochs": 3, "lr": 1e-3}})
    report = prune(healed, recipe, calibration, device="cpu", progress=False)

    assert report.structured.after.parameters == sum(p.numel() for p in healed.parameters())
    assert report.recipe["distill"]["epochs"] == 3 and len(report.distill.epoch_losses) == 3
    assert report.prune_seconds >= report.distill.seconds
    for (name, weight), (_, before) in zip(healed.named_parameters(), cut.named_parameters(), strict=True):
        tuned = name.startswith("model.layers.") and weight.dim() == 2
        assert torch.equal(weight, before) != tuned, name
    assert _kl_to(dense, healed, calibration) < 0.75 * _kl_to(dense, cut, calibration)


def test_cli_writes_a_distilled_model_that_reloads(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from secateurs.cli import main

    out = tmp_path / "out"
    args = ["prune", str(tiny_folder), "--method", "wanda", "--distill-epochs", "1", "--out", str(out), *FAST]
    assert main(args) == 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["recipe"]["distill"]["epochs"] == 1 and len(report["distill"]["epoch_losses"]) == 1
    assert "Distillation: 1 epoch(s)" in (out / "report.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert float((weight == 0).float().mean()) == 0.5


def test_cli_distils_a_width_cut_and_the_smaller_model_reloads(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from secateurs.cli import main

    out = tmp_path / "out"
    cut = ["--method", "width", "--target", "mlp", "--ratio", "0.5", "--multiple", "8"]
    assert main(["prune", str(tiny_folder), *cut, "--distill-epochs", "1", "--out", str(out), *FAST]) == 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["recipe"]["distill"]["epochs"] == 1 and len(report["distill"]["epoch_losses"]) == 1
    assert "Distillation: 1 epoch(s)" in (out / "report.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    sizes = report["structured"]["sizes"]
    assert model.config.intermediate_size == sizes["intermediate"] < sizes["intermediate_before"]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": -1}, "distill.epochs"),
        ({"epochs": 0.5}, "distill.epochs"),
        ({"epochs": 1, "lr": -1e-4}, "distill.lr"),
        ({"epochs": 1, "lr": float("inf")}, "distill.lr"),
    ],
)
def test_bad_distillation_settings_are_refused(options, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"method": "wanda", "distill": options})


@pytest.mark.bad_input
def test_distillation_refuses_several_ranks(calibration):
    model = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recipe = load_recipe({"method": "wanda", "distill": {"epochs": 1}})
    with pytest.raises(RecipeError, match="workers 1"):
        prune(model, recipe, calibration, device="cpu", parts=WalkParts(reduce=lambda o: None))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # refused before any change
