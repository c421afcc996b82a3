"""report.md: every prune writes it next to secateurs.json, with the plots it names."""

import re

from PIL import Image

from secateurs import Evaluation, PruneJob, Report, run_prune
from secateurs.report import DepthCandidate, LayerRecord, Size, StructuredRecord
from secateurs.report.markdown import write_markdown_report
from secateurs.report.plots import RECONSTRUCTION_PLOT, SPARSITY_PLOT


def _images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def _opens_as_png(path) -> None:  # noqa: ANN001
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
        image.verify()


def test_prune_writes_report_md_with_its_plots(tiny_folder, tmp_path):
    eval_text = tmp_path / "eval.txt"
    eval_text.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    out = tmp_path / "pruned"
    job = PruneJob(
        model=str(tiny_folder),
        recipe={"method": "magnitude", "sparsity": 0.6},
        out=out,
        evaluation=Evaluation(str(eval_text), seqlen=64, windows=2),
        device="cpu",
        progress=False,
    )
    report = run_prune(job)
    markdown = (out / "report.md").read_text()
    assert _images(markdown) == [SPARSITY_PLOT]  # no reconstruction error in this report: no plot of it
    for name in _images(markdown):
        _opens_as_png(out / name)
    assert not (out / RECONSTRUCTION_PLOT).exists() and "reconstruction error" not in markdown
    saved = Report.read(out / "secateurs.json")
    assert f"| perplexity before | {saved.perplexity_before:.4g} |" in markdown
    assert f"| perplexity after | {saved.perplexity_after:.4g} |" in markdown
    assert "| method | magnitude |" in markdown and "| pattern | unstructured |" in markdown
    assert f"| save | {report.seconds['save']:.4g} |" in markdown  # the final timings, as in secateurs.json
    assert "peak resident memory (MiB)" in markdown
    for index, layer in enumerate(report.layers):
        rows, columns = layer.shape
        assert f"| {index} | {layer.name} | {rows} x {columns} | {layer.sparsity:.4g} |" in markdown
    assert markdown.count("| model.layers.") == len(report.layers) == 14


def test_reconstruction_error_is_rendered_when_present(tmp_path):
    layers = [
        LayerRecord(name=f"model.layers.{block}.{kind}", shape=[8, 8], sparsity=0.5, reconstruction_error=error)
        for block in range(3)
        for kind, error in (("self_attn.q_proj", 0.01 * (block + 1)), ("mlp.down_proj", 0.2 * (block + 1)))
    ]
    recipe = {"method": {"name": "wanda", "variant": False}, "sparsity": 0.5, "pattern": "unstructured"}
    report = Report(recipe=recipe, layers=layers, machine={"cpu": "AMD EPYC", "cpu_features": ["avx2", "avx512f"]})
    written = write_markdown_report(report, tmp_path)
    assert written == tmp_path / "report.md"  # it returns the Markdown file; the plots lie beside it
    markdown = (tmp_path / "report.md").read_text()
    assert _images(markdown) == [SPARSITY_PLOT, RECONSTRUCTION_PLOT]
    assert {path.name for path in tmp_path.iterdir()} == {"report.md", SPARSITY_PLOT, RECONSTRUCTION_PLOT}
    for name in _images(markdown):
        _opens_as_png(tmp_path / name)
    assert "| # | layer | shape | sparsity | reconstruction error | note |" in markdown
    assert "| 5 | model.layers.2.mlp.down_proj | 8 x 8 | 0.5 | 0.6 |  |" in markdown
    assert "| cpu_features | avx2 avx512f |" in markdown  # the instruction sets as words


def _depth_report(search_windows: int | None) -> Report:
    candidates = [DepthCandidate(layers=[i, i + 1], perplexity=20.0 + i) for i in range(3)]
    structured = StructuredRecord(
        before=Size(parameters=1000, parameter_bytes=4000),
        after=Size(parameters=600, parameter_bytes=2400),
        parameters_removed=0.4,
        removed_layers=[0, 1],
        candidates=candidates,
        search_windows=search_windows,
    )
    return Report(recipe={"method": {"name": "depth", "remove": 2}}, structured=structured)


def test_depth_candidates_say_what_scored_them(tmp_path):
    write_markdown_report(_depth_report(16), tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Depth candidates (perplexity on 16 calibration windows)" in markdown
    assert "| removed layers | 0, 1 |" in markdown and "| 1, 2 | 21 |" in markdown  # indices, not a shape
    write_markdown_report(_depth_report(None), tmp_path)  # a report without search_windows: the score's name alone
    assert "## Depth candidates (perplexity)" in (tmp_path / "report.md").read_text()
