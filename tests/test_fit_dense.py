"""Fitting each layer to the dense model's output (``fit: dense``): the drift statistic against its formula, ALPS's
and SparseGPT's solutions against the least-squares problem they then solve, on hand-made tensors; the walk's
pairing of the dense and the pruned input of the same tokens; and the recipe's checks."""

import json

import pytest
import torch
from test_engine import Solver
from test_sparsegpt import _layer, solve_weight
from tiny_models import tiny_model

from secateurs import load_recipe, prune
from secateurs.engine import DenseInputs, WalkParts, WalkSettings, walk
from secateurs.errors import RecipeError
from secateurs.models import find_blocks, find_targets
from secateurs.observers import CrossObserver


def _drifted(inputs: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """The dense model's inputs of the same tokens: the pruned ones plus a low-rank drift, as pruning leaves."""
    generator = torch.Generator().manual_seed(seed)
    tokens, columns = inputs.shape
    return inputs + 0.5 * torch.randn(tokens, 4, generator=generator) @ torch.randn(4, columns, generator=generator)


def _observed(inputs: torch.Tensor, dense: torch.Tensor) -> CrossObserver:
    observer = CrossObserver(inputs.shape[1])
    for part, reference in zip(inputs.split(100), dense.split(100), strict=True):  # several batches of tokens
        observer.update(part, reference)
    return observer


def test_the_drift_is_twice_the_dense_minus_pruned_inputs_against_the_pruned_ones():
    _, inputs, _ = _layer(tokens=300)
    dense = _drifted(inputs)
    observer = _observed(inputs, dense)
    n = inputs.shape[0]
    torch.testing.assert_close(observer.drift, 2 * (dense - inputs).t() @ inputs / n, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(observer.hessian, 2 * inputs.t() @ inputs / n, rtol=1e-4, atol=1e-4)
    assert torch.equal(_observed(inputs, inputs.clone()).drift, torch.zeros_like(observer.drift))


@pytest.mark.parametrize("method", ["alps", "sparsegpt"])
def test_with_nothing_pruned_a_fit_to_the_dense_output_is_its_least_squares_fit(method):
    """min ||X_dense W^T - X B^T||^2 (2/n) + lambda ||B - W||^2, solved from the raw tokens: the drift's orientation
    (not symmetric) must be the one the normal equations read."""
    weight, inputs, _ = _layer(rows=6, columns=16, tokens=400)
    dense = _drifted(inputs)
    observer = _observed(inputs, dense)
    n, hessian = inputs.shape[0], observer.hessian
    lam = 0.01 * float(torch.diag(hessian).mean())
    damped = hessian + lam * torch.eye(16)
    right = 2 / n * weight @ dense.t() @ inputs + lam * weight  # B (H + lambda I) = this
    exact = torch.linalg.solve(damped.t(), right.t()).t()
    spec = {"method": {"name": method, "fit": "dense", "mix": 1}, "sparsity": 0.0}
    if method == "alps":
        spec["method"]["pcg_iterations"] = 64
    solution = solve_weight(weight, spec, observer)
    assert solution.mask.all()
    torch.testing.assert_close(solution.weight, exact, rtol=1e-3, atol=1e-3)


def test_unless_told_the_fit_goes_a_quarter_of_the_way_to_the_dense_output():
    """GPTAQ's default share: the target X W^T + 0.25 (X_dense - X) W^T, i.e. a quarter of the drift."""
    weight, inputs, _ = _layer(rows=6, columns=16, tokens=400)
    dense = _drifted(inputs)
    default = solve_weight(weight, {"method": {"name": "sparsegpt", "fit": "dense"}}, _observed(inputs, dense))
    quarter = inputs + 0.25 * (dense - inputs)
    spec = {"method": {"name": "sparsegpt", "fit": "dense", "mix": 1}}
    explicit = solve_weight(weight, spec, _observed(inputs, quarter))
    torch.testing.assert_close(default.weight, explicit.weight, rtol=1e-4, atol=1e-4)
    assert torch.equal(default.mask, explicit.mask)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_alps_fitted_to_the_dense_output_misses_it_less_and_its_own_output_more(sparsity):
    """ALPS re-fits the kept weights exactly on its support, so the fit's target decides the result (SparseGPT's
    greedy sweep from the shifted start is not held to this: on such tensors it lands on either side)."""
    method = "alps"
    weight, inputs, _ = _layer(rows=32, columns=64, tokens=1024)
    dense = _drifted(inputs)
    observer = _observed(inputs, dense)
    own = solve_weight(weight, {"method": method, "sparsity": sparsity}, observer).weight
    spec = {"method": {"name": method, "fit": "dense", "mix": 1}, "sparsity": sparsity}
    toward = solve_weight(weight, spec, observer).weight

    def missed(reference: torch.Tensor, pruned: torch.Tensor) -> float:
        return float((reference @ weight.t() - inputs @ pruned.t()).norm())

    assert missed(dense, toward) < missed(dense, own)
    assert missed(inputs, own) < missed(inputs, toward)


@pytest.mark.parametrize("sequential", [True, False])
def test_each_batch_is_paired_with_the_dense_input_of_its_own_tokens(calibration, sequential):
    """Block 0 sees the same hidden states in both streams: each Linear fed before anything of the block is
    pruned gets its own input back as the dense one, batch by batch (a batch paired with another's fails); after
    block 0 is pruned, block 1's inputs differ from the dense ones."""
    model = tiny_model("llama")
    blocks_name, blocks = find_blocks(model)
    pairs: dict[str, list[bool]] = {}

    class Pairs:
        def __init__(self, target):
            self.name = target.name

        def update(self, inputs, dense):
            pairs.setdefault(self.name, []).append(torch.equal(inputs, dense))

    def solve(target, observer):
        weight = target.weight()
        weight.masked_fill_(weight.abs() < weight.abs().median(), 0)

    widest = max(target.in_features for target in find_targets(blocks[0], ""))
    hooks = [DenseInputs(model.config.hidden_size, widest)]
    settings = WalkSettings(sequential, batch_size=2, progress=False)
    walk(model, calibration, Solver(Pairs, solve), settings, WalkParts(hooks=hooks))
    batches = calibration.shape[0] // 2
    assert all(len(fed) == batches for fed in pairs.values())
    assert all(pairs[f"{blocks_name}.0.self_attn.q_proj"])
    assert all(pairs[f"{blocks_name}.0.mlp.down_proj"]) is not sequential  # true-sequential: gate/up pruned first
    assert not any(pairs[f"{blocks_name}.1.self_attn.q_proj"])


@pytest.mark.parametrize("method", ["alps", "sparsegpt"])
def test_a_model_fitted_to_the_dense_one_gives_closer_logits_on_its_calibration(calibration, method):
    """The point of the fit: the pruned model's output on the calibration tokens is nearer the dense model's."""
    dense = tiny_model("llama")
    with torch.no_grad():
        reference = dense(input_ids=calibration).logits
    missed = {}
    for fit in ("self", "dense"):
        model = tiny_model("llama")
        spec = {"name": method, "fit": fit, **({"mix": 1} if fit == "dense" else {})}
        recipe = load_recipe({"method": spec, "sparsity": 0.7})
        report = prune(model, recipe, calibration, progress=False)
        assert report.sparsity == pytest.approx(0.7, abs=1e-3)
        assert report.walk.passes_per_block == (2 if fit == "dense" else 1)  # the dense block's pass beside
        with torch.no_grad():
            missed[fit] = float((model(input_ids=calibration).logits - reference).pow(2).mean())
    assert missed["dense"] < 0.8 * missed["self"]


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"name": "alps", "fit": "model"}, "choose self or dense"),
        ({"name": "alps", "fit": "dense", "mix": 0}, r"outside \(0, 1\]"),
        ({"name": "sparsegpt", "mix": 0.5}, "set method.fit dense"),
    ],
)
def test_a_bad_fit_says_what_to_give(method, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"method": method})


def test_experts_are_refused_a_fit_to_the_dense_model(calibration):
    recipe = load_recipe({"method": {"name": "alps", "fit": "dense"}})
    with pytest.raises(RecipeError, match="routes tokens between experts"):
        prune(tiny_model("mixtral"), recipe, calibration, progress=False)


def test_the_command_line_sets_the_fit_and_names_its_flag_in_errors(tiny_folder, tmp_path, capsys):
    from test_cli import FAST

    from secateurs.cli import main

    out = tmp_path / "fitted"
    flags = ["--method", "alps", "--fit", "dense", "--fit-mix", "0.5", "--out", str(out), *FAST]
    assert main(["prune", str(tiny_folder), *flags]) == 0
    method = json.loads((out / "secateurs.json").read_text())["recipe"]["method"]
    assert method["fit"] == "dense" and method["mix"] == 0.5
    code = main(["prune", str(tiny_folder), "--method", "alps", "--fit-mix", "0.5", "--out", str(tmp_path / "o")])
    assert code != 0 and "--fit-mix" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_first_block_left_dense_still_walks_beside_the_dense_stream(calibration):
    model = tiny_model("llama")
    recipe = load_recipe({"method": {"name": "alps", "fit": "dense"}, "ignore": ["model.layers.0.*"]})
    report = prune(model, recipe, calibration, progress=False)
    assert {layer.name.split(".")[2] for layer in report.layers} == {"1"}
    assert recipe.to_dict()["method"]["mix"] == 0.25  # the share used is what the saved recipe says
