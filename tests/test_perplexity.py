import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from secateurs.evaluate import perplexity


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_chunked_windows_equal_whole_window_loss(family):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (1, 4 * 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        nll = []
        for window in ids.view(4, 48):
            logits = model(window[None]).logits[0, :-1]
            nll.append(F.cross_entropy(logits, window[1:]).item())
    expected = math.exp(sum(nll) / len(nll))
    for chunk, batch in ((48, 1), (16, 2), (7, 4)):
        got = perplexity(model, ids, seqlen=48, batch_size=batch, chunk=chunk, device="cpu", progress=False)
        assert got == pytest.approx(expected, rel=1e-4)
    first_two = math.exp(sum(nll[:2]) / 2)
    assert perplexity(model, ids, 48, max_windows=2, device="cpu", progress=False) == pytest.approx(first_two, rel=1e-4)
