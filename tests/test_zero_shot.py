"""The lm-eval bridge: a local multiple-choice task on a tiny model gives the accuracy lm-eval computes, and
the argmax of the loglikelihoods computed by hand."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from secateurs import load
from secateurs.cli import main
from secateurs.errors import EvaluationError, MissingExtraError
from secateurs.evaluate.zero_shot import _load_task, local_task_config, zero_shot

DATA = Path(__file__).parent / "data"
TASK_YAML = DATA / "tiny_choice.yaml"
TASK_NAME = "secateurs_tiny_choice"


def _documents() -> list[dict]:
    return [json.loads(line) for line in (DATA / "tiny_choice.jsonl").read_text().splitlines()]


def _hand_accuracy(model, tokenizer, documents: list[dict]) -> tuple[float, float]:  # noqa: ANN001
    """acc and acc_norm as the lm-eval paper defines them: the choice of the largest sum of continuation
    log-probabilities (acc_norm: divided by the choice's length in characters), tokenized as lm-eval does
    (the whole text encoded, the context's tokens cut off the front)."""
    correct = correct_norm = 0
    with torch.no_grad():
        for document in documents:
            context = f"Question: {document['question']}\nAnswer:"
            context_ids = tokenizer.encode(context)
            loglikelihoods = []
            for choice in document["choices"]:
                whole = tokenizer.encode(f"{context} {choice}")
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
                loglikelihoods.append(
                    sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))
                )
            lengths = [len(choice) for choice in document["choices"]]
            normalized = [ll / n for ll, n in zip(loglikelihoods, lengths, strict=True)]
            correct += loglikelihoods.index(max(loglikelihoods)) == document["answer"]
            correct_norm += normalized.index(max(normalized)) == document["answer"]
    return correct / len(documents), correct_norm / len(documents)


def _lm_eval_directly(model, tokenizer, limit: int | None) -> dict:  # noqa: ANN001
    """The reference: lm-eval's own simple_evaluate on the same task, its data path made absolute by hand."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    config = yaml.safe_load(TASK_YAML.read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(DATA / "tiny_choice.jsonl")
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1),
        tasks=[config],
        limit=limit,
        task_manager=TaskManager(include_defaults=False),
        log_samples=False,
    )
    return results["results"][TASK_NAME]


@pytest.mark.parametrize("limit", [None, 5])
def test_local_task_gives_lm_evals_accuracy(tiny_folder, tmp_path, monkeypatch, limit):
    monkeypatch.chdir(tmp_path)  # the YAML's relative data file is found from any working directory
    model, tokenizer = load(tiny_folder, "float32")
    result = zero_shot(model, tokenizer, [str(TASK_YAML)], limit=limit, device="cpu", progress=False)

    documents = _documents()[:limit]
    row = result[TASK_NAME]
    assert row["samples"] == len(documents)
    acc, acc_norm = _hand_accuracy(model, tokenizer, documents)
    assert (row["acc"], row["acc_norm"]) == (acc, acc_norm)
    reference = _lm_eval_directly(model, tokenizer, limit)
    assert row["acc"] == reference["acc,none"] and row["acc_norm"] == reference["acc_norm,none"]
    assert row["acc_stderr"] == pytest.approx(reference["acc_stderr,none"])


def test_pruned_model_changes_the_answers(tiny_folder):
    """The bridge evaluates the in-memory weights, not a checkpoint on disk: after a change of the weights its
    accuracies are those of the changed model, and no longer the dense model's."""
    model, tokenizer = load(tiny_folder, "float32")
    dense = zero_shot(model, tokenizer, [TASK_YAML], device="cpu", progress=False)[TASK_NAME]
    signs = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)).sign()
    with torch.no_grad():
        model.lm_head.weight.mul_(signs)
    changed = _hand_accuracy(model, tokenizer, _documents())
    row = zero_shot(model, tokenizer, [TASK_YAML], device="cpu", progress=False)[TASK_NAME]
    assert (row["acc"], row["acc_norm"]) == changed
    # the change moves both accuracies (0.3125, 0.375 dense; 0.25, 0.3125 changed): equal rows would mean the
    # bridge read the weights on disk
    assert row["acc"] != dense["acc"] and row["acc_norm"] != dense["acc_norm"]


def test_task_errors_say_what_to_do(tmp_path):
    with pytest.raises(EvaluationError, match="does not exist"):
        local_task_config(tmp_path / "missing.yaml")
    no_task = tmp_path / "no_task.yaml"
    no_task.write_text("dataset_path: json\n")
    with pytest.raises(EvaluationError, match="names no 'task'"):
        local_task_config(no_task)

    class Registry:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def load(self, specs: list) -> dict:
            raise self.error

    with pytest.raises(EvaluationError, match="not an lm-eval task: give a registered name"):
        _load_task(Registry(KeyError("nope")), "nope")
    offline = ConnectionError("Couldn't reach 'aps/super_glue' on the Hub")
    with pytest.raises(EvaluationError, match="Hugging Face Hub .*give a local task YAML .*HF_DATASETS_OFFLINE"):
        _load_task(Registry(offline), "boolq")


def test_missing_lm_eval_says_how_to_install(tiny_folder, monkeypatch):
    model, tokenizer = load(tiny_folder, "float32")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "secateurs\[eval\]"'):
        zero_shot(model, tokenizer, [TASK_YAML], device="cpu", progress=False)


def test_cli_eval_perplexities_and_tasks(tiny_folder, tmp_path, capsys):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    second.write_text("A journey of a thousand miles begins with a single step. " * 100)
    out = tmp_path / "results.json"
    common = ["--seqlen", "64", "--max-windows", "2", "--quiet", "--device", "cpu"]
    arguments = ["eval", str(tiny_folder), "--ppl", f"{first},{second}", "--tasks", str(TASK_YAML)]
    # by default the table, for a person (on stdout)
    assert main([*arguments, "--limit", "6", "--out", str(out), *common]) == 0
    table = capsys.readouterr().out
    assert "| evaluation | metric | value | stderr |" in table and TASK_NAME in table
    # --json: the one-line document, the same as the results file
    assert main([*arguments, "--limit", "6", "--out", str(out), *common, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    assert set(printed["perplexities"]) == {str(first), str(second)}
    assert printed["perplexities"][str(first)] != printed["perplexities"][str(second)]
    assert printed["tasks"][TASK_NAME]["samples"] == 6 and 0 <= printed["tasks"][TASK_NAME]["acc"] <= 1

    # one set: the single-value shape `secateurs eval --ppl SET` always printed, the same figure
    assert main(["eval", str(tiny_folder), "--ppl", str(first), *common, "--json"]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert single["perplexity"] == pytest.approx(printed["perplexities"][str(first)], rel=1e-6)
    assert "tasks" not in single
