import torch

from secateurs.methods import magnitude, method_class, wanda
from secateurs.observers import InputNormObserver
from secateurs.patterns import unstructured_mask


def test_wanda_score_is_weight_times_input_norm():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]])
    inputs = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 2.0], [0.0, 1.0, 0.0]])  # 3 tokens
    observer = InputNormObserver(3)
    observer.update(inputs[:2])
    observer.update(inputs[2:].unsqueeze(0))  # batches of any shape merge
    expected = weight.abs() * torch.linalg.vector_norm(inputs, dim=0)
    torch.testing.assert_close(wanda.score(weight, observer.sum_squares), expected)
    assert observer.tokens == 3


def test_wanda_differs_from_magnitude_when_activations_are_uneven():
    # Feature 0 has small weights but huge activations (an outlier feature, as in the paper's Figure 1).
    weight = torch.tensor([[0.5, 1.0, 1.0, 2.0], [0.5, 2.0, 1.0, 1.0]])
    sum_squares = torch.tensor([100.0, 1.0, 1.0, 1.0]) ** 2
    wanda_mask = unstructured_mask(wanda.score(weight, sum_squares), 0.5, per_row=True)
    magnitude_mask = unstructured_mask(magnitude.score(weight), 0.5, per_row=True)
    assert wanda_mask[:, 0].all()  # the outlier feature's weights are kept
    assert not magnitude_mask[:, 0].any()


def test_observer_merge_equals_one_stream():
    torch.manual_seed(0)
    x = torch.randn(50, 7)
    whole, a, b = InputNormObserver(7), InputNormObserver(7), InputNormObserver(7)
    whole.update(x)
    a.update(x[:20])
    b.update(x[20:])
    a.merge(b)
    torch.testing.assert_close(a.sum_squares, whole.sum_squares)
    assert a.tokens == 50


def test_registry_comparison_groups():
    assert method_class("wanda").per_row and method_class("wanda").statistics is not None
    assert not method_class("magnitude").per_row and method_class("magnitude").statistics is None


def test_reconstruction_error_is_measured_on_calibration_inputs():
    from secateurs.observers import HessianObserver

    torch.manual_seed(0)
    x = torch.randn(300, 16)
    weight = torch.randn(8, 16)
    pruned = weight * (torch.rand(8, 16) > 0.5)
    exact = float(torch.linalg.norm(x @ (weight - pruned).t()) / torch.linalg.norm(x @ weight.t()))
    hessian = HessianObserver(16)
    hessian.update(x)
    assert abs(hessian.relative_error(weight, pruned) - exact) < 1e-4
    norms = InputNormObserver(16)
    norms.update(x)  # 300 rows: every row kept up to 256, evenly spread
    assert norms.sample.shape == (256, 16) and abs(norms.relative_error(weight, pruned) - exact) < 0.1


def test_reports_carry_reconstruction_errors(calibration):
    from tiny_models import tiny_model

    from secateurs import load_recipe, prune

    report = prune(tiny_model("llama"), load_recipe({"method": "sparsegpt"}), calibration, progress=False)
    wanda = prune(tiny_model("llama"), load_recipe({"method": "wanda"}), calibration, progress=False)
    assert all(0 < layer.reconstruction_error < 1 for layer in report.layers + wanda.layers)


def test_ria_zeros_exactly_half_of_every_row_of_every_layer(calibration):
    """RIA compares within each output row (as Wanda): every row of every pruned layer loses exactly half its
    weights, and the report's sparsity is the one the weights have."""
    from tiny_models import tiny_model

    from secateurs import load_recipe, prune
    from secateurs.models import find_blocks, find_targets

    model = tiny_model("mistral")
    report = prune(model, load_recipe({"method": "ria"}), calibration, progress=False)
    name, blocks = find_blocks(model)
    targets = [t for i, block in enumerate(blocks) for t in find_targets(block, f"{name}.{i}")]
    assert len(targets) == len(report.layers) == 2 * 7
    zeros = total = 0
    for target, layer in zip(targets, report.layers, strict=True):
        weight = target.weight()
        rows, columns = weight.shape
        assert torch.equal((weight == 0).sum(1), torch.full((rows,), columns // 2)), target.name
        assert layer.name == target.name and layer.sparsity == 0.5
        zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
    assert zeros == total // 2 and report.sparsity == 0.5 == zeros / total
