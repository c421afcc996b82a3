"""Layer-wise allocation (OWL, schedule, file) and the papers' variants: RIA, Wanda's variant, DSnoT."""

import pytest
import torch
from tiny_models import tiny_model

from secateurs import load_recipe, prune
from secateurs.allocation import mixed_nm
from secateurs.allocation.owl import owl_sparsities
from secateurs.allocation.schedule import schedule_sparsities
from secateurs.errors import RecipeError
from secateurs.methods import ria, wanda
from secateurs.methods.dsnot import DSnoT, dsnot, expected_error
from secateurs.models import find_blocks, find_targets
from secateurs.patterns import NMPattern, is_nm_sparse, unstructured_mask


def _overall(model):
    name, blocks = find_blocks(model)
    weights = [t.weight() for i, b in enumerate(blocks) for t in find_targets(b, f"{name}.{i}")]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _block_sparsities(model):
    name, blocks = find_blocks(model)
    result = []
    for i, block in enumerate(blocks):
        weights = [t.weight() for t in find_targets(block, f"{name}.{i}")]
        result.append(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))
    return result


def test_owl_mapping_keeps_the_mean_and_the_span():
    sparsities = owl_sparsities([0.01, 0.05, 0.02, 0.03], [100, 100, 300, 100], 0.6, span=0.08)
    assert sum(s * n for s, n in zip(sparsities, [100, 100, 300, 100], strict=True)) / 600 == pytest.approx(0.6)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    assert sparsities[1] == min(sparsities) and sparsities[0] == max(sparsities)  # more outliers, less pruning


def test_owl_gives_the_outlier_heavy_block_less_sparsity(calibration):
    model = tiny_model("llama", seed=1)
    # block 1 gets heavy-tailed weights: 5% of its entries 30 times larger, far above M times the mean score
    generator = torch.Generator().manual_seed(0)
    for module in model.model.layers[1].modules():
        if isinstance(module, torch.nn.Linear):
            outliers = torch.rand(module.weight.shape, generator=generator) < 0.05
            module.weight.data[outliers] *= 30
    recipe = load_recipe({"method": "wanda", "sparsity": 0.6, "allocation": "owl"})
    report = prune(model, recipe, calibration, progress=False)
    ratios = report.allocation.outlier_ratios
    assert ratios[1] > ratios[0]
    blocks = _block_sparsities(model)
    assert blocks[1] < blocks[0]
    assert _overall(model) == pytest.approx(0.6, abs=0.001)


@pytest.mark.parametrize(
    "options",
    [
        dict(allocation="owl"),
        dict(allocation="owl", method="magnitude"),
        dict(allocation="owl", method="sparsegpt"),
        dict(allocation="uniform"),
    ],
)
def test_allocations_keep_the_overall_sparsity(options, calibration):
    model = tiny_model("qwen2", seed=2)
    options = {"method": "wanda", **options}
    prune(model, load_recipe({"sparsity": 0.7, **options}), calibration, progress=False)
    assert _overall(model) == pytest.approx(0.7, abs=0.001)


def test_schedule_endpoints_are_exact(calibration):
    assert schedule_sparsities(0.3, 0.7, 5) == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    model = tiny_model("llama")
    recipe = load_recipe({"method": "wanda", "allocation": {"name": "schedule", "first": 0.25, "last": 0.75}})
    report = prune(model, recipe, calibration, progress=False)
    assert report.allocation.block_sparsities == [0.25, 0.75]
    assert _block_sparsities(model) == pytest.approx([0.25, 0.75], abs=1e-9)


def test_allocation_file(tmp_path, calibration):
    rules = tmp_path / "sparsity.yaml"
    rules.write_text("'*.mlp.down_proj': 0.25\n'model.layers.1.*': 0.75\n")
    model = tiny_model("llama")
    recipe = load_recipe({"method": "wanda", "sparsity": 0.5, "allocation": str(rules)})
    report = prune(model, recipe, calibration, progress=False)
    by_name = {layer.name: layer.sparsity for layer in report.layers}
    assert by_name["model.layers.0.mlp.down_proj"] == 0.25 and by_name["model.layers.1.mlp.down_proj"] == 0.25
    assert by_name["model.layers.1.self_attn.q_proj"] == 0.75 and by_name["model.layers.0.self_attn.q_proj"] == 0.5


def test_nm_with_owl_skips_or_mixes(calibration):
    model = tiny_model("llama")
    report = prune(
        model, load_recipe({"method": "wanda", "pattern": "4:8", "allocation": "owl"}), calibration, progress=False
    )
    assert "skipped" in report.allocation.note
    model = tiny_model("llama")
    recipe = load_recipe(
        {
            "method": "wanda",
            "pattern": "4:8",
            "allocation": {"name": "schedule", "first": 0.25, "last": 0.75, "nm": "mixed"},
        }
    )
    report = prune(model, recipe, calibration, progress=False)
    patterns = {layer.pattern for layer in report.layers}
    assert patterns == {"6:8", "2:8"}
    for layer in report.layers:
        n, m = (int(x) for x in layer.pattern.split(":"))
        target = model.get_submodule(layer.name).weight
        assert is_nm_sparse(target, NMPattern(n, m))
    assert mixed_nm(NMPattern(2, 4), 0.9) == NMPattern(1, 4)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(allocation="schedule"), "allocation.first"),
        (dict(allocation={"name": "schedule", "first": 0.2, "last": 0.8}, sparsity=0.5), "either"),
        (dict(allocation="no-such-file.yaml"), "YAML/JSON"),
        (dict(method={"name": "wanda", "variant": True}, pattern="2:4"), "unstructured"),
        (dict(refine="dsnot", method="sparsegpt"), "score method"),
        (dict(refine="grow"), "dsnot"),
    ],
)
def test_bad_allocation_recipes(options, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe({"method": "wanda", **options})


def test_schedule_that_is_not_first_colon_last_is_refused(tiny_folder, tmp_path, capsys):
    """The schedule's text is parsed by the command line now (the recipe holds two numbers)."""
    from secateurs.cli import main

    out = tmp_path / "o"
    args = ["prune", str(tiny_folder), "--allocation", "schedule", "--schedule", "0.2-0.8", "--out", str(out)]
    assert main(args) == 2
    assert "FIRST:LAST" in capsys.readouterr().err
    assert not out.exists()


def test_ria_score_is_its_formula():
    weight = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    sum_squares = torch.tensor([4.0, 9.0])  # ||X_j|| = 2, 3
    expected = (
        torch.tensor(
            [
                [1 / 4 + 1 / 3, 2 / 6 + 2 / 3],
                [3 / 4 + 3 / 7, 4 / 6 + 4 / 7],
            ]
        )
        * torch.tensor([2.0, 3.0]) ** 0.5
    )
    torch.testing.assert_close(ria.score(weight, sum_squares), expected)
    torch.testing.assert_close(ria.score(weight, sum_squares, alpha=0.0), expected / torch.tensor([2.0, 3.0]) ** 0.5)


def test_ria_prunes_a_tiny_model(calibration):
    model = tiny_model("mistral")
    report = prune(model, load_recipe({"method": "ria"}), calibration, progress=False)
    assert report.sparsity == 0.5


def test_wanda_variant_reaches_the_layer_sparsity_with_uneven_rows():
    generator = torch.Generator().manual_seed(0)
    score = torch.rand(64, 256, generator=generator) * torch.linspace(0.1, 3, 64).unsqueeze(1) ** 3
    score[:, :8] *= 50  # some rows have a few dominant weights
    mask = wanda.variant_mask(score, 0.5)
    assert float((~mask).float().mean()) == pytest.approx(0.5, abs=0.0011)
    per_row = (~mask).sum(1)
    assert per_row.min() != per_row.max()  # rows lose different counts, unlike plain Wanda


def test_dsnot_never_worsens_the_expected_error_and_keeps_the_count():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 128, generator=generator)
    mean = torch.randn(128, generator=generator) * 2
    variance = torch.rand(128, generator=generator) + 0.1
    norms = (variance + mean.square()) * 1000
    score = wanda.score(weight, norms)
    for pattern in (None, NMPattern(2, 4)):
        keep = unstructured_mask(score, 0.5, per_row=True) if pattern is None else None
        if pattern is not None:
            from secateurs.patterns import nm_mask

            keep = nm_mask(score, pattern)
        refined = dsnot(weight, keep, mean, variance, score, pattern, DSnoT(threshold=0.0))
        before, after = expected_error(weight, keep, mean).abs(), expected_error(weight, refined, mean).abs()
        assert (after <= before + 1e-5).all()
        assert after.sum() < 0.5 * before.sum()  # and it does improve
        assert torch.equal(refined.sum(1), keep.sum(1))
        if pattern is not None:
            assert is_nm_sparse(weight * refined, pattern)


def test_dsnot_refines_a_model_and_skips_mlp_by_default(calibration):
    plain, refined = tiny_model("llama"), tiny_model("llama")
    prune(plain, load_recipe({"method": "wanda"}), calibration, progress=False)
    recipe = load_recipe({"method": "wanda", "refine": {"name": "dsnot", "threshold": 0.0}})
    prune(refined, recipe, calibration, progress=False)
    q, up = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"
    a, b = dict(plain.named_parameters()), dict(refined.named_parameters())
    assert not torch.equal(a[q] == 0, b[q] == 0) and torch.equal(a[up] == 0, b[up] == 0)
    assert _overall(refined) == pytest.approx(0.5)


def test_command_line_flags(tiny_folder, tmp_path, capsys):
    import json

    from secateurs.cli import main

    fast = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]
    out = tmp_path / "owl"
    args = ["prune", str(tiny_folder), "--method", "ria", "--allocation", "owl", "--refine", "dsnot", "--out", str(out)]
    assert main([*args, *fast]) == 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["allocation"]["method"] == "owl" and report["recipe"]["refine"]["name"] == "dsnot"
    out = tmp_path / "ramp"
    args = [
        "prune",
        str(tiny_folder),
        "--allocation",
        "schedule",
        "--schedule",
        "0.3:0.6",
        "--variant",
        "--out",
        str(out),
    ]
    assert main([*args, *fast]) == 0
    assert json.loads((out / "secateurs.json").read_text())["allocation"]["block_sparsities"] == [0.3, 0.6]
