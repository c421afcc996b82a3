"""Structured pruning: a smaller dense model whose config describes it (MLP channels, heads, layers)."""

import copy
import math

import pytest
import torch
from tiny_models import COMMON, FAMILIES, tiny_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from secateurs import Report, load_recipe, prune
from secateurs.errors import RecipeError, UnsupportedModelError
from secateurs.io.hf import save_checkpoint
from secateurs.models import find_blocks
from secateurs.models.family import mlp_layout
from secateurs.structured.surgery import weight_matrix
from secateurs.structured.width import channel_scores, kept_count, obs_selection, reconstruction_error, refit

DENSE = sorted(f for f in FAMILIES if f not in ("mixtral", "qwen3_moe"))
HEADS = ["gemma2", "gemma3", "llama", "mistral", "phi3", "qwen2", "qwen3"]  # head size kept in their configs


def _reload_matches(model, calibration, tmp_path, report):
    save_checkpoint(model, None, tmp_path / "out", report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)
    return reloaded


def structured(method, distill_epochs=None, **settings):
    """A structured recipe: the ``method`` (width or depth) with its settings, and optional distillation."""
    spec = {"method": {"name": method, **settings}}
    if distill_epochs is not None:
        spec["distill"] = {"epochs": distill_epochs}
    return load_recipe(spec)


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
    name, blocks = find_blocks(model)
    layouts = [mlp_layout(block, f"{name}.{i}") for i, block in enumerate(blocks)]
    readers = [layout.down for layout in layouts]
    per_channel = sum(
        sum(parts * (weight_matrix(m).shape[1] + (getattr(m, "bias", None) is not None)) for _, m, parts in layout.up)
        + weight_matrix(layout.down[1]).shape[0]
        for layout in layouts
    )
    channels = layouts[0].channels  # 64; GPT-2's 4 * n_embd = 128
    report = prune(model, structured("width", target="mlp", ratio=0.25, multiple=8), calibration, progress=False)
    change = report.structured
    kept = channels * 3 // 4  # a multiple of 8 already
    assert change.sizes == {"intermediate": kept, "intermediate_before": channels}
    # one record per block, named after the projection that reads the channels: [before, after] counts
    assert [(layer.name, layer.channels) for layer in change.layers] == [(n, [channels, kept]) for n, _ in readers]
    assert all(weight_matrix(module).shape[1] == kept for _, module in readers)
    # every MLP lost a quarter of its channels: those rows (and bias entries) of each producing matrix, twice when
    # it is a fused [gate; up], and those columns of the reader
    expected = (channels - kept) * per_channel
    assert change.before.parameters - change.after.parameters == expected
    assert change.parameters_removed == pytest.approx(expected / change.before.parameters)
    reloaded = _reload_matches(model, calibration, tmp_path, report)
    assert sum(p.numel() for p in reloaded.parameters()) == change.after.parameters


def _kept_rows(now: torch.Tensor, before: torch.Tensor) -> list[int]:
    """Which rows of ``before`` the cut matrix ``now`` holds, in order (each row must match exactly one)."""
    kept = []
    for row in now:
        matches = [i for i, old in enumerate(before) if torch.equal(row, old)]
        assert len(matches) == 1, matches
        kept += matches
    return kept


@pytest.mark.parametrize("family", DENSE)
def test_mlp_width_removes_the_channels_made_unimportant(family, calibration):
    """A quarter of the channels of every MLP, chosen at random, are read with weights 1e-4 times the others':
    the fluctuation score (||W_:j||^2 Var(x_j)) must remove exactly them, and keep the others in order."""
    model = tiny_model(family)
    name, blocks = find_blocks(model)
    generator = torch.Generator().manual_seed(1)
    channels = mlp_layout(blocks[0], f"{name}.0").channels  # 64; GPT-2's 4 * n_embd = 128
    chosen = [sorted(torch.randperm(channels, generator=generator)[: channels // 4].tolist()) for _ in blocks]
    producers = []
    with torch.no_grad():
        for index, block in enumerate(blocks):
            layout = mlp_layout(block, f"{name}.{index}")
            weight_matrix(layout.down[1])[:, chosen[index]] *= 1e-4
            producers.append([(weight_matrix(m).clone(), parts) for _, m, parts in layout.up])
    report = prune(model, structured("width", target="mlp", ratio=0.25, multiple=8), calibration, progress=False)
    assert [layer.channels for layer in report.structured.layers] == [[channels, channels * 3 // 4]] * len(blocks)
    for index, block in enumerate(blocks):
        kept = [c for c in range(channels) if c not in chosen[index]]
        layout = mlp_layout(block, f"{name}.{index}")
        for (_, module, _), (before, parts) in zip(layout.up, producers[index], strict=True):
            expected = [c + part * channels for part in range(parts) for c in kept]  # fused [gate; up]: both
            assert _kept_rows(weight_matrix(module), before) == expected, (index, family)
        assert weight_matrix(layout.down[1]).shape == (model.config.hidden_size, len(kept))


def _inputs_with_a_redundant_channel(generator):
    """2000 tokens of 8 independent channels, then channel 5 replaced by 0.5 x_1 + 0.5 x_3 (no new information)
    and channel 0 made quiet (a fifth of the others' scale)."""
    inputs = torch.randn(2000, 8, generator=generator, dtype=torch.float64).float()
    inputs[:, 5] = 0.5 * inputs[:, 1] + 0.5 * inputs[:, 3]
    inputs[:, 0] *= 0.2
    return inputs


def test_obs_selection_removes_the_redundant_channel():
    generator = torch.Generator().manual_seed(0)
    inputs = _inputs_with_a_redundant_channel(generator)
    weight = torch.randn(6, 8, generator=generator)
    weight[:, 5] *= 1.5 / weight[:, 5].norm() * min(weight[:, 1].norm(), weight[:, 3].norm())
    second, mean = _moments(inputs)
    keep = obs_selection(weight, second, kept=7, dampening=1e-6)
    # removing any of 1, 3, 5 loses nothing once the others are re-fitted; with the dampening the cheapest is
    # ||W_:j||^2 / [A^-1]_jj ~ ||W_:j||^2 / v_j^2 for the null vector v = (-0.5, -0.5, 1) on (1, 3, 5): channel 5
    assert keep.tolist() == [0, 1, 2, 3, 4, 6, 7]
    # the fluctuation score looks at channels alone: it removes the quiet one instead
    fluctuation = channel_scores(weight, mean, torch.diagonal(second), "fluctuation")
    assert int(fluctuation.argmin()) == 0
    new_weight, _ = refit(weight, second, mean, keep, dampening=1e-6)
    torch.testing.assert_close(inputs[:, keep] @ new_weight.t(), inputs @ weight.t(), rtol=1e-3, atol=1e-3)
    # the re-fit moved the removed channel's weights onto the channels it was made of
    torch.testing.assert_close(new_weight[:, 1], weight[:, 1] + 0.5 * weight[:, 5], rtol=1e-3, atol=1e-3)
    assert reconstruction_error(weight, new_weight, keep, second, mean) < 1e-3


def _duplicate_channel(model, pairs):
    """In block b, channel j of the MLP becomes 0.5 times channel i (same gate row, half the up row), read with
    1.6 times channel i's weights: redundant for OBS (0.5 * 1.6 < 1), not the quietest for fluctuation."""
    with torch.no_grad():
        for block, (i, j) in zip(model.model.layers, pairs, strict=True):
            mlp = block.mlp
            mlp.gate_proj.weight[j] = mlp.gate_proj.weight[i]
            mlp.up_proj.weight[j] = 0.5 * mlp.up_proj.weight[i]
            mlp.down_proj.weight[:, j] = 1.6 * mlp.down_proj.weight[:, i]


@pytest.mark.parametrize("score", ["obs", "fluctuation"])
def test_obs_width_removes_the_redundant_channel_and_refits(score, calibration):
    pairs = [(3, 40), (20, 50)]
    model = tiny_model("llama")
    _duplicate_channel(model, pairs)
    ups = [block.mlp.up_proj.weight.clone() for block in model.model.layers]
    with torch.no_grad():
        dense = model(calibration).logits
    recipe = structured("width", target="mlp", ratio=1 / 64, multiple=1, score=score)  # exactly one channel
    report = prune(model, recipe, calibration, progress=False)
    assert report.structured.sizes == {"intermediate": 63, "intermediate_before": 64}
    removed = [
        sorted(set(range(64)) - set(_kept_rows(block.mlp.up_proj.weight, up)))
        for block, up in zip(model.model.layers, ups, strict=True)
    ]
    if score == "fluctuation":  # it does not see that the channel is redundant: the test tells the two apart
        assert all(r != [j] for r, (_, j) in zip(removed, pairs, strict=True)), removed
        return
    assert removed == [[j] for _, j in pairs]
    # the reader absorbed the removed channel (W_:i += 0.5 * 1.6 W_:i): the output barely moves (the ridge,
    # 0.01 of mean(diag A), keeps it from being exact)
    assert all(layer.reconstruction_error < 0.01 for layer in report.structured.layers), report.structured.layers
    with torch.no_grad():
        pruned = model(calibration).logits
    assert float((pruned - dense).norm() / dense.norm()) < 1e-3


def test_obs_width_from_the_command_line(tiny_folder, tmp_path):
    from secateurs.cli import main

    out = tmp_path / "obs"
    args = ["prune", str(tiny_folder), "--method", "width", "--ratio", "0.5", "--multiple", "16", "--score", "obs"]
    fast = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(out), *fast]) == 0
    report = Report.read(out / "secateurs.json")
    assert report.recipe["method"]["score"] == "obs"
    assert report.structured.sizes == {"intermediate": 32, "intermediate_before": 64}
    assert [layer.channels for layer in report.structured.layers] == [[64, 32], [64, 32]]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 32
    assert all(block.mlp.down_proj.weight.shape == (32, 32) for block in model.model.layers)
    assert sum(p.numel() for p in model.parameters()) == report.structured.after.parameters
    dense = AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert sum(p.numel() for p in dense.parameters()) == report.structured.before.parameters
    assert report.structured.before.parameters - report.structured.after.parameters == 2 * 32 * 3 * 32


@pytest.mark.parametrize("family", HEADS)
@pytest.mark.parametrize("grouping", ["queries", "kv-groups"])
def test_heads_keep_valid_gqa_and_reload(family, grouping, calibration, tmp_path):
    model = tiny_model(family)  # 4 query heads in 2 KV groups
    recipe = structured("width", target="heads", ratio=0.5, head_grouping=grouping)
    report = prune(model, recipe, calibration, progress=False)
    expected = (2, 2) if grouping == "queries" else (2, 1)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == expected
    assert report.structured.sizes["heads"] == expected[0]
    _reload_matches(model, calibration, tmp_path, report)


@pytest.mark.parametrize("family", ["opt", "gpt2", "gpt_neox"])
def test_heads_where_the_config_derives_the_head_size_is_refused(family, calibration):
    model = tiny_model(family)
    with pytest.raises(UnsupportedModelError, match="--target|--method"):
        prune(model, structured("width", target="heads", ratio=0.5), calibration, progress=False)


@pytest.mark.parametrize("family", DENSE + ["mixtral"])
@pytest.mark.parametrize("score", ["perplexity", "block-influence"])
def test_depth_removes_layers_and_reloads(family, score, calibration, tmp_path):
    model = tiny_model(family)
    total = len(find_blocks(model)[1])
    report = prune(model, structured("depth", remove=1, score=score), calibration, progress=False)
    assert len(report.structured.removed_layers) == 1 and len(find_blocks(model)[1]) == total - 1
    assert len(report.structured.candidates) == total  # every run of one layer was scored
    _reload_matches(model, calibration, tmp_path, report)


def test_depth_keeps_each_layers_attention_type(calibration, tmp_path):
    """Gemma3 alternates sliding and full attention: the kept layers keep their own type."""
    model = tiny_model("gemma3")  # sliding, sliding, full
    types = list(model.config.layer_types)
    report = prune(model, structured("depth", remove=1), calibration, progress=False)
    assert model.config.layer_types == [types[i] for i in report.structured.kept_layers]
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1]


def test_perplexity_picks_the_run_that_hurts_least(calibration):
    model = tiny_model("llama")
    report = prune(model, structured("depth", remove=1), calibration, progress=False)
    scores = [c.perplexity for c in report.structured.candidates]
    assert report.structured.removed_layers == [scores.index(min(scores))]


def _perplexity_without(model, layers, windows):
    """exp(mean next-token cross-entropy) over ``windows`` of a copy of ``model`` with ``layers`` deleted by hand."""
    cut = copy.deepcopy(model)
    kept = [block for i, block in enumerate(cut.model.layers) if i not in layers]
    cut.model.layers = torch.nn.ModuleList(kept)
    for index, block in enumerate(kept):
        block.self_attn.layer_idx = index
    cut.config.num_hidden_layers = len(kept)
    with torch.no_grad():
        logits = cut(input_ids=windows, use_cache=False).logits.double()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten())
    return math.exp(float(loss)), cut


def test_perplexity_search_matches_a_search_by_hand(calibration):
    """Four blocks, two to remove: the three runs [0, 1], [1, 2], [2, 3] are scored on the first three windows
    as the model without them, and the one with the lowest perplexity goes."""
    # weights of std 0.1 (not 0.02): the candidates' perplexities differ by far more than the tolerance
    config = LlamaConfig(**{**COMMON, "num_hidden_layers": 4, "initializer_range": 0.1})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    windows = calibration[:3]
    by_hand = {start: _perplexity_without(model, [start, start + 1], windows) for start in range(3)}
    best = min(by_hand, key=lambda start: by_hand[start][0])
    others = [by_hand[s][0] for s in by_hand if s != best]
    assert best == 1 and min(others) > by_hand[best][0] * 1.003  # the middle run, clearly
    report = prune(model, structured("depth", remove=2, search_windows=3), calibration, progress=False)
    change = report.structured
    assert [c.layers for c in change.candidates] == [[0, 1], [1, 2], [2, 3]]
    assert [c.block_influence for c in change.candidates] == [None] * 3
    assert [c.perplexity for c in change.candidates] == pytest.approx([by_hand[s][0] for s in range(3)], rel=1e-4)
    assert change.removed_layers == [best, best + 1]
    assert change.kept_layers == [0, 3] and change.search_windows == 3
    assert model.config.num_hidden_layers == 2 and [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    # the pruned model is the one removed by hand, on every window (not only the searched ones)
    with torch.no_grad():
        torch.testing.assert_close(model(calibration).logits, by_hand[best][1](calibration).logits)


def test_search_windows_limit_the_search_and_not_the_distillation(calibration):
    """The depth search scores candidates on the first N windows, as if given only those; a distillation after
    the cut still learns from every window."""
    runs = {}
    for name, windows, search in (("limited", calibration, 2), ("first-two", calibration[:2], None)):
        model = tiny_model("llama")
        recipe = structured("depth", remove=1, search_windows=search, distill_epochs=1)
        runs[name] = (prune(model, recipe, windows, progress=False).structured, model)
    (limited, model), (first_two, model_first_two) = runs["limited"], runs["first-two"]
    assert limited.search_windows == first_two.search_windows == 2
    assert limited.candidates == first_two.candidates and limited.removed_layers == first_two.removed_layers
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
    prune(model, structured(**recipe), calibration, progress=False)
    with torch.no_grad():
        assert torch.equal(model(calibration).logits, before)


def test_refit_beats_plain_removal_on_a_model(calibration):
    errors = {}
    for reconstruct in (False, True):
        model = tiny_model("qwen2")
        recipe = structured("width", target="mlp", ratio=0.5, multiple=8, reconstruct=reconstruct)
        report = prune(model, recipe, calibration, progress=False)
        errors[reconstruct] = [layer.reconstruction_error for layer in report.structured.layers]
    assert all(refitted < plain for refitted, plain in zip(errors[True], errors[False], strict=True))


@pytest.mark.parametrize(
    "recipe,match",
    [
        (dict(method="width", target="mlp", ratio=1.0), r"\[0, 1\)"),
        (dict(method="width", target="mlp", ratio=-0.1), r"\[0, 1\)"),
        # the library names the recipe's fields (the CLI names the flags: see test_command_line)
        (dict(method="width", target="mlp"), "method.ratio"),
        # a structured recipe has no allocation stage (its layers keep one size): the field is refused
        (
            dict(method="width", target="mlp", ratio=0.2, allocation="global"),
            "allocation.*not a setting of a structured",
        ),
        (dict(method="depth"), "method.remove"),
        (dict(method="depth", remove=2, ratio=0.5), "exactly one"),
        (dict(method="width", target="rows", ratio=0.2), "mlp or heads"),
        (dict(method="depth", remove=1, search_windows=0), "search_windows 0 is not a whole number >= 1"),
        (dict(method="width", target="mlp", ratio=0.2, search_windows=4), "search_windows.*not a setting of 'width'"),
    ],
)
def test_bad_recipes(recipe, match):
    recipe = dict(recipe)
    spec = {"method": {"name": recipe.pop("method"), **recipe}}
    if "allocation" in recipe:  # a recipe stage, not a setting of the method
        spec["allocation"] = spec["method"].pop("allocation")
    with pytest.raises(RecipeError, match=match):
        load_recipe(spec)


def test_removing_every_layer_is_refused(calibration):
    model = tiny_model("llama")
    with pytest.raises(RecipeError, match="leaves none"):
        prune(model, structured("depth", remove=2), calibration, progress=False)


def test_mixture_of_experts_mlp_width_is_refused(calibration):
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts"):
        prune(tiny_model("mixtral"), structured("width", target="mlp", ratio=0.5, multiple=8), calibration)


def test_ratio_that_rounds_to_nothing(calibration):
    with pytest.raises(RecipeError, match="--multiple"):
        prune(tiny_model("llama"), structured("width", target="mlp", ratio=0.1), calibration)  # 64 of 64


def test_command_line(tiny_folder, tmp_path, capsys):
    import json

    from secateurs.cli import main

    fast = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]
    out = tmp_path / "narrow"
    args = ["prune", str(tiny_folder), "--method", "width", "--ratio", "0.5", "--multiple", "16", "--out", str(out)]
    assert main([*args, *fast, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["parameters_removed"] > 0
    report = Report.read(out / "secateurs.json")
    assert report.structured.after.parameters < report.structured.before.parameters and report.weight_file_bytes > 0
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 32

    out = tmp_path / "shallow"
    assert main(["prune", str(tiny_folder), "--method", "depth", "--remove", "1", "--out", str(out), *fast]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    assert main(["prune", str(tiny_folder), "--method", "depth", "--out", str(tmp_path / "x"), *fast]) == 2
    assert "--remove" in capsys.readouterr().err
    args = ["prune", str(tiny_folder), "--method", "width", "--ratio", "0.2", "--search-windows", "4"]
    assert main([*args, "--out", str(tmp_path / "y"), *fast]) == 2
    assert "--search-windows goes with --method depth" in capsys.readouterr().err
