"""Two processes (torch.distributed, gloo) share the calibration set and derive the masks of one process."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from secateurs.cli import main
from secateurs.pipeline.distributed import Ranks, without_workers

FAST = ["--calib", "builtin", "--nsamples", "8", "--seqlen", "32", "--quiet", "--device", "cpu"]


def _masks(folder):
    return {k: v == 0 for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}


@pytest.mark.parametrize(
    "recipe,agreement",
    [
        (["--method", "wanda"], 1.0),  # norms are accumulated in float64: the same masks
        (["--method", "wanda", "--allocation", "owl"], 1.0),
        (["--method", "sparsegpt"], 0.999),  # float32 Hessians summed in another order may flip a near-tie
        (["--method", "sparsegpt", "--batch-size", "2"], 0.999),  # each rank's batches in lockstep
    ],
)
def test_two_processes_give_the_masks_of_one(tiny_folder, tmp_path, recipe, agreement):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["prune", str(tiny_folder), "--out", str(one), *FAST, *recipe]) == 0
    assert main(["prune", str(tiny_folder), "--out", str(two), *FAST, *recipe, "--workers", "2"]) == 0
    a, b = _masks(one), _masks(two)
    same = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].numel() for k in a)
    assert same >= agreement, same
    report = json.loads((two / "secateurs.json").read_text())
    assert report["ranks"] == 2 and len(report["peak_rss_mib_per_rank"]) == 2
    assert not (tmp_path / ".two.state").exists()


def test_shares_cover_the_calibration_once():
    calibration = torch.arange(10).unsqueeze(1)
    shares = [Ranks(rank, 3).share(calibration) for rank in range(3)]
    assert torch.equal(torch.cat(shares), calibration) and [len(s) for s in shares] == [3, 3, 4]


def test_workers_argument_is_removed_for_the_relaunch():
    assert without_workers(["prune", "m", "--workers", "2", "--out", "o"]) == ["prune", "m", "--out", "o"]
    assert without_workers(["prune", "m", "--workers=2"]) == ["prune", "m"]
