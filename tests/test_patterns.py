import pytest
import torch

from secateurs.errors import RecipeError
from secateurs.patterns import (
    NMPattern,
    is_nm_sparse,
    kth_smallest,
    lowest_mask,
    nm_mask,
    parse_pattern,
    unstructured_mask,
)


@pytest.mark.parametrize(
    "text,expected",
    [("2:4", NMPattern(2, 4)), ("4:8", NMPattern(4, 8)), (" 1 : 3 ", NMPattern(1, 3)), ("unstructured", None)],
)
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["4:2", "0:4", "4:4", "a:b", "2-4", "", "2:4:8"])
def test_bad_pattern_names_the_fix(text):
    with pytest.raises(RecipeError, match="2:4"):
        parse_pattern(text)


def test_per_row_removes_exactly_the_lowest_in_each_row():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0], [10.0, 20.0, 30.0, 40.0]])
    mask = unstructured_mask(score, 0.5, per_row=True)
    assert mask.tolist() == [[True, False, True, False], [False, False, True, True]]


def test_per_layer_compares_across_rows():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0], [10.0, 20.0, 30.0, 40.0]])
    mask = unstructured_mask(score, 0.5, per_row=False)
    assert mask.tolist() == [[False, False, False, False], [True, True, True, True]]


@pytest.mark.parametrize("per_row", [True, False])
def test_exact_count_even_with_ties(per_row):
    score = torch.ones(16, 64)  # every score tied
    mask = unstructured_mask(score, 0.3, per_row)
    assert int((~mask).sum()) == int(16 * 64 * 0.3)  # the layer's count is exact at any sparsity
    if per_row:  # rows lose 19 or 20 (19.2 on average), the first rows the extra one
        assert (~mask).sum(1).tolist() == [20] * 3 + [19] * 13


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_keeps_the_n_largest_of_every_group(n, m):
    torch.manual_seed(0)
    score = torch.rand(8, 4 * m)
    mask = nm_mask(score, NMPattern(n, m))
    groups_mask = mask.view(8, 4, m)
    assert (groups_mask.sum(-1) == n).all()
    groups = score.view(8, 4, m)
    kept_min = torch.where(groups_mask, groups, torch.inf).amin(-1)
    dropped_max = torch.where(groups_mask, -torch.inf, groups).amax(-1)
    assert (kept_min > dropped_max).all()
    assert is_nm_sparse(score * mask, NMPattern(n, m))
    assert not is_nm_sparse(score, NMPattern(n, m))


def test_nm_with_ties_still_exact():
    mask = nm_mask(torch.zeros(3, 8), NMPattern(2, 4))
    assert (mask.view(3, 2, 4).sum(-1) == 2).all()


def test_nm_rejects_widths_not_divisible_by_m():
    with pytest.raises(RecipeError, match="--ignore"):
        nm_mask(torch.rand(4, 6), NMPattern(2, 4))


@pytest.mark.parametrize("dim", [None, 1])
def test_lowest_mask_equals_a_stable_sort_with_many_ties(dim):
    generator = torch.Generator().manual_seed(0)
    score = torch.randint(0, 5, (7, 40), generator=generator).float()  # ties everywhere
    for k in (0, 1, 13, 39):
        mask = lowest_mask(score, k, dim)
        if dim is None:
            order = torch.sort(score.flatten(), stable=True).indices[:k]
            expected = torch.ones(score.numel(), dtype=torch.bool)
            expected[order] = False
            expected = expected.view_as(score)
        else:
            order = torch.sort(score, dim=1, stable=True).indices[:, :k]
            expected = torch.ones_like(score, dtype=torch.bool).scatter_(1, order, False)
        assert torch.equal(mask, expected), k


def _layouts(total: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    periodic = torch.zeros(total)
    periodic[:: total // 4096] = -1.0  # exactly what the strided sample sees: a sample far from the whole
    return {
        "normal": torch.randn(total, generator=generator),
        "ties": torch.randint(0, 7, (total,), generator=generator).float(),
        "sorted": torch.arange(total, dtype=torch.float32),
        "periodic": periodic,
    }


@pytest.mark.parametrize("layout", ["normal", "ties", "sorted", "periodic"])
def test_kth_smallest_is_kthvalue_on_a_whole_layer(layout):
    values = _layouts(300_001)[layout]
    for k in (1, 2, 1000, 150_000, 299_999, 300_001):
        assert kth_smallest(values, k) == torch.kthvalue(values, k).values, k


def test_whole_layer_mask_keeps_the_stable_sort_order_on_a_large_layer():
    score = torch.randint(0, 50, (300, 700), generator=torch.Generator().manual_seed(2)).float()
    k = 105_000
    order = torch.sort(score.flatten(), stable=True).indices[:k]
    expected = torch.ones(score.numel(), dtype=torch.bool)
    expected[order] = False
    assert torch.equal(lowest_mask(score, k), expected.view_as(score))
