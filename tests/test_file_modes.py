"""Under umask 022 every file fluxlab writes is 0644 (a colleague can read results and replay records), and no
temporary file is left behind (issue 11 item 2). Before: mkstemp's 0600, which safetensors' rewrite kept."""

from __future__ import annotations

import stat

import pytest
import torch

import fluxlab


pytestmark = pytest.mark.usefixtures("umask_022")  # the fixture is in conftest.py


def _modes(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def _assert_all_0644(folder, expected_files: int):
    modes = _modes(folder)
    assert len(modes) == expected_files, sorted(modes)
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o644} == {}
    assert not [name for name in modes if name.endswith(".tmp")]


def test_generate_outputs_are_0644(tmp_path):
    """`fluxlab generate` / the demo: a PNG and a manifest per backend, and the demo's grid."""
    from fluxlab.models.generate import generate, image_grid, write_png

    pipe = fluxlab.load_flux2("tiny", flux2_variant="klein")
    try:
        results = generate(pipe, ["sdpa"], prompt="a red circle", steps=1, width=32, height=32,
                           out_dir=tmp_path, progress=False, max_sequence_length=16)
    finally:
        fluxlab.detach(pipe)
    write_png(tmp_path / "grid.png", image_grid([r.image for r in results], ["sdpa"]))
    _assert_all_0644(tmp_path, 3)


def test_benchmark_json_and_markdown_are_0644(tmp_path):
    """benchmarks/flux2_step.py writes flux2_step.json/.md through these helpers."""
    from fluxlab.models.generate import write_atomic, write_json

    write_json(tmp_path / "flux2_step.json", {"sizes": {}})
    write_atomic(tmp_path / "flux2_step.md", b"# table\n")
    _assert_all_0644(tmp_path, 2)


def test_records_reports_and_results_are_0644(tmp_path):
    from fluxlab.compare import compare_attention, plot_error_maps, save_records
    from fluxlab.compare.sweep import Section, _write_results, write_document
    from fluxlab.record import AttentionRecord

    q, k, v = (torch.randn(1, 16, 2, 8) for _ in range(3))
    records = [AttentionRecord(q, k, v, scale=8**-0.5, out=fluxlab.attention(q, k, v))]
    report = compare_attention(records, backends=["sdpa"], progress=False)
    save_records(tmp_path / "records", records, results=report)
    write_document(tmp_path, [Section("records", report=report)], {"command": "pytest"}, "md")
    write_document(tmp_path, [Section("records", report=report)], {"command": "pytest"}, "html")
    _write_results(tmp_path / "results.json", {"records": report}, {"command": "pytest"})
    plot_error_maps(report, path=tmp_path / "error_maps.png")
    _assert_all_0644(tmp_path, 6)


def test_parallel_results_and_bench_plot_are_0644(tmp_path):
    from fluxlab import bench
    from fluxlab.parallel.compare import ParallelComparison

    ParallelComparison([], {"target": "forward"}).to_json(tmp_path / "parallel.json")
    results = {"machine": {"platform": {"device_name": "test"}}, "gemm_bf16_tflops": 100.0,
               "rows": [{"backend": "sdpa", "shape": [1, 64, 2, 64], "dtype": "bf16", "status": "ran", "tflops": 1.0}]}
    bench.plot(results, tmp_path / "attention.png")
    _assert_all_0644(tmp_path, 2)
