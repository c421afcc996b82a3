"""Sweeps: the grid, the files they write, and resuming without recomputing finished points."""

import json

import pytest
from PIL import Image

import secateurs.sweep as sweep_module
from secateurs import Calibration, Evaluation, calibration_windows, evaluation_ids, load, load_corpus, prune
from secateurs.cli import main
from secateurs.errors import OutputError, RecipeError
from secateurs.evaluate import perplexity
from secateurs.sweep import SweepJob, SweepPoint, run_sweep, sweep_figure, sweep_grid


@pytest.fixture
def eval_text(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    return path


def _sweep(tiny_folder, out, eval_text, methods=("magnitude", "wanda"), sparsities=(0.3, 0.5), nsamples=4, **options):  # noqa: ANN001, ANN202
    job = SweepJob(
        model=str(tiny_folder),
        out=out,
        methods=tuple(methods),
        sparsities=tuple(sparsities),
        patterns=("unstructured", "2:4"),
        evaluation=Evaluation(str(eval_text), seqlen=64, windows=2),
        calibration=Calibration("builtin", nsamples=nsamples, seqlen=32),
        device="cpu",
        progress=False,
        **options,
    )
    return run_sweep(job)


def test_grid_gives_nm_patterns_their_own_sparsity():
    grid = sweep_grid(["wanda", "sparsegpt"], [0.3, 0.5, 0.5], ["unstructured", "2:4", "4:8"])
    assert grid[:4] == [
        SweepPoint("wanda", "unstructured", 0.3),
        SweepPoint("wanda", "unstructured", 0.5),
        SweepPoint("wanda", "2:4", 0.5),
        SweepPoint("wanda", "4:8", 0.5),
    ]
    assert len(grid) == 8
    with pytest.raises(RecipeError, match="give --sparsities"):
        sweep_grid(["wanda"], [], ["unstructured"])
    with pytest.raises(RecipeError):
        sweep_grid(["wanda"], [0.5], ["3:2"])


def test_sweep_writes_json_markdown_and_plot(tiny_folder, tmp_path, eval_text, capsys):
    out = tmp_path / "sweep"
    arguments = ["sweep", str(tiny_folder), "--methods", "magnitude,wanda,sparsegpt", "--sparsities", "0.3,0.5"]
    arguments += ["--patterns", "unstructured,2:4", "--eval", str(eval_text), "--eval-seqlen", "64"]
    arguments += ["--eval-windows", "2", "--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--out", str(out)]
    assert main([*arguments, "--quiet", "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    state = json.loads((out / "sweep.json").read_text())
    assert len(state["points"]) == len(printed["points"]) == 9  # 3 methods x (2 sparsities + 2:4)
    assert sum(point["pattern"] == "2:4" for point in state["points"]) == 3
    for point in state["points"]:
        assert point["perplexity"] > 0 and point["achieved_sparsity"] == pytest.approx(point["sparsity"], abs=0.02)
    assert state["dense"]["perplexity"] == pytest.approx(printed["dense_perplexity"])

    # every point starts from the dense weights: the 8th point equals the same pruning done alone
    model, tokenizer = load(tiny_folder, "float32")
    point = state["points"][7]
    assert (point["method"], point["sparsity"]) == ("sparsegpt", 0.5)
    windows = calibration_windows(load_corpus("builtin"), tokenizer, 4, 32, 0)
    prune(model, {"method": "sparsegpt", "sparsity": 0.5}, windows, device="cpu", progress=False)
    alone = perplexity(model, evaluation_ids(str(eval_text), tokenizer, 64), 64, 2, device="cpu", progress=False)
    assert point["perplexity"] == pytest.approx(alone, rel=1e-6)

    markdown = (out / "sweep.md").read_text()
    assert "](sweep.png)" in markdown and markdown.count("| sparsegpt |") == 3 and "| dense |" in markdown
    with Image.open(out / "sweep.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
        image.verify()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_interrupted_sweep_resumes_without_recomputing(tiny_folder, tmp_path, eval_text, monkeypatch):
    out = tmp_path / "sweep"
    calls: list[str] = []
    real_prune = sweep_module.prune

    def counting_prune(model, recipe, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(f"{recipe.method.name} {recipe.pattern} {recipe.sparsity}")
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real_prune(model, recipe, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "prune", counting_prune)
    fail_at = 3
    with pytest.raises(KeyboardInterrupt):
        _sweep(tiny_folder, out, eval_text)
    first = json.loads((out / "sweep.json").read_text())
    assert len(first["points"]) == 2 and first["dense"] is not None

    calls.clear()
    fail_at = None
    state = _sweep(tiny_folder, out, eval_text)
    assert len(calls) == 4 and len(state["points"]) == 6  # 2 methods x (2 sparsities + 2:4), 2 already done
    assert state["points"][:2] == first["points"][:2] and state["dense"] == first["dense"]

    calls.clear()
    monkeypatch.setattr(sweep_module, "load", lambda *a, **k: pytest.fail("a finished sweep loads no model"))
    assert _sweep(tiny_folder, out, eval_text)["points"] == state["points"]
    assert calls == []

    monkeypatch.undo()
    monkeypatch.setattr(sweep_module, "prune", counting_prune)
    more = _sweep(tiny_folder, out, eval_text, sparsities=(0.3, 0.5, 0.7))  # a wider grid adds only its new points
    assert calls == ["magnitude unstructured 0.7", "wanda unstructured 0.7"] and len(more["points"]) == 8


def test_other_settings_are_refused_unless_overwrite(tiny_folder, tmp_path, eval_text):
    out = tmp_path / "sweep"
    _sweep(tiny_folder, out, eval_text, methods=("magnitude",), sparsities=(0.5,))
    with pytest.raises(OutputError, match=r"other settings \(nsamples 4 -> 8\).*--overwrite"):
        _sweep(tiny_folder, out, eval_text, methods=("magnitude",), sparsities=(0.5,), nsamples=8)
    state = _sweep(tiny_folder, out, eval_text, methods=("magnitude",), sparsities=(0.5,), nsamples=8, overwrite=True)
    assert state["settings"]["nsamples"] == 8 and len(state["points"]) == 2

    (out / "sweep.json").write_text("{not json")
    with pytest.raises(OutputError, match="not a readable sweep"):
        _sweep(tiny_folder, out, eval_text, methods=("magnitude",), sparsities=(0.5,))
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        _sweep(tiny_folder, tmp_path / "file", eval_text)


def _state(perplexities: dict[tuple[str, str, float], float], dense: float) -> dict:
    points = [{"method": m, "pattern": p, "sparsity": s, "perplexity": v} for (m, p, s), v in perplexities.items()]
    settings = {"model": "/models/tiny", "eval": "wikitext2"}
    return {"settings": settings, "dense": {"perplexity": dense}, "points": points}


def test_plot_uses_a_log_scale_over_a_tenfold_range_and_marks_nm_points():
    wide = _state({("wanda", "unstructured", 0.5): 30.0, ("wanda", "unstructured", 0.7): 900.0}, 20.0)
    axes = sweep_figure(wide).axes[0]
    assert axes.get_yscale() == "log"
    narrow = _state(
        {("wanda", "unstructured", 0.5): 30.0, ("wanda", "2:4", 0.5): 60.0, ("magnitude", "2:4", 0.5): 1.5e2}, 20.0
    )
    axes = sweep_figure(narrow).axes[0]
    assert axes.get_yscale() == "linear"
    markers = {line.get_label(): line.get_marker() for line in axes.get_lines()}
    assert markers["wanda"] == "o" and markers["wanda 2:4"] == markers["magnitude 2:4"] == "*"
