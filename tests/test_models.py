"""Every supported family on a tiny random model: prune, save, reload, forward, exact sparsity."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model
from transformers import AutoModelForCausalLM

from secateurs import load_recipe, prune
from secateurs.io.hf import save_checkpoint
from secateurs.models import find_blocks, find_targets
from secateurs.patterns import NMPattern, is_nm_sparse


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("pattern,true_sequential", [("unstructured", False), ("2:4", True)])
def test_prune_save_reload(family, pattern, true_sequential, calibration, tmp_path):
    model = tiny_model(family)
    recipe = load_recipe({"method": "wanda", "pattern": pattern, "true_sequential": true_sequential})
    report = prune(model, recipe, calibration, device="cpu", progress=False)

    name, blocks = find_blocks(model)
    targets = [t for i, b in enumerate(blocks) for t in find_targets(b, f"{name}.{i}")]
    assert len(report.layers) == len(targets) > 0
    for target in targets:
        weight = target.weight()
        if pattern == "2:4":
            assert is_nm_sparse(weight, NMPattern(2, 4)), target.name
            assert int((weight == 0).sum()) == weight.numel() // 2
        else:  # Wanda: exactly half of every row
            assert ((weight == 0).sum(1) == weight.shape[1] // 2).all(), target.name
    assert report.sparsity == 0.5

    save_checkpoint(model, None, tmp_path / "out", report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)
    assert (tmp_path / "out" / "secateurs.json").is_file()


def test_magnitude_needs_no_calibration_and_compares_per_layer():
    model = tiny_model("llama")
    report = prune(model, load_recipe({"method": "magnitude", "sparsity": 0.7}), None, device="cpu", progress=False)
    assert report.walk is None
    q = model.model.layers[0].self_attn.q_proj.weight
    assert int((q == 0).sum()) == int(q.numel() * 0.7)
    rows = (q == 0).sum(1)
    assert rows.min() != rows.max()  # compared over the whole layer, not per row


def test_ignore_globs_leave_layers_dense(calibration):
    model = tiny_model("llama")
    recipe = load_recipe({"method": "wanda", "ignore": ["*.down_proj", "model.layers.1.*"]})
    report = prune(model, recipe, calibration, device="cpu", progress=False)
    names = {layer.name for layer in report.layers}
    assert "model.layers.0.mlp.down_proj" not in names and not any(".layers.1." in n for n in names)
    assert int((model.model.layers[1].mlp.up_proj.weight == 0).sum()) == 0
    assert int((model.model.layers[0].mlp.down_proj.weight == 0).sum()) == 0


def test_embeddings_and_head_are_not_pruned(calibration):
    model = tiny_model("gpt2")
    before = model.lm_head.weight.clone()
    prune(model, load_recipe({"method": "wanda"}), calibration, device="cpu", progress=False)
    assert torch.equal(model.lm_head.weight, before)
