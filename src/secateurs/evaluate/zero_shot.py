"""Zero-shot accuracy through lm-eval-harness (the ``[eval]`` extra).

The in-memory model is wrapped in lm-eval's ``HFLM`` (no checkpoint is written) and lm-eval computes every
figure: a task is a name from lm-eval's registry (``boolq``, ``arc_easy``... whose data come from the
Hugging Face Hub or its cache) or a path to a task YAML in lm-eval's format, whose data may be local files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EvaluationError
from ..extras import require
from ..models.load import check_causal_lm, resolve_device

# The seven zero-shot tasks of the Wanda and SparseGPT papers.
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
# lm-eval's metric keys read "acc,none" (metric, filter); these are the ones a multiple-choice task reports.
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
YAML_SUFFIXES = (".yaml", ".yml")


def _lm_eval() -> Any:
    require("lm_eval.models.huggingface")  # fails early when torch/transformers clash with lm-eval
    return require("lm_eval")


def is_task_file(task: str | Path) -> bool:
    """A task given as a path to a YAML file rather than a registered name."""
    return str(task).lower().endswith(YAML_SUFFIXES)


def _resolve_data_files(data_files: Any, folder: Path) -> Any:
    """Relative local data files (str, list, or split -> str/list) made relative to the YAML's folder."""
    if isinstance(data_files, dict):
        return {split: _resolve_data_files(files, folder) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_resolve_data_files(files, folder) for files in data_files]
    if isinstance(data_files, str) and "://" not in data_files and not Path(data_files).expanduser().is_absolute():
        return str(folder / data_files)
    return data_files


def local_task_config(path: str | Path) -> dict[str, Any]:
    """A task YAML read as lm-eval reads it (``include``, ``!function``), with relative ``data_files`` read
    from the YAML's folder, as ``include`` and ``!function`` already are: the task runs from any directory."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own reader; no public one exists in 0.4

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise EvaluationError(f"task file {path} does not exist: check the path, or give a task name")
    try:
        config = load_yaml(path, resolve_func=True, recursive=True)
    except Exception as error:  # yaml, import errors of !function modules, include cycles
        raise EvaluationError(f"cannot read the task file {path} ({type(error).__name__}: {error}): fix it") from error
    if "task" not in config and "group" not in config:
        raise EvaluationError(f"{path} names no 'task' (or 'group'): give an lm-eval task YAML")
    dataset_kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in dataset_kwargs:
        config["dataset_kwargs"] = {
            **dataset_kwargs,
            "data_files": _resolve_data_files(dataset_kwargs["data_files"], path.parent),
        }
    return config


def _load_task(task_manager: Any, task: str) -> dict[str, Any]:
    """lm-eval's task dict for one task name or YAML path; its data are read here (from the Hub for names)."""
    spec: str | dict[str, Any] = local_task_config(task) if is_task_file(task) else task
    try:
        return task_manager.load([spec])
    except KeyError:
        raise EvaluationError(
            f"{task!r} is not an lm-eval task: give a registered name (e.g. {', '.join(PAPER_TASKS[:3])}) "
            "or a path to a task YAML"
        ) from None
    except Exception as error:  # datasets raises many kinds when offline or when the set moved
        first_line = str(error).splitlines()[0] if str(error) else ""
        where = "from its data files" if is_task_file(task) else "from the Hugging Face Hub"
        raise EvaluationError(
            f"could not load the data of task {task!r} {where} ({type(error).__name__}: {first_line}): offline, "
            "give a local task YAML (dataset_path: json, dataset_kwargs.data_files) or fill the Hugging Face "
            "datasets cache on a machine with network and set HF_DATASETS_OFFLINE=1"
        ) from error


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The tasks and groups of one ``TaskManager.load`` that no loaded group holds: lm-eval refuses a task
    given both alone and inside its group."""
    children = {child for names in loaded["group_map"].values() for child in names}
    items = list(loaded["groups"].items()) + list(loaded["tasks"].items())
    return [item for name, item in items if name not in children]


@dataclass
class LoadedTasks:
    """Tasks whose data are read: lm-eval's ``TaskManager`` and its task and group objects."""

    task_manager: Any
    items: list[Any]


def load_tasks(tasks: Sequence[str | Path]) -> LoadedTasks:
    """Read the tasks (lm-eval names or YAML paths) and their data now, so a missing data set is reported
    before any long computation."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    names = [str(task) for task in tasks]
    if not names:
        raise EvaluationError("no zero-shot task given: name one (e.g. arc_easy) or give a task YAML")
    # indexing lm-eval's thousands of bundled YAMLs takes seconds: skip it when every task is a local file
    task_manager = TaskManager(include_defaults=not all(is_task_file(name) for name in names))
    items = [item for name in names for item in _top_level(_load_task(task_manager, name))]
    return LoadedTasks(task_manager, items)


def _accuracies(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's ``results`` -> ``{task: {"acc": .., "acc_stderr": .., "acc_norm": .., "samples": n}}``."""
    found: dict[str, dict[str, Any]] = {}
    samples = results.get("n-samples", {})
    for task, metrics in results["results"].items():
        row: dict[str, Any] = {}
        for key, value in metrics.items():
            metric = key.partition(",")[0]  # "acc,none" -> "acc"
            if metric in METRICS and isinstance(value, (int, float)):
                row[metric] = float(value)
        if task in samples:
            row["samples"] = samples[task].get("effective")
        found[task] = row
    return found


def check_options(limit: float | None, batch_size: int) -> None:
    if limit is not None and limit <= 0:
        raise EvaluationError(f"limit {limit} is not positive: give a number of documents per task, or omit it")
    if batch_size < 1:
        raise EvaluationError(f"batch size {batch_size} is not positive: give 1 or more")


def zero_shot(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str | Path] | LoadedTasks,
    *,
    limit: int | float | None = None,
    batch_size: int = 1,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Zero-shot accuracy of the in-memory ``model`` on ``tasks`` (lm-eval names or task YAML paths, or
    what ``load_tasks`` returned), as lm-eval computes it: ``{task: {"acc", "acc_stderr", "acc_norm",
    "acc_norm_stderr", "samples"}}``, each metric where the task reports it (fractions in [0, 1]).
    ``limit``: the first N documents of each task (a fraction of them when below 1). A task's own
    ``num_fewshot`` is kept (none for the paper's tasks: zero-shot). Moves the model to ``device``.
    """
    check_causal_lm(model)
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    check_options(limit, batch_size)
    loaded = tasks if isinstance(tasks, LoadedTasks) else load_tasks(tasks)
    device = resolve_device(device)
    model.to(device).eval()
    logging.getLogger("lm_eval").setLevel(logging.INFO if progress else logging.WARNING)
    language_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=language_model,
        tasks=loaded.items,
        limit=limit,
        log_samples=False,
        task_manager=loaded.task_manager,
    )
    return _accuracies(results)
