from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["schema_check"]  # every secateurs.json the suite writes is checked against the schema

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SECATEURS_SHARED", ROOT.parent / "shared")).resolve()
SMOLLM2 = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
C4_SLICE = SHARED / "data" / "c4" / "c4-train.00000-of-01024.head1000.jsonl"
WIKITEXT_TEST = SHARED / "data" / "wikitext-2-raw-v1" / "wiki.test.raw"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def calibration() -> torch.Tensor:
    return torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint with a real (byte-level BPE) tokenizer, saved like a hub download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from secateurs.data import builtin_text

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    tokenizer.train_from_iterator([builtin_text()[:200_000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(fast),
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def requires_smollm2():
    return pytest.mark.skipif(not SMOLLM2.exists(), reason=f"{SMOLLM2} is absent (set SECATEURS_SHARED)")


def pytest_configure(config):
    config.addinivalue_line("markers", "bad_input: a bad input a user can give; must get a clear one-line error")
    config.addinivalue_line("markers", "crash_point: an interruption or crash the output must survive")


_COUNTS = {"bad_input": [0, 0], "crash_point": [0, 0]}


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for marker, counts in _COUNTS.items():
        if marker in report.keywords:
            counts[0] += 1
            counts[1] += report.passed


def pytest_terminal_summary(terminalreporter):
    bad, crash = _COUNTS["bad_input"], _COUNTS["crash_point"]
    if bad[0] or crash[0]:
        terminalreporter.write_line(
            f"bad inputs: {bad[0]} tried, {bad[1]} clear errors; crash points: {crash[1]} survived (of {crash[0]})"
        )


def interrupt_after_block(monkeypatch, last: int) -> None:
    """Ctrl-C right after block ``last`` is saved: the run's state holds blocks 0..last."""
    import secateurs.engine.resume

    real = secateurs.engine.resume.WalkState.save_block

    def save_then_interrupt(self, index, prefix, block, hidden):
        real(self, index, prefix, block, hidden)
        if index == last:
            raise KeyboardInterrupt

    monkeypatch.setattr(secateurs.engine.resume.WalkState, "save_block", save_then_interrupt)
