"""Structured pruning: a smaller dense model whose config describes it (MLP channels, heads, layers)."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model
from transformers import AutoModelForCausalLM

from secateurs import prune
from secateurs.errors import RecipeError, UnsupportedModelError
from secateurs.export import save_checkpoint
from secateurs.models import find_blocks
from secateurs.recipe import StructuredRecipe
from secateurs.structured.width import channel_scores, kept_count, reconstruction_error, refit

DENSE = sorted(f for f in FAMILIES if f not in ("mixtral", "qwen3_moe"))
HEADS = ["gemma2", "gemma3", "llama", "mistral", "phi3", "qwen2", "qwen3"]  # head size kept in their configs


def _reload_matches(model, calibration, tmp_path, report):
    save_checkpoint(model, None, tmp_path / "out", report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)
    return reloaded


def _moments(inputs):
    return inputs.t() @ inputs / inputs.shape[0], inputs.mean(0)


# --- tensors -----------------------------------------------------------------------------------------


def test_scores_follow_their_formulas():
    weight = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    inputs = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, -2.0]])
    second, mean = _moments(inputs)
    # FLAP: ||W_:j||^2 Var(x_j); channel 1 never varies, so removing it (and keeping its mean) costs nothing
    fluctuation = channel_scores(weight, mean, torch.diagonal(second), "fluctuation")
    torch.testing.assert_close(fluctuation, torch.tensor([10.0, 4.0, 1.0]) * torch.tensor([1.0, 0.0, 4.0]))
    wanda = channel_scores(weight, mean, torch.diagonal(second), "wanda")
    torch.testing.assert_close(wanda, torch.tensor([10.0, 4.0, 1.0]).sqrt() * torch.tensor([5.0, 25.0, 4.0]).sqrt())


def test_kept_counts_round_to_the_multiple():
    assert kept_count(1536, 0.25, 64) == 1152
    assert kept_count(1536, 0.1, 64) == 1408
    assert kept_count(1536, 0.0, 64) == 1536
    assert kept_count(100, 0.99, 64) == 64


@pytest.mark.parametrize("with_bias", [False, True])
def test_least_squares_refit_lowers_the_reconstruction_error(with_bias):
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(2000, 6, generator=generator)
    inputs = latent @ torch.randn(6, 24, generator=generator) + 0.3 * torch.randn(2000, 24, generator=generator) + 1.0
    weight = torch.randn(10, 24, generator=generator)
    bias = torch.randn(10, generator=generator) if with_bias else None
    second, mean = _moments(inputs)
    keep = torch.arange(0, 24, 2)
    plain = reconstruction_error(weight, weight[:, keep], keep, second, mean)
    new_weight, new_bias = refit(weight, second, mean, keep, bias, dampening=1e-6)
    change = None if bias is None else new_bias - bias
    refitted = reconstruction_error(weight, new_weight, keep, second, mean, change)
    assert refitted < 0.5 * plain
    # the error from the moments is the error measured on the data
    outputs = inputs @ weight.t() + (0 if bias is None else bias)
    approximations = inputs[:, keep] @ new_weight.t() + (0 if bias is None else new_bias)
    measured = float((outputs - approximations).norm() / (inputs @ weight.t()).norm())
    assert refitted == pytest.approx(measured, rel=1e-3)


# --- models --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", DENSE)
def test_mlp_width_gives_a_smaller_model_that_reloads(family, calibration, tmp_path):
    model = tiny_model(family)
    channels = find_blocks(model)[1][0]
    report = prune(model, StructuredRecipe("width", target="mlp", ratio=0.25, multiple=8), calibration, progress=False)
    removed = report["before"]["parameters"] - report["after"]["parameters"]
    assert removed > 0 and report["after"]["parameters"] < report["before"]["parameters"]
    assert all(layer["channels"][1] == layer["channels"][0] * 3 // 4 for layer in report["layers"])
    assert len(report["layers"]) == len(find_blocks(model)[1]) and channels is not None
    reloaded = _reload_matches(model, calibration, tmp_path, report)
    assert sum(p.numel() for p in reloaded.parameters()) == report["after"]["parameters"]


@pytest.mark.parametrize("family", HEADS)
@pytest.mark.parametrize("grouping", ["queries", "kv-groups"])
def test_heads_keep_valid_gqa_and_reload(family, grouping, calibration, tmp_path):
    model = tiny_model(family)  # 4 query heads in 2 KV groups
    recipe = StructuredRecipe("width", target="heads", ratio=0.5, head_grouping=grouping)
    report = prune(model, recipe, calibration, progress=False)
    expected = (2, 2) if grouping == "queries" else (2, 1)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == expected
    assert report["sizes"]["heads"] == expected[0]
    _reload_matches(model, calibration, tmp_path, report)


@pytest.mark.parametrize("family", ["opt", "gpt2", "gpt_neox"])
def test_heads_where_the_config_derives_the_head_size_is_refused(family, calibration):
    model = tiny_model(family)
    with pytest.raises(UnsupportedModelError, match="--target|--method"):
        prune(model, StructuredRecipe("width", target="heads", ratio=0.5), calibration, progress=False)


@pytest.mark.parametrize("family", DENSE + ["mixtral"])
@pytest.mark.parametrize("score", ["perplexity", "block-influence"])
def test_depth_removes_layers_and_reloads(family, score, calibration, tmp_path):
    model = tiny_model(family)
    total = len(find_blocks(model)[1])
    report = prune(model, StructuredRecipe("depth", remove=1, score=score), calibration, progress=False)
    assert len(report["removed_layers"]) == 1 and len(find_blocks(model)[1]) == total - 1
    assert len(report["candidates"]) == total  # every run of one layer was scored
    _reload_matches(model, calibration, tmp_path, report)


def test_depth_keeps_each_layers_attention_type(calibration, tmp_path):
    """Gemma3 alternates sliding and full attention: the kept layers keep their own type."""
    model = tiny_model("gemma3")  # sliding, sliding, full
    types = list(model.config.layer_types)
    report = prune(model, StructuredRecipe("depth", remove=1), calibration, progress=False)
    assert model.config.layer_types == [types[i] for i in report["kept_layers"]]
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1]


def test_perplexity_picks_the_run_that_hurts_least(calibration):
    model = tiny_model("llama")
    report = prune(model, StructuredRecipe("depth", remove=1), calibration, progress=False)
    scores = [c["perplexity"] for c in report["candidates"]]
    assert report["removed_layers"] == [scores.index(min(scores))]


def test_search_windows_limit_the_search_and_not_the_distillation(calibration):
    """The depth search scores candidates on the first N windows, as if given only those; a distillation after
    the cut still learns from every window."""
    runs = {}
    for name, windows, search in (("limited", calibration, 2), ("first-two", calibration[:2], None)):
        model = tiny_model("llama")
        recipe = StructuredRecipe("depth", remove=1, search_windows=search, distill_epochs=1)
        runs[name] = (prune(model, recipe, windows, progress=False), model)
    (limited, model), (first_two, model_first_two) = runs["limited"], runs["first-two"]
    assert limited["search_windows"] == first_two["search_windows"] == 2
    assert limited["candidates"] == first_two["candidates"] and limited["removed_layers"] == first_two["removed_layers"]
    tuned, tuned_on_two = (m.model.layers[0].mlp.down_proj.weight for m in (model, model_first_two))
    assert len(calibration) > 2 and not torch.equal(tuned, tuned_on_two)


@pytest.mark.parametrize(
    "recipe",
    [
        dict(method="width", target="mlp", ratio=0.0),
        dict(method="width", target="heads", ratio=0.0),
        dict(method="depth", remove=0),
    ],
)
def test_ratio_zero_changes_nothing(recipe, calibration):
    model = tiny_model("llama")
    with torch.no_grad():
        before = model(calibration).logits
    prune(model, StructuredRecipe(**recipe), calibration, progress=False)
    with torch.no_grad():
        assert torch.equal(model(calibration).logits, before)


def test_refit_beats_plain_removal_on_a_model(calibration):
    errors = {}
    for reconstruct in (False, True):
        model = tiny_model("qwen2")
        recipe = StructuredRecipe("width", target="mlp", ratio=0.5, multiple=8, reconstruct=reconstruct)
        report = prune(model, recipe, calibration, progress=False)
        errors[reconstruct] = [layer["reconstruction_error"] for layer in report["layers"]]
    assert all(refitted < plain for refitted, plain in zip(errors[True], errors[False], strict=True))


@pytest.mark.parametrize(
    "recipe,match",
    [
        (dict(method="width", target="mlp", ratio=1.0), r"\[0, 1\)"),
        (dict(method="width", target="mlp", ratio=-0.1), r"\[0, 1\)"),
        (dict(method="width", target="mlp"), "--ratio"),
        (dict(method="width", target="mlp", ratio=0.2, allocation="global"), "uniform"),
        (dict(method="depth"), "--remove"),
        (dict(method="depth", remove=2, ratio=0.5), "exactly one"),
        (dict(method="width", target="rows", ratio=0.2), "mlp or heads"),
        (dict(method="depth", remove=1, search_windows=0), "positive whole number"),
        (dict(method="width", target="mlp", ratio=0.2, search_windows=4), "--method depth"),
    ],
)
def test_bad_recipes(recipe, match):
    with pytest.raises(RecipeError, match=match):
        StructuredRecipe(**recipe)


def test_removing_every_layer_is_refused(calibration):
    model = tiny_model("llama")
    with pytest.raises(RecipeError, match="leaves none"):
        prune(model, StructuredRecipe("depth", remove=2), calibration, progress=False)


def test_mixture_of_experts_mlp_width_is_refused(calibration):
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts"):
        prune(tiny_model("mixtral"), StructuredRecipe("width", target="mlp", ratio=0.5, multiple=8), calibration)


def test_ratio_that_rounds_to_nothing(calibration):
    with pytest.raises(RecipeError, match="--multiple"):
        prune(tiny_model("llama"), StructuredRecipe("width", target="mlp", ratio=0.1), calibration)  # 64 of 64


def test_command_line(tiny_folder, tmp_path, capsys):
    import json

    from secateurs.cli import main

    fast = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]
    out = tmp_path / "narrow"
    args = ["prune", str(tiny_folder), "--method", "width", "--ratio", "0.5", "--multiple", "16", "--out", str(out)]
    assert main([*args, *fast]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["parameters_removed"] > 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["after"]["parameters"] < report["before"]["parameters"] and report["weight_file_bytes"] > 0
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 32

    out = tmp_path / "shallow"
    assert main(["prune", str(tiny_folder), "--method", "depth", "--remove", "1", "--out", str(out), *fast]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    assert main(["prune", str(tiny_folder), "--method", "depth", "--out", str(tmp_path / "x"), *fast]) == 2
    assert "--remove" in capsys.readouterr().err
