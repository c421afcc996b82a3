import torch

from secateurs.methods import get_method, magnitude, wanda
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
    assert get_method("wanda").per_row and get_method("wanda").needs_inputs
    assert not get_method("magnitude").per_row and not get_method("magnitude").needs_inputs
