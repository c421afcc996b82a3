"""ALPS: the ADMM support search and the conjugate-gradient re-fit, against the least-squares problem they solve,
on hand-made tensors; and the method through a recipe on a tiny model."""

import pytest
import torch
from test_sparsegpt import _error, _layer, solve_weight
from tiny_models import FAMILIES, tiny_model

from secateurs import load_recipe, prune
from secateurs.errors import RecipeError
from secateurs.methods import LayerPlan
from secateurs.methods.alps import Alps, admm_step, admm_support, alps_prune, pcg_refit
from secateurs.methods.sparsegpt import ObsSettings, sparsegpt_prune
from secateurs.patterns import NMPattern, is_nm_sparse


def _unit(hessian: torch.Tensor) -> torch.Tensor:
    scale = torch.sqrt(torch.diag(hessian))
    return hessian / scale.unsqueeze(0) / scale.unsqueeze(1)


def test_conjugate_gradients_reach_each_rows_exact_least_squares_on_its_support():
    weight, _, observer = _layer(rows=6, columns=12)
    hessian = _unit(observer.hessian + 0.01 * torch.eye(12))
    support = torch.rand(6, 12, generator=torch.Generator().manual_seed(1)) > 0.5
    fitted = pcg_refit(weight * support, weight, hessian, support, iterations=12)  # n steps: exact
    for row in range(6):
        kept = support[row]
        # min (b - w) H (b - w)^T over b zero off the support: H_SS b_S = (H w)_S
        exact = torch.linalg.solve(hessian[kept][:, kept], (hessian @ weight[row])[kept])
        torch.testing.assert_close(fitted[row, kept], exact, rtol=1e-3, atol=1e-4)
        assert (fitted[row, ~kept] == 0).all()


def test_one_admm_iteration_is_the_papers_update():
    generator = torch.Generator().manual_seed(2)
    target, dual = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    sparse = target * (torch.rand(4, 8, generator=generator) > 0.5)
    hessian = _unit(_layer(rows=4, columns=8)[2].hessian)
    rho, plan = 0.3, LayerPlan(0.5, NMPattern(2, 4))
    inverse = torch.linalg.inv(hessian + rho * torch.eye(8))
    weights, new_sparse, new_dual, support = admm_step(target @ hessian, inverse, sparse, dual, rho, plan)
    # B minimises 1/2 (B - T) H (B - T)^T + <V, B - D> + rho/2 ||B - D||^2: its gradient is zero there
    gradient = (weights - target) @ hessian + dual + rho * (weights - sparse)
    torch.testing.assert_close(gradient, torch.zeros_like(gradient), rtol=0, atol=1e-4)
    shifted = weights + dual / rho
    assert is_nm_sparse(new_sparse, NMPattern(2, 4))
    groups = shifted.abs().reshape(4, 2, 4)
    kept = support.reshape(4, 2, 4)
    assert (groups[kept].reshape(4, 2, 2).min(-1).values >= groups[~kept].reshape(4, 2, 2).max(-1).values).all()
    torch.testing.assert_close(new_sparse, shifted * support)
    torch.testing.assert_close(new_dual, dual + rho * (weights - new_sparse))


def test_with_an_identity_hessian_the_kept_weights_are_the_targets():
    # min ||B - T||^2 on a support: B = T there; ADMM's support comes close to the k largest entries' error
    target = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    plan = LayerPlan(0.75, None)
    support, weights, _ = admm_support(target, torch.eye(16), plan, rho=0.1, iterations=300)
    fitted = pcg_refit(weights, target, torch.eye(16), support, iterations=4)
    torch.testing.assert_close(fitted, target * support)
    best = target.abs().flatten().sort().values[: int(0.75 * target.numel())].pow(2).sum()
    assert int((~support).sum()) == int(0.75 * target.numel())
    assert float((target * ~support).pow(2).sum()) <= 1.25 * float(best)


def test_alps_is_exact_in_count_and_pattern():
    weight, _, observer = _layer()
    pruned, mask, dead = alps_prune(weight, observer.hessian, LayerPlan(0.6, None))
    assert int((~mask).sum()) == int(0.6 * weight.numel()) and dead == 0
    assert (pruned[~mask] == 0).all()
    pattern = NMPattern(2, 4)
    pruned, mask, _ = alps_prune(weight, observer.hessian, LayerPlan(0.5, pattern))
    assert is_nm_sparse(pruned, pattern) and is_nm_sparse(mask.float(), pattern)


@pytest.mark.parametrize(("sparsity", "pattern"), [(0.5, None), (0.7, None), (0.5, NMPattern(2, 4))])
def test_alps_reconstructs_the_layer_better_than_sparsegpt(sparsity, pattern):
    weight, inputs, observer = _layer(rows=48, columns=64, tokens=1024)
    plan = LayerPlan(sparsity, pattern)
    pruned, _, _ = alps_prune(weight, observer.hessian, plan)
    reference = sparsegpt_prune(weight, observer.hessian, sparsity, pattern, settings=ObsSettings(blocksize=64)).weight
    assert _error(weight, pruned, inputs) < _error(weight, reference, inputs)


def test_a_dead_input_loses_its_weights_and_counts():
    weight, inputs, observer = _layer()
    inputs = inputs.clone()
    inputs[:, 3] = 0
    from secateurs.observers import HessianObserver

    silent = HessianObserver(inputs.shape[1])
    silent.update(inputs)
    pruned, _, dead = alps_prune(weight, silent.hessian, LayerPlan(0.5, None))
    assert dead == 1 and (pruned[:, 3] == 0).all() and torch.isfinite(pruned).all()


def test_alps_through_a_recipe_and_on_a_tiny_model():
    weight, inputs, observer = _layer()
    solution = solve_weight(weight, {"method": "alps", "sparsity": 0.5}, observer)
    assert solution.weight is not None and int((~solution.mask).sum()) == weight.numel() // 2
    model = tiny_model("llama")
    calibration = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    report = prune(model, load_recipe({"method": "alps", "pattern": "2:4"}), calibration, progress=False)
    assert report.sparsity == pytest.approx(0.5)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "layers" in name:
            assert is_nm_sparse(module.weight, NMPattern(2, 4)), name
    with pytest.raises(RecipeError, match="rho"):
        load_recipe({"method": {"name": "alps", "rho": -1}})


def test_compared_within_rows_every_row_keeps_the_same_count():
    weight, _, observer = _layer(rows=8, columns=16)
    weight = weight * torch.linspace(0.1, 3.0, 8).unsqueeze(1)  # rows of very different sizes
    _, layer_mask, _ = alps_prune(weight, observer.hessian, LayerPlan(0.5, None))
    assert len(set(layer_mask.sum(1).tolist())) > 1  # the layer-wide top-k takes more from the small rows
    pruned, mask, _ = alps_prune(weight, observer.hessian, LayerPlan(0.5, None), Alps(compare="row"))
    assert mask.sum(1).tolist() == [8] * 8 and (pruned[~mask] == 0).all()
    solution = solve_weight(weight, {"method": {"name": "alps", "compare": "row"}, "sparsity": 0.5}, observer)
    assert solution.mask.sum(1).tolist() == [8] * 8
    with pytest.raises(RecipeError, match="compare"):
        load_recipe({"method": {"name": "alps", "compare": "column"}})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_shipped_presets_carry_their_gain_to_every_family(family):
    """Nothing in "balanced" (ALPS) or "best" (ALPS, then EBFT toward the dense model) is tuned to one model:
    on every family secateurs prunes, dense and mixture-of-experts, at 70% their logits stay nearer the dense
    model's than SparseGPT's, on tokens the calibration did not see too, and the tuning brings its own
    calibration nearer still."""
    from secateurs.recipe.presets import read_preset

    dense = tiny_model(family)
    vocab = dense.config.vocab_size
    seeds = (torch.Generator().manual_seed(seed) for seed in (0, 1))
    calibration, held_out = (torch.randint(3, vocab, (8, 32), generator=seed) for seed in seeds)
    with torch.no_grad():
        references = [dense(input_ids=tokens).logits for tokens in (calibration, held_out)]
    recipes = {"sparsegpt": {"method": "sparsegpt"}, **{preset: read_preset(preset) for preset in ("balanced", "best")}}
    missed = {}
    for name, spec in recipes.items():
        model = tiny_model(family)
        prune(model, load_recipe({**spec, "sparsity": 0.7}), calibration, progress=False)
        with torch.no_grad():
            missed[name] = [
                float((model(input_ids=tokens).logits - reference).pow(2).mean())
                for tokens, reference in zip((calibration, held_out), references, strict=True)
            ]
    for preset in ("balanced", "best"):
        assert missed[preset][1] < 0.95 * missed["sparsegpt"][1], (preset, missed)
    assert missed["best"][0] < missed["balanced"][0], missed
