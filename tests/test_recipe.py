import pytest

from secateurs import load_recipe
from secateurs.errors import RecipeError


def test_nm_pattern_implies_sparsity():
    assert load_recipe({"method": "wanda", "pattern": "2:4"}).target_sparsity == 0.5
    assert load_recipe({"method": "wanda", "pattern": "1:4"}).target_sparsity == 0.75
    assert load_recipe({"method": "wanda", "sparsity": 0.5, "pattern": "4:8"}).target_sparsity == 0.5
    assert load_recipe({"method": "magnitude"}).target_sparsity == 0.5


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, float("nan"), "0.5", True])
def test_sparsity_outside_range_or_not_a_number(sparsity):
    with pytest.raises(RecipeError, match="sparsity"):
        load_recipe({"method": "wanda", "sparsity": sparsity})


def test_contradicting_sparsity_and_pattern():
    # library errors name the recipe field (the CLI names the flag: "drop --sparsity")
    with pytest.raises(RecipeError, match="drop sparsity"):
        load_recipe({"method": "wanda", "sparsity": 0.6, "pattern": "2:4"})


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(RecipeError, match="magnitude, ria, sparsegpt, wanda"):
        load_recipe({"method": "sparsgpt"})
