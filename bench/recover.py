"""Protocol Q-CPU (docs/benchmarks.md), LoRA recovery: how much of Wanda 2:4's perplexity gap to dense 300 LoRA
steps recover.

    python bench/recover.py        # writes bench/results/recover.json

SmolLM2-135M in float32 (bench/q_cpu.py prepares it) is pruned with Wanda 2:4 on the protocol's calibration
(C4 slice, 128 x 512, seed 0), then fine-tuned with LoRA (rank 8, every pruned Linear of the blocks) for 300
steps of 4 windows of 256 tokens sampled from the same C4 slice, learning rate 1e-4 with warm-up and cosine
decay. Perplexity: WikiText-2 test, first 32 windows of 2048, for dense, pruned and fine-tuned. Target: the
fine-tuning recovers at least 30 % of the gap, (pruned - tuned) / (pruned - dense) >= 0.3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import write_results  # noqa: E402
from q_cpu import C4, EVAL_SEQLEN, EVAL_WINDOWS, MODEL, THREADS, WIKITEXT, WORK  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "recover.json"
STEPS, BATCH, SEQLEN, RANK, LR = 300, 4, 256, 8, 1e-4


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import torch

    from secateurs import Evaluation, calibration_windows, evaluation_ids, load, load_corpus, load_recipe, prune, save
    from secateurs.evaluate import perplexity
    from secateurs.recover import Lora, Training, TrainJob, run_training

    if not (MODEL / "config.json").exists():
        sys.exit("run python bench/q_cpu.py --only dense first: it prepares SmolLM2 in float32")
    torch.set_num_threads(THREADS)
    model, tokenizer = load(MODEL, "float32")
    ids = evaluation_ids(WIKITEXT, tokenizer, EVAL_SEQLEN)
    dense = perplexity(model, ids, EVAL_SEQLEN, EVAL_WINDOWS, device="cpu", progress=False)
    calibration = calibration_windows(load_corpus(C4), tokenizer, 128, 512, seed=0)
    start = time.perf_counter()
    recipe = load_recipe({"method": "wanda", "pattern": "2:4"})
    report = prune(model, recipe, calibration, device="cpu", progress=False)
    prune_s = time.perf_counter() - start
    pruned_folder = WORK / "recover-wanda-2-4"
    save(model, tokenizer, pruned_folder, report, overwrite=True)
    del model
    tuned_folder = WORK / "recover-wanda-2-4-lora"
    start = time.perf_counter()
    job = TrainJob(
        model=str(pruned_folder),
        out=tuned_folder,
        training=Training(data=str(C4), steps=STEPS, batch_size=BATCH, seqlen=SEQLEN, lr=LR),
        lora=Lora(rank=RANK),
        evaluation=Evaluation(str(WIKITEXT), EVAL_SEQLEN, EVAL_WINDOWS),
        device="cpu",
        overwrite=True,
        progress=False,
    )
    tuned = run_training(job)
    wall = time.perf_counter() - start
    pruned, after = tuned.perplexity_before, tuned.perplexity_after
    result = {
        "protocol": "Q-CPU (LoRA recovery of Wanda 2:4)",
        "model": MODEL.name,
        "settings": {
            "steps": STEPS,
            "batch_size": BATCH,
            "seqlen": SEQLEN,
            "lora_rank": RANK,
            "lr": LR,
            "data": C4.name,
        },
        "evaluation": f"WikiText-2 test, first {EVAL_WINDOWS} windows of {EVAL_SEQLEN}",
        "ppl_dense": dense,
        "ppl_pruned": pruned,
        "ppl_tuned": after,
        "gap_recovered": (pruned - after) / (pruned - dense),
        "sparsity_after": tuned.sparsity,
        "prune_s": round(prune_s, 1),
        "finetune_wall_s": round(wall, 1),
        "train_s": tuned.seconds["train"],
        "first_losses": tuned.training.losses[:10],
        "last_losses": tuned.training.losses[-10:],
        "threads": THREADS,
    }
    write_results(RESULTS, result)
    print(json.dumps({k: result[k] for k in ("ppl_dense", "ppl_pruned", "ppl_tuned", "gap_recovered")}))


if __name__ == "__main__":
    main()
