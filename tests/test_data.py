import json
import random

import pytest
import torch

from secateurs.data import (
    Corpus,
    builtin_text,
    calibration_sample,
    calibration_windows,
    load_corpus,
    wikitext_rows_text,
)
from secateurs.errors import CalibrationError


class CharTokenizer:
    """One token per character: makes expected windows easy to write down."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_document_sampling_follows_the_reference_procedure():
    documents = ["short", "a" * 30, "b" * 8, "0123456789" * 3]
    windows = calibration_windows(Corpus("docs", documents=documents), CharTokenizer(), 5, 8, seed=3)
    rng, expected = random.Random(3), []
    while len(expected) < 5:  # Wanda/SparseGPT: draw a document, skip unless longer than seqlen
        document = documents[rng.randint(0, len(documents) - 1)]
        if len(document) <= 8:
            continue
        start = rng.randint(0, len(document) - 8 - 1)
        expected.append([ord(c) for c in document[start : start + 8]])
    assert windows.tolist() == expected
    assert windows.dtype == torch.long


def test_the_sample_names_the_document_of_every_window():
    """An evaluation on held-out documents leaves out exactly these."""
    documents = ["short", "a" * 30, "b" * 8, "0123456789" * 3, "c" * 12]
    corpus, tokenizer = Corpus("docs", documents=documents), CharTokenizer()
    windows, used = calibration_sample(corpus, tokenizer, 6, 8, seed=5)
    assert torch.equal(windows, calibration_windows(corpus, tokenizer, 6, 8, seed=5))
    assert len(used) == 6 and set(used) <= {1, 3, 4}  # only documents longer than seqlen give windows
    for window, index in zip(windows.tolist(), used, strict=True):
        assert "".join(map(chr, window)) in documents[index]
    text = Corpus("text", text="x" * 100)
    assert calibration_sample(text, tokenizer, 2, 8)[1] is None  # a running text has no documents


def test_running_text_sampling_is_seeded():
    corpus = Corpus("text", text="".join(chr(65 + i % 26) for i in range(500)))
    a = calibration_windows(corpus, CharTokenizer(), 4, 16, seed=0)
    b = calibration_windows(corpus, CharTokenizer(), 4, 16, seed=0)
    c = calibration_windows(corpus, CharTokenizer(), 4, 16, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (4, 16)


def test_too_little_text_says_how_much_was_found():
    with pytest.raises(CalibrationError, match="holds 100 tokens.*--nsamples"):
        calibration_windows(Corpus("t", text="x" * 100), CharTokenizer(), 8, 32)
    with pytest.raises(CalibrationError, match="no document .* more than seqlen=64"):
        calibration_windows(Corpus("d", documents=["y" * 60] * 50), CharTokenizer(), 2, 64)


def test_local_files(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "url": "u"}) for t in ["one doc", "two doc"]) + "\n")
    assert load_corpus(jsonl).documents == ["one doc", "two doc"]
    txt = tmp_path / "notes.txt"
    txt.write_text("plain text")
    assert load_corpus(txt).text == "plain text"


@pytest.mark.parametrize(
    "content,match", [(b"", "empty"), (b"\x00\x01\x02binary", "binary"), (b"\xff\xfe\xfa not utf8", "UTF-8")]
)
def test_unreadable_calibration_files(tmp_path, content, match):
    path = tmp_path / "calib.txt"
    path.write_bytes(content)
    with pytest.raises(CalibrationError, match=match):
        load_corpus(path)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CalibrationError, match="line 2"):
        load_corpus(path)


def test_missing_file_or_unknown_name():
    with pytest.raises(CalibrationError, match="neither a file nor a named set"):
        load_corpus("no/such/file.txt")


def test_wikitext_rows_rule():
    raw = " \n = Title = \n \n Some text . \n"
    assert wikitext_rows_text(raw) == "\n\n = Title = \n" + "\n\n" + "" + "\n\n" + " Some text . \n"


def test_builtin_corpus_is_large_enough_and_has_a_held_out_split():
    train, test = builtin_text("train"), builtin_text("test")
    assert len(train) > 1_000_000  # about 300k tokens with SmolLM2's tokenizer: 128 x 2048 fits
    assert len(test) > 400_000 and test[:1000] not in train
