"""A new one-shot method is one file: a configuration class with its score, registered by name. This module is
that file for a toy method (keep the smallest weights of each row, the opposite of magnitude pruning) and prunes
a tiny model with it through the command line, changing nothing else."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from secateurs.cli import main
from secateurs.methods import METHODS, NORMS, ScoreMethod, register_method


@dataclass(frozen=True)
class KeepSmallest(ScoreMethod):
    """Keeps the ``1 - sparsity`` smallest |W| of every row; reads the calibration (its input norms), unused."""

    name: ClassVar[str] = "keep-smallest"
    statistics: ClassVar[str | None] = NORMS
    per_row: ClassVar[bool] = True

    def score(self, weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
        assert input_sum_squares is not None  # the walk gave it the statistics it asked for
        return -weight.abs()


@pytest.fixture
def registered():
    register_method(KeepSmallest)
    yield KeepSmallest
    METHODS.pop(KeepSmallest.name)


def test_a_registered_method_prunes_through_the_command_line(registered, tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prune", str(tiny_folder), "--method", "keep-smallest", "--sparsity", "0.75", "--out", str(out)]
    assert main([*args, "--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--json"]) == 0
    dense = load_file(str(tiny_folder / "model.safetensors"))
    pruned = load_file(str(out / "model.safetensors"))
    checked = 0
    for name, weight in pruned.items():
        if ".layers." not in name or not name.endswith("proj.weight"):
            continue
        original = dense[name]
        kept = weight != 0
        assert torch.equal(weight[kept], original[kept])  # a score method only masks
        per_row = original.shape[1] - int(original.shape[1] * 0.75)
        assert (kept.sum(1) == per_row).all()
        # every kept weight is no larger than every removed one, row by row
        largest_kept = original.abs().masked_fill(~kept, 0).amax(1)
        smallest_removed = original.abs().masked_fill(kept, float("inf")).amin(1)
        assert (largest_kept <= smallest_removed).all()
        checked += 1
    assert checked == 14  # 7 Linears in each of the 2 blocks
    assert '"method": {\n      "name": "keep-smallest"' in (out / "secateurs.json").read_text()
