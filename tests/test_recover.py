"""Recovery and training-time pruning: LoRA that keeps the zeros, gradual, movement and iterative pruning,
checkpoints and resume."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from secateurs import Report
from secateurs.cli import main
from secateurs.patterns import NMPattern, is_nm_sparse
from secateurs.recover import movement
from secateurs.recover.schedule import CubicSchedule

FAST = ["--data", "builtin", "--seqlen", "32", "--batch-size", "2", "--quiet", "--device", "cpu"]
PRUNE_FAST = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]


def _blocks(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    return {k: v for k, v in model.state_dict().items() if ".layers." in k and k.endswith("proj.weight")}


def test_cubic_schedule_of_zhu_and_gupta():
    schedule = CubicSchedule(final=0.8, start=10, end=50, every=10)
    assert schedule.milestones() == [10, 20, 30, 40, 50]
    assert schedule.sparsity(0) == 0 and schedule.sparsity(10) == 0 and schedule.sparsity(50) == pytest.approx(0.8)
    assert schedule.sparsity(30) == pytest.approx(0.8 + (0 - 0.8) * (1 - 20 / 40) ** 3)
    assert schedule.sparsity(35) == schedule.sparsity(30)  # held between updates
    values = [schedule.sparsity(step) for step in schedule.milestones()]
    assert values == sorted(values)
    gaps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert gaps == sorted(gaps, reverse=True)  # fast at first, slow at the end
    assert [s for s in range(60) if schedule.updates_at(s)] == schedule.milestones()


def test_movement_scores_follow_their_formula():
    weight = torch.tensor([[0.5, -1.0], [2.0, 0.1]])
    gradient = torch.tensor([[-1.0, -0.5], [0.2, 0.3]])
    scores = torch.zeros(2, 2)
    movement.accumulate(scores, weight, gradient)
    movement.accumulate(scores, weight, gradient)
    torch.testing.assert_close(scores, -2 * weight * gradient)
    # a weight moving away from zero (w > 0, gradient < 0) gains; one moving toward zero loses
    assert scores[0, 0] > 0 and scores[1, 1] < 0


def test_lora_recovers_and_keeps_every_zero(tiny_folder, tmp_path, capsys):
    pruned, tuned = tmp_path / "pruned", tmp_path / "tuned"
    assert main(["prune", str(tiny_folder), "--pattern", "2:4", "--out", str(pruned), *PRUNE_FAST]) == 0
    args = ["finetune", str(pruned), "--out", str(tuned), "--steps", "40", "--lr", "3e-3", "--lora-rank", "4"]
    assert main([*args, *FAST]) == 0
    report = Report.read(tuned / "secateurs.json")
    losses = report.training.losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # training lowers the loss
    before, after = _blocks(pruned), _blocks(tuned)
    changed = 0
    for name, weight in before.items():
        assert torch.equal(after[name][weight == 0], weight[weight == 0]), name  # every pruned weight still zero
        assert is_nm_sparse(after[name], NMPattern(2, 4)), name
        changed += int((after[name] != weight).sum())
    assert changed > 0 and report.sparsity == pytest.approx(0.5)
    assert (tuned / "loss_curve.png").is_file() and "loss_curve.png" in (tuned / "report.md").read_text()


def test_gradual_pruning_hits_its_sparsity_at_every_milestone(tiny_folder, tmp_path):
    out = tmp_path / "gradual"
    args = ["train-prune", str(tiny_folder), "--final-sparsity", "0.6", "--steps", "16", "--prune-every", "3"]
    assert main([*args, "--out", str(out), *FAST]) == 0
    report = Report.read(out / "secateurs.json")
    schedule = CubicSchedule(final=0.6, start=0, end=12, every=3)
    assert [m.step for m in report.training.milestones] == schedule.milestones()
    for milestone in report.training.milestones:
        assert milestone.sparsity == pytest.approx(schedule.sparsity(milestone.step), abs=0.002)
    assert report.sparsity == pytest.approx(0.6, abs=0.002)
    weights = _blocks(out)
    assert sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values()) > 0.59


@pytest.mark.parametrize("options", [["--method", "movement"], ["--schedule", "iterative", "--method", "wanda"]])
def test_movement_and_iterative_reach_the_final_sparsity(tiny_folder, tmp_path, options):
    out = tmp_path / "out"
    args = ["train-prune", str(tiny_folder), "--final-sparsity", "0.5", "--steps", "12", "--rounds", "2", *options]
    assert main([*args, "--out", str(out), *FAST]) == 0
    report = Report.read(out / "secateurs.json")
    assert report.sparsity == 0.5  # every layer has an even size: exactly half of them all
    assert len(report.training.milestones) >= 2 and report.training.milestones[-1].sparsity == 0.5
    # the saved weights, read back: every layer lost exactly int(numel * 0.5) weights (magnitude_masks' and the
    # one-shot methods' rule), and the report's layers say what the weights say
    weights = _blocks(out)
    assert len(weights) == len(report.layers) == 2 * 7
    for name, weight in weights.items():
        assert int((weight == 0).sum()) == int(weight.numel() * 0.5), name
    assert {layer.name + ".weight": layer.sparsity for layer in report.layers} == dict.fromkeys(weights, 0.5)
    if "wanda" in options:  # the last round is a one-shot Wanda: compared within rows, each row loses half
        for name, weight in weights.items():
            assert torch.equal((weight == 0).sum(1), torch.full((weight.shape[0],), weight.shape[1] // 2)), name


def test_training_resumes_where_it_stopped(tiny_folder, tmp_path, capsys, monkeypatch):
    import secateurs.recover.rules as rules

    args = ["train-prune", str(tiny_folder), "--steps", "12", "--prune-every", "2", "--checkpoint-every", "4", *FAST]
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole)]) == 0

    real = rules.HoldMasks.after_step

    def interrupt(self, step):
        real(self, step)
        if step == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(rules.HoldMasks, "after_step", interrupt)
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 130
    assert "checkpoint at step 8 is saved" in capsys.readouterr().err
    monkeypatch.setattr(rules.HoldMasks, "after_step", real)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    a, b = _blocks(whole), _blocks(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert Report.read(out / "secateurs.json").training.losses == pytest.approx(
        Report.read(whole / "secateurs.json").training.losses, rel=1e-5
    )


def test_finetune_resumes_where_it_stopped(tiny_folder, tmp_path, capsys, monkeypatch):
    """LoRA recovery interrupted at step 9 goes on from its step-8 checkpoint with --resume: the adapters, the
    optimizer's moments, the learning-rate schedule and the random state come back, so the result is bit-identical
    to an uninterrupted run, with every pruned weight still zero."""
    import json

    from secateurs.recover import training_folder
    from secateurs.recover.train import NoRule

    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_folder), "--pattern", "2:4", "--out", str(pruned), *PRUNE_FAST]) == 0
    args = ["finetune", str(pruned), "--steps", "12", "--checkpoint-every", "4", "--lr", "3e-3", "--lora-rank", "4"]
    whole, out = tmp_path / "whole", tmp_path / "out"
    torch.manual_seed(0)  # the adapters' initial values come from torch's global generator
    assert main([*args, "--out", str(whole), *FAST]) == 0

    real = NoRule.after_step

    def interrupt(self, step):
        real(self, step)
        if step == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(NoRule, "after_step", interrupt)
    torch.manual_seed(0)
    assert main([*args, "--out", str(out), *FAST]) == 130
    assert "a checkpoint at step 8 is saved: run the same command with --resume" in capsys.readouterr().err
    assert not out.exists()
    state = json.loads((training_folder(out) / "train-state.json").read_text())
    assert state["step"] == 8 and len(state["losses"]) == 8
    monkeypatch.setattr(NoRule, "after_step", real)

    torch.manual_seed(1234)  # another global state: what the resumed run needs is in the checkpoint
    assert main([*args, "--out", str(out), *FAST, "--resume"]) == 0
    assert not training_folder(out).exists()  # removed once the output is written
    expected, resumed = Report.read(whole / "secateurs.json"), Report.read(out / "secateurs.json")
    assert len(resumed.training.losses) == 12
    assert resumed.training.losses == expected.training.losses
    assert resumed.training.losses[:8] == state["losses"]
    a, b = _blocks(whole), _blocks(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = _blocks(pruned)
    assert any(not torch.equal(b[k], before[k]) for k in b)  # the resumed run did train
    for name, weight in before.items():
        assert torch.equal(b[name] == 0, weight == 0), name  # the same zeros, no more and no fewer
        assert is_nm_sparse(b[name], NMPattern(2, 4)), name
    assert resumed.sparsity == expected.sparsity == 0.5
