"""bench/run.py and bench/verdict.py: one run's rows, verdicts that hold in every round or say inconclusive, and
a refusal to compare rows of different runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from verdict import Target, judge, ratios, verdict  # noqa: E402


def _row(name: str, number: int, run_id: str = "r1", **figures: object) -> dict:
    return {"run_id": run_id, "name": name, "round": number, **figures}


def test_a_verdict_needs_every_round():
    assert verdict([0.70, 0.72, 0.74], 0.75) == "met"
    assert verdict([0.76, 0.80, 0.78], 0.75) == "not met"
    assert verdict([0.70, 0.76, 0.74], 0.75) == "inconclusive"  # one round over: the noise decides
    assert verdict([0.75], 0.75) == "met"


def test_ratios_pair_rows_of_the_same_round():
    target = Target("time", "ours", "prune_s", "peer", 0.5)
    rows = [_row("ours", 0, prune_s=10.0), _row("peer", 0, prune_s=40.0), _row("ours", 1, prune_s=12.0)]
    rows += [_row("peer", 1, prune_s=20.0), _row("peer", 2, prune_s=5.0)]  # round 2 has no row of ours
    assert ratios(target, rows, {}) == [0.25, 0.6]
    (line,) = judge([target], rows, {})
    assert line["verdict"] == "inconclusive" and line["ratio"]["median"] == pytest.approx(0.425)


def test_a_floor_counts_the_walks_passes_at_the_walks_batch():
    target = Target("floor", "ours", "prune_s", "floor-batch4", 1.15, other_figure="one_pass_s", passes=True)
    walk = {"batch_size": 4, "passes_per_block": 2}
    rows = [_row("ours", 0, prune_s=230.0, walk=walk), _row("floor-batch4", 0, one_pass_s=100.0, batch_size=4)]
    assert ratios(target, rows, {}) == [1.15]
    rows[1]["batch_size"] = 16  # a floor at another batch size is not the same measurement
    assert ratios(target, rows, {}) == []


def test_a_speedup_is_judged_as_its_share_of_the_ideal_gain():
    # ideal 1.25x (a fifth of the weights gone); 1.22x reaches 88% of the gain, 1.18x only 72%
    target = Target("decode", "cut", "decode_tokens_per_s", "dense", 0.8, bound="at least", ideal="ideal")
    rows = [_row("dense", n, decode_tokens_per_s=100.0) for n in range(3)]
    rows += [_row("cut", n, decode_tokens_per_s=tps, ideal=1.25) for n, tps in enumerate((122.0, 121.0, 123.0))]
    assert ratios(target, rows, {}) == pytest.approx([0.88, 0.84, 0.92])
    assert judge([target], rows, {})[0]["verdict"] == "met"
    rows[3]["decode_tokens_per_s"] = 118.0
    (line,) = judge([target], rows, {})
    assert line["verdict"] == "inconclusive" and line["limit_text"] == ">= 0.8"
    assert verdict([0.5, 0.7], 0.8, "at least") == "not met"


def test_a_size_within_two_percent_of_its_parameter_ratio():
    target = Target("size", "cut", "file_bytes", "dense", 0.02, bound="within", per="parameter_ratio")
    rows = [_row("dense", 0, file_bytes=1000), _row("cut", 0, file_bytes=790, parameter_ratio=0.8)]
    (line,) = judge([target], rows, {})
    assert line["ratio"]["median"] == pytest.approx(0.9875) and line["verdict"] == "met"
    rows[1]["file_bytes"] = 760  # 0.95 of the parameter ratio: 5% off
    assert judge([target], rows, {})[0]["verdict"] == "not met"
    assert verdict([0.97, 1.01], 0.02, "within") == "inconclusive"
    with pytest.raises(ValueError, match="unknown bound"):
        verdict([1.0], 0.1, "about")


def test_quality_is_one_ratio_of_the_first_rounds_perplexities():
    target = Target("ppl", "ours", "ppl", "peer", 1.0)
    quality = {"ours": {"ppl": 44.0}, "peer": {"ppl": 45.0}}
    (line,) = judge([target], [_row("ours", 0), _row("peer", 0)], quality)
    assert line["verdict"] == "met" and line["ratio"]["n"] == 1


def test_the_second_texts_perplexity_is_judged_by_its_own_target():
    """A recipe's gain must hold on held-out C4 too: that target reads ``ppl_c4``, not WikiText-2's ``ppl``."""
    targets = [Target("wiki", "ours", "ppl", "peer", 0.8), Target("c4", "ours", "ppl_c4", "peer", 0.85)]
    quality = {"ours": {"ppl": 36.0, "ppl_c4": 40.0}, "peer": {"ppl": 46.0, "ppl_c4": 44.0}}
    wiki, c4 = judge(targets, [_row("ours", 0), _row("peer", 0)], quality)
    assert wiki["verdict"] == "met" and c4["verdict"] == "not met"
    assert c4["ratio"]["median"] == pytest.approx(40 / 44)


def test_rows_of_two_runs_are_never_compared():
    target = Target("time", "ours", "prune_s", "peer", 0.5)
    rows = [_row("ours", 0, prune_s=1.0), _row("peer", 0, "r2", prune_s=4.0)]
    with pytest.raises(ValueError, match="several runs"):
        judge([target], rows, {})


class _Toy:
    """A protocol whose configurations cost nothing: 'fast' must take at most half of 'slow''s time."""

    targets = [Target("fast / slow", "fast", "prune_s", "slow", 0.5)]
    facts = {"model": "toy"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def selection(self, only: list[str] | None) -> list[str]:
        return ["fast", "slow"]

    def prepare(self) -> None:
        pass

    def measure(self, name: str, evaluate: bool) -> dict:
        self.calls.append((name, evaluate))
        seconds = {"fast": 1.0, "slow": 3.0}[name]
        figures = {"tool": name, "prune_s": seconds, "weights_sha256": name}
        return {**figures, "ppl": 10.0, "ppl_c4": 12.0} if evaluate else figures  # as bench/q_cpu.py's steps


def test_a_run_interleaves_rounds_and_writes_one_file(tmp_path, monkeypatch, capsys):
    import protocols

    toy = _Toy()
    monkeypatch.setitem(protocols.PROTOCOLS, "toy", lambda: toy)
    out = tmp_path / "run.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "toy", "--rounds", "3", "--out", str(out)])
    run.main()
    results = json.loads(out.read_text())
    assert results["complete"] and results["protocol"] == "toy" and results["model"] == "toy"
    assert {"host", "commit", "clean", "command", "start", "end"} <= results.keys()
    assert [name for name, _ in toy.calls] == ["fast", "slow", "slow", "fast", "fast", "slow"]  # rotated rounds
    assert [evaluate for _, evaluate in toy.calls] == [True, True, False, False, False, False]
    assert all(row["same_weights"] for row in results["rows"] if row["round"] > 0)
    assert len({row["run_id"] for row in results["rows"]}) == 1
    assert results["quality"]["fast"] == {"ppl": 10.0, "ppl_c4": 12.0, "weights_sha256": "fast"}
    (line,) = results["verdicts"]
    assert line["verdict"] == "met" and line["ratio"]["max"] == pytest.approx(1 / 3)
    assert "fast / slow: 0.333 [0.333, 0.333] against <= 0.5: met" in capsys.readouterr().out


def test_timings_need_three_rounds(monkeypatch):
    import protocols

    monkeypatch.setitem(protocols.PROTOCOLS, "toy", _Toy)
    monkeypatch.setattr(sys, "argv", ["run.py", "toy", "--rounds", "2"])
    with pytest.raises(SystemExit, match="at least 3 rounds"):
        run.main()


def test_rejudging_a_run_derives_the_same_verdicts_from_its_rows(tmp_path, monkeypatch):
    import protocols

    monkeypatch.setitem(protocols.PROTOCOLS, "toy", _Toy)
    out = tmp_path / "run.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "toy", "--out", str(out)])
    run.main()
    measured = json.loads(out.read_text())
    out.write_text(json.dumps({**measured, "quality": {}, "verdicts": []}))
    again = run.rejudge(out)
    assert again["verdicts"] == measured["verdicts"] and again["quality"] == measured["quality"]
    assert again["rows"] == measured["rows"] and "rejudged" in json.loads(out.read_text())


def _cut_rows(run_id: str = "r1") -> list[dict]:
    """Three rounds of a dense file and a cut with a fifth of the blocks' weights gone (ideal 1.25x)."""
    common = {"tool": "llama.cpp", "versions": {"llama_cpp_python": "0.3.36", "secateurs": "0.1.0"}}
    fixed = {
        "dense@f32": {"prompt_tokens_per_s": 800.0, "file_bytes": 1000, "parameter_ratio": 1.0},
        "cut@f32": {"prompt_tokens_per_s": 990.0, "file_bytes": 805, "parameter_ratio": 0.8},
    }
    ideals = {"dense@f32": (1.0, 1.0), "cut@f32": (1.25, 1.19)}
    rows = []
    for number, speeds in enumerate(((80.0, 98.0), (84.0, 101.0), (78.0, 97.0))):
        for name, speed in zip(fixed, speeds, strict=True):
            blocks, matmul = ideals[name]
            figures = {"decode_tokens_per_s": speed, "ideal_speedup_blocks": blocks, "ideal_speedup_matmul": matmul}
            rows.append(_row(name, number, run_id, **figures, **fixed[name], **common))
    return rows


def test_a_runs_host_names_the_cpus_generation_and_instruction_sets():
    """Two hosts both called "AMD EPYC" (one with AVX-512 bfloat16 units, one with AVX2 only) time bfloat16
    tuning 2x apart: the host record tells them apart, and the tables say which one ran."""
    import run_tables

    from secateurs.report.facts import cpu_detail

    zen3 = {"model name": "AMD EPYC", "cpu family": "25", "model": "1", "stepping": "1", "flags": "fpu avx avx2 fma"}
    zen4 = {**zen3, "model": "17", "flags": "avx2 avx512f avx512bw avx512_bf16"}
    assert cpu_detail(zen3) == {"cpu_id": "cpu family 25, model 1, stepping 1", "cpu_features": ["avx2"]}
    assert cpu_detail(zen4)["cpu_features"] == ["avx2", "avx512f", "avx512_bf16"]
    host = {"cpu": "AMD EPYC", **cpu_detail(zen4)}
    assert run_tables.cpu(host) == "AMD EPYC (cpu family 25, model 17, stepping 1; avx2 avx512f avx512_bf16)"
    assert run_tables.cpu({"cpu": "AMD EPYC"}) == "AMD EPYC"  # a run recorded before the detail was
    # ARM has no model name or family: its core is named by implementer and part
    neoverse = {"Features": "fp asimd evtstrm aes", "CPU implementer": "0x41", "CPU part": "0xd0c"}
    arm = {"cpu": "aarch64", **cpu_detail(neoverse)}
    assert run_tables.cpu(arm) == "aarch64 (CPU implementer 0x41, CPU part 0xd0c; asimd)"
    assert run_tables.cpu({"cpu": "x", "cpu_id": "", "cpu_features": []}) == "x (none of the recorded sets)"


def test_a_gguf_run_renders_speedups_against_the_ideal_gain(tmp_path):
    import run_tables

    targets = [
        Target(
            "cut decode",
            "cut@f32",
            "decode_tokens_per_s",
            "dense@f32",
            0.8,
            bound="at least",
            ideal="ideal_speedup_blocks",
        ),
        Target("cut size", "cut@f32", "file_bytes", "dense@f32", 0.02, bound="within", per="parameter_ratio"),
    ]
    results = {
        "protocol": "gguf",
        "run_id": "r1",
        "rounds": 3,
        "host": {"cpu": "toy", "cpus": 2, "kernel": "k"},
        "commit": "0" * 40,
        "clean": True,
        "start": "s",
        "end": "e",
        "command": "python bench/run.py gguf",
        "settings": "toy",
        "figures": ["prompt_tokens_per_s", "decode_tokens_per_s", "file_bytes"],
        "rows": _cut_rows(),
        "quality": {"dense@f32": {"ppl": 21.8}, "cut@f32": {"ppl": 25.0}},
    }
    results = run._judged(results, targets)
    decode, size = results["verdicts"]
    # speedups 1.225, 1.202, 1.244: 90%, 81%, 97% of the ideal gain
    assert decode["verdict"] == "met" and decode["ratio"]["min"] == pytest.approx((101 / 84 - 1) / 0.25)
    assert size["verdict"] == "met" and size["ratio"]["median"] == pytest.approx(0.805 / 0.8)
    path = tmp_path / "gguf-r1.json"
    path.write_text(json.dumps(results))
    block = run_tables.run_block(path)
    assert "| cut@f32 | llama-cpp-python 0.3.36, secateurs 0.1.0 | 25.00 |" in block
    assert "1.225 [1.202, 1.244]" in block and "| cut decode | 0.9 [0.81, 0.974] | >= 0.8 | met |" in block
    assert "| cut size | 1.006 | 1 ± 0.02 | met |" in block


def test_a_table_of_rows_from_two_runs_is_refused(tmp_path):
    import run_tables

    rows = _cut_rows() + _cut_rows("r2")
    path = tmp_path / "gguf-mixed.json"
    path.write_text(json.dumps({"protocol": "gguf", "rows": rows}))
    with pytest.raises(SystemExit, match="several runs"):
        run_tables.run_block(path)


class _ToyAfter(_Toy):
    """A protocol whose evaluation is long: measured once after the rounds, of the weights the rounds timed."""

    def __init__(self, evaluated: str = "fast") -> None:
        super().__init__()
        self.evaluated = evaluated

    def quality(self, name: str) -> dict:
        self.calls.append((f"quality {name}", True))
        return {"ppl": {"fast": 10.0, "slow": 12.0}[name], "weights_sha256": name if name == "slow" else self.evaluated}


def test_a_long_evaluation_comes_after_the_rounds(tmp_path, monkeypatch):
    import protocols

    toy = _ToyAfter()
    monkeypatch.setitem(protocols.PROTOCOLS, "toy", lambda: toy)
    out = tmp_path / "run.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "toy", "--out", str(out)])
    run.main()
    results = json.loads(out.read_text())
    assert [evaluate for name, evaluate in toy.calls if not name.startswith("quality")] == [False] * 6
    assert [name for name, _ in toy.calls[-2:]] == ["quality fast", "quality slow"]
    assert results["quality"]["fast"] == {"ppl": 10.0, "weights_sha256": "fast"}
    assert all(row["same_weights"] for row in results["rows"] if row["round"] > 0)
    toy = _ToyAfter(evaluated="other weights")
    monkeypatch.setitem(protocols.PROTOCOLS, "toy", lambda: toy)
    with pytest.raises(SystemExit, match="not the ones timed"):
        run.main()


def test_every_recipe_is_held_to_both_texts_and_to_its_time_budget():
    import protocols

    recipes = {"alps-70-owl": {"method": "alps"}, "alps-2:4-ebft-model-e1": {"method": "alps", "ebft": {"epochs": 1}}}
    targets = protocols._recipe_targets(recipes)
    assert [(t.figure, t.other, t.limit) for t in targets] == [
        ("ppl", "llmcompressor-sparsegpt-70", 0.60),
        ("ppl_c4", "llmcompressor-sparsegpt-70", 0.65),
        ("prune_s", "sparsegpt-70", 2.0),
        ("ppl", "llmcompressor-sparsegpt-2:4", 0.72),  # with block tuning: the "best" budget
        ("ppl_c4", "llmcompressor-sparsegpt-2:4", 0.77),
        ("prune_s", "sparsegpt-2:4", 4.0),
    ]


def test_a_recipe_with_block_tuning_brings_its_one_shot_start_into_the_run():
    import protocols

    recipes = protocols.Recipes()
    names = recipes.selection(["alps-50-ebft-model-e1"])
    # the peer and SparseGPT for its targets, and ALPS alone: the gain and the cost of the tuning, same run
    assert sorted(names) == ["alps-50", "alps-50-ebft-model-e1", "llmcompressor-sparsegpt-50", "sparsegpt-50"]
    assert ("alps-50-ebft-model-e1", "alps-50") in recipes.trained


def test_a_row_judged_only_by_its_quality_is_measured_once(tmp_path, monkeypatch):
    import protocols

    toy = _Toy()
    toy.targets = [Target("fast ppl / slow's", "fast", "ppl", "slow", 1.0)]
    toy.once = {"slow"}
    monkeypatch.setitem(protocols.PROTOCOLS, "toy", lambda: toy)
    out = tmp_path / "run.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "toy", "--out", str(out)])
    run.main()
    assert [name for name, _ in toy.calls] == ["fast", "slow", "fast", "fast"]
    results = json.loads(out.read_text())
    assert results["quality"]["slow"]["ppl"] == 10.0 and results["verdicts"][0]["verdict"] == "met"
