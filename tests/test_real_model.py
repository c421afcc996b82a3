"""Integration on the real pretrained SmolLM2-135M of ../shared (skipped with the reason when absent)."""

import copy

import pytest
import torch
from conftest import C4_SLICE, SMOLLM2, WIKITEXT_TEST, requires_smollm2

from secateurs import Recipe, calibration_windows, evaluation_ids, load_corpus, load_model, prune
from secateurs.evaluate import perplexity
from secateurs.export import save_checkpoint

pytestmark = [pytest.mark.slow, requires_smollm2()]


@pytest.fixture(scope="module")
def smollm2():
    return load_model(SMOLLM2, "float32")


def test_wanda_beats_magnitude_and_the_saved_model_reloads(smollm2, tmp_path):
    torch.set_num_threads(2)
    dense, tokenizer = smollm2
    calibration = calibration_windows(load_corpus(C4_SLICE), tokenizer, 32, 256, seed=0)
    ids = evaluation_ids(WIKITEXT_TEST, tokenizer, 2048)
    results = {}
    for method in ("magnitude", "wanda"):
        model = copy.deepcopy(dense)
        report = prune(model, Recipe(method, sparsity=0.5), calibration, device="cpu", progress=False)
        assert report["sparsity"] == 0.5
        results[method] = perplexity(model, ids, 2048, max_windows=4, device="cpu", progress=False)
    dense_ppl = perplexity(dense, ids, 2048, max_windows=4, device="cpu", progress=False)
    assert dense_ppl < results["wanda"] < results["magnitude"], (dense_ppl, results)

    out = save_checkpoint(model, tokenizer, tmp_path / "wanda", report)
    reloaded, _ = load_model(out, "float32")
    probe = ids[:, :64]
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, model(probe).logits)
