"""Integration on the real pretrained SmolLM2-135M of ../shared (skipped with the reason when absent)."""

import copy

import pytest
import torch
from conftest import C4_SLICE, SMOLLM2, WIKITEXT_TEST, requires_smollm2

from secateurs import calibration_windows, evaluation_ids, load, load_corpus, prune
from secateurs.evaluate import perplexity
from secateurs.io.hf import save_checkpoint

pytestmark = [pytest.mark.slow, requires_smollm2()]
WINDOWS = 2  # of 2048 WikiText-2 test tokens: the ranking below holds with wide margins


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    model, tokenizer = load(SMOLLM2, "float32")
    calibration = calibration_windows(load_corpus(C4_SLICE), tokenizer, 32, 256, seed=0)
    ids = evaluation_ids(WIKITEXT_TEST, tokenizer, 2048)[:, : WINDOWS * 2048]
    return model, tokenizer, calibration, ids


@pytest.fixture(scope="module")
def dense_perplexity(smollm2):
    dense, _, _, ids = smollm2
    return perplexity(dense, ids, 2048, device="cpu", progress=False)


def _pruned(smollm2, method, pattern):
    dense, _, calibration, ids = smollm2
    model = copy.deepcopy(dense)
    report = prune(model, {"method": method, "pattern": pattern}, calibration, device="cpu", progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1e-4)
    return model, report, perplexity(model, ids, 2048, device="cpu", progress=False)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_beats_wanda_beats_magnitude(smollm2, dense_perplexity, pattern, tmp_path):
    _, tokenizer, _, ids = smollm2
    results = {method: _pruned(smollm2, method, pattern) for method in ("magnitude", "wanda", "sparsegpt")}
    ppl = {method: result[2] for method, result in results.items()}
    print(pattern, dense_perplexity, ppl)
    assert dense_perplexity < ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"], (dense_perplexity, ppl)

    model, report, _ = results["sparsegpt"]
    out = save_checkpoint(model, tokenizer, tmp_path / "pruned", report)
    reloaded, _ = load(out, "float32")
    probe = ids[:, :64]
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, model(probe).logits)
