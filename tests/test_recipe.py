import pytest

from secateurs import Recipe
from secateurs.errors import RecipeError


def test_nm_pattern_implies_sparsity():
    assert Recipe("wanda", pattern="2:4").target_sparsity == 0.5
    assert Recipe("wanda", pattern="1:4").target_sparsity == 0.75
    assert Recipe("wanda", sparsity=0.5, pattern="4:8").target_sparsity == 0.5
    assert Recipe("magnitude").target_sparsity == 0.5


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, float("nan"), "0.5", True])
def test_sparsity_outside_range_or_not_a_number(sparsity):
    with pytest.raises(RecipeError, match="sparsity"):
        Recipe("wanda", sparsity=sparsity)


def test_contradicting_sparsity_and_pattern():
    with pytest.raises(RecipeError, match="drop --sparsity"):
        Recipe("wanda", sparsity=0.6, pattern="2:4")


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(RecipeError, match="magnitude, ria, sparsegpt, wanda"):
        Recipe("sparsgpt")
