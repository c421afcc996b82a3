"""SparseGPT and the OBS weight-update ablations, on hand-made tensors and tiny models."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from secateurs import load_recipe, prune
from secateurs.errors import NumericalError, RecipeError
from secateurs.methods import LayerPlan, solve_layer
from secateurs.methods.sparsegpt import ObsSettings, inverse_hessian_factor, sparsegpt_prune
from secateurs.models import find_blocks, find_targets
from secateurs.observers import HessianObserver, InputNormObserver
from secateurs.patterns import NMPattern, is_nm_sparse, unstructured_mask


def _layer(rows=24, columns=64, tokens=512, seed=0):
    """A weight and strongly correlated inputs (as real activations are), with the Hessian 2 X^T X / n."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    latent = torch.randn(tokens, 16, generator=generator) @ torch.randn(16, columns, generator=generator)
    inputs = latent + 0.5 * torch.randn(tokens, columns, generator=generator)
    observer = HessianObserver(columns)
    observer.update(inputs)
    return weight, inputs, observer


def solve_weight(weight, spec, statistics):
    """One layer solved as the recipe ``spec`` says, at the recipe's sparsity and pattern."""
    recipe = load_recipe(spec)
    plan = LayerPlan(recipe.target_sparsity, recipe.nm_pattern)
    return solve_layer(weight, statistics, plan, recipe.method, recipe.refine, recipe.update)


def _error(weight, pruned, inputs):
    return float(torch.linalg.norm(inputs @ weight.t() - inputs @ pruned.t()))


def test_hessian_observer_is_two_xtx_over_n_and_merges_exactly():
    _, inputs, whole = _layer()
    torch.testing.assert_close(whole.hessian, 2 * inputs.t() @ inputs / inputs.shape[0])
    a, b = HessianObserver(inputs.shape[1]), HessianObserver(inputs.shape[1])
    a.update(inputs[:100])
    b.update(inputs[100:].unsqueeze(0))
    a.merge(b)
    torch.testing.assert_close(a.hessian, whole.hessian)
    norms = InputNormObserver(inputs.shape[1])
    norms.update(inputs)
    torch.testing.assert_close(whole.input_sum_squares(), norms.sum_squares.float(), rtol=1e-4, atol=1e-3)


def test_obs_update_lowers_the_reconstruction_error_of_the_same_mask():
    weight, inputs, observer = _layer()
    result = sparsegpt_prune(weight, observer.hessian, 0.5)
    mask_only = weight * result.mask
    assert _error(weight, result.weight, inputs) < 0.5 * _error(weight, mask_only, inputs)
    assert torch.isfinite(result.weight).all()
    # and SparseGPT's own mask beats magnitude's with the same update
    magnitude = unstructured_mask(weight.abs(), 0.5, per_row=False)
    updated = sparsegpt_prune(weight, observer.hessian, 0.5, mask=magnitude)
    assert _error(weight, result.weight, inputs) < _error(weight, updated.weight, inputs)
    assert _error(weight, updated.weight, inputs) < _error(weight, weight * magnitude, inputs)


@pytest.mark.parametrize("sparsity,blocksize", [(0.5, 128), (0.5, 16), (0.7, 24), (0.33, 7)])
def test_unstructured_sparsity_is_exact(sparsity, blocksize):
    weight, _, observer = _layer()
    result = sparsegpt_prune(weight, observer.hessian, sparsity, settings=ObsSettings(blocksize=blocksize))
    assert int((result.weight == 0).sum()) == int(weight.numel() * sparsity)
    assert torch.equal(result.weight != 0, result.mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_is_valid(n, m):
    weight, _, observer = _layer()
    settings = ObsSettings(blocksize=16)
    result = sparsegpt_prune(weight, observer.hessian, 1 - n / m, pattern=NMPattern(n, m), settings=settings)
    assert is_nm_sparse(result.weight, NMPattern(n, m))
    assert int((result.weight != 0).sum()) == weight.numel() * n // m


def test_indefinite_hessian_retries_with_more_dampening():
    hessian = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    factor, used = inverse_hessian_factor(hessian, 0.01)
    assert used == pytest.approx(10.0) and torch.isfinite(factor).all()
    result = sparsegpt_prune(torch.tensor([[1.0, -2.0], [0.5, 3.0]]), hessian, 0.5)
    assert result.dampening == pytest.approx(10.0) and torch.isfinite(result.weight).all()


@pytest.mark.bad_input
def test_a_hessian_no_dampening_mends_is_a_clear_error():
    hessian = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]])  # inputs with NaN
    with pytest.raises(NumericalError, match="dampening"):
        inverse_hessian_factor(hessian, 0.01)


def test_inputs_that_never_fire_are_handled_as_the_reference():
    weight, inputs, _ = _layer(columns=16)
    inputs[:, [3, 7]] = 0
    observer = HessianObserver(16)
    observer.update(inputs)
    result = sparsegpt_prune(weight, observer.hessian, 0.5)
    assert result.dead_inputs == 2
    assert (result.weight[:, [3, 7]] == 0).all() and torch.isfinite(result.weight).all()


def test_singular_hessian_gives_no_nan():
    weight = torch.randn(8, 32)
    inputs = torch.randn(4, 32)  # 4 tokens: rank 4 of 32
    observer = HessianObserver(32)
    observer.update(inputs)
    result = sparsegpt_prune(weight, observer.hessian, 0.5)
    assert torch.isfinite(result.weight).all()


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_obs_seq_keeps_the_scores_mask_and_lowers_the_error(method):
    weight, inputs, observer = _layer()
    plain = solve_weight(weight, {"method": method}, observer)
    updated = solve_weight(weight, {"method": method, "update": "obs-seq"}, observer)
    assert torch.equal(plain.mask, updated.mask)
    assert _error(weight, updated.weight * updated.mask, inputs) < _error(weight, weight * plain.mask, inputs)


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_obs_iter_rechooses_the_mask_on_updated_weights(method, pattern):
    weight, inputs, observer = _layer()
    seq = solve_weight(
        weight, {"method": method, "pattern": pattern, "update": {"name": "obs-seq", "blocksize": 16}}, observer
    )
    iterative = solve_weight(
        weight, {"method": method, "pattern": pattern, "update": {"name": "obs-iter", "blocksize": 16}}, observer
    )
    assert int((~iterative.mask).sum()) == weight.numel() // 2
    assert not torch.equal(seq.mask, iterative.mask)
    if pattern == "2:4":
        assert is_nm_sparse(iterative.weight * iterative.mask, NMPattern(2, 4))


def test_update_is_refused_with_sparsegpt():
    with pytest.raises(RecipeError, match="drop update"):  # the library names the field, the CLI the flag
        load_recipe({"method": "sparsegpt", "update": "obs-seq"})
    with pytest.raises(RecipeError, match="obs-seq"):
        load_recipe({"method": "wanda", "update": "obs"})


def test_sparsegpt_is_true_sequential_by_default():
    assert load_recipe({"method": "sparsegpt"}).sequential and not load_recipe({"method": "wanda"}).sequential
    assert not load_recipe({"method": "sparsegpt", "true_sequential": False}).sequential


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("pattern,true_sequential", [("unstructured", None), ("2:4", False)])
def test_every_family(family, pattern, true_sequential, calibration):
    model = tiny_model(family)
    recipe = {"method": "sparsegpt", "pattern": pattern, "true_sequential": true_sequential}
    report = prune(model, recipe, calibration, progress=False)
    name, blocks = find_blocks(model)
    layers = 0
    for target in (t for i, b in enumerate(blocks) for t in find_targets(b, f"{name}.{i}")):
        weight = target.weight()
        assert torch.isfinite(weight).all(), target.name
        if pattern == "2:4":
            assert is_nm_sparse(weight, NMPattern(2, 4)), target.name
            # exactly two of every four: no group loses more (a kept weight is never exactly zero here)
            assert int((weight == 0).sum()) == weight.numel() // 2, target.name
        else:
            # a layer loses int(numel * 0.5) weights (patterns.prune_count), not one more
            assert int((weight == 0).sum()) == int(weight.numel() * 0.5), target.name
        layers += 1
    assert layers == len(report.layers)
    assert report.walk.mode == ("one-pass" if true_sequential is None else "two-pass")
    # every layer of these tiny models has an even size: half of them all is exactly 0.5
    assert report.sparsity == 0.5


def test_sparsegpt_lowers_the_block_output_error_against_wanda(calibration):
    """On a whole tiny model, SparseGPT's logits stay closer to the dense model's than Wanda's."""
    dense = tiny_model("llama")
    with torch.no_grad():
        reference = dense(calibration).logits
    errors = {}
    for method in ("wanda", "sparsegpt"):
        model = tiny_model("llama")
        prune(model, {"method": method, "true_sequential": True}, calibration, progress=False)
        with torch.no_grad():
            errors[method] = float((model(calibration).logits - reference).norm())
    assert errors["sparsegpt"] < errors["wanda"], errors


def test_statistics_are_computed_once_per_shared_input(calibration):
    """q/k/v (and gate/up) read the same tensor: one Hessian each group, not one per Linear."""
    model = tiny_model("llama")
    made = []
    original = HessianObserver.__init__

    def counting(self, in_features, device="cpu"):
        made.append(in_features)
        original(self, in_features, device)

    HessianObserver.__init__ = counting
    try:
        prune(model, {"method": "sparsegpt", "true_sequential": False}, calibration, progress=False)
    finally:
        HessianObserver.__init__ = original
    assert len(made) == 2 * 4  # per block: q/k/v, o, gate/up, down


def test_nan_statistics_name_the_layer(calibration):
    model = tiny_model("llama")
    model.model.layers[0].input_layernorm.weight.data[0] = float("inf")
    with pytest.raises(NumericalError, match=r"model\.layers\.0\.self_attn\.q_proj.*--dtype float32"):
        prune(model, {"method": "sparsegpt"}, calibration, progress=False)


def test_hessians_on_cpu_give_the_same_weights(calibration):
    a, b = tiny_model("qwen2"), tiny_model("qwen2")
    prune(a, {"method": "sparsegpt", "true_sequential": False}, calibration, progress=False)
    prune(b, {"method": "sparsegpt", "true_sequential": False}, calibration, hessians_on_cpu=True, progress=False)
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(x, y), name
