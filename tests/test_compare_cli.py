"""``fluxlab compare``: writes a report with verdicts and pictures; exit code 1 when any backend fails."""

import pytest

import fluxlab
from fluxlab.cli import main

from _compare_kernels import kv_swapped

FAST = ["--inputs", "smoke", "--model", "none", "--no-progress"]


def test_compare_writes_markdown_report_with_pictures(tmp_path, capsys):
    code = main(["compare", "--out", str(tmp_path), "--backends", "sdpa,sdpa_math", "--dtypes", "bf16,fp16", *FAST])
    assert code == 0
    text = (tmp_path / "report.md").read_text()
    assert "| sdpa | pass |" in text and "| sdpa_math | pass |" in text
    assert "float16" in text and "bfloat16" in text
    assert "![error_maps_synthetic.png](error_maps_synthetic.png)" in text
    assert (tmp_path / "error_maps_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Verdict rule" in text and "rel_l2 <= 2 x yardstick" in text
    assert "**platform**: cpu" in text
    assert "Synthetic FLUX-shaped inputs: sdpa pass, sdpa_math pass" in capsys.readouterr().out


def test_compare_exits_1_when_a_backend_fails(tmp_path, capsys):
    fluxlab.register_backend("cli_kv_swapped", kv_swapped)
    try:
        code = main(["compare", "--out", str(tmp_path), "--backends", "sdpa,cli_kv_swapped", "--format", "html",
                     *FAST])
    finally:
        fluxlab.registry.unregister_backend("cli_kv_swapped")
    assert code == 1
    html = (tmp_path / "report.html").read_text()
    assert "cli_kv_swapped" in html and "#ffcdd2" in html  # the fail colour
    assert '<img src="error_maps_synthetic.png"' in html
    assert "FAILED" in capsys.readouterr().out


def test_knob_specs_reach_the_sweep(tmp_path):
    code = main(["compare", "--out", str(tmp_path), "--backends", "sdpa_math,sdpa_math:lowp_reduction=1", *FAST])
    text = (tmp_path / "report.md").read_text()
    assert "| sdpa_math:lowp_reduction=1 | fail |" in text or "| sdpa_math:lowp_reduction=1 | warn |" in text
    assert code == (1 if "lowp_reduction=1 | fail" in text else 0)


def test_replayed_records_are_a_section(tmp_path):
    from fluxlab.compare import save_records
    from fluxlab.record import AttentionRecord
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 64, 2, 32, generator=gen).bfloat16() for _ in range(3))
    out = fluxlab.attention(q, k, v, backend="sdpa_math")
    save_records(tmp_path / "rec", [AttentionRecord(q, k, v, scale=32**-0.5, out=out, backend="sdpa_math")])
    code = main(["compare", "--out", str(tmp_path / "out"), "--backends", "sdpa", "--inputs", "none",
                 "--records", str(tmp_path / "rec"), "--model", "none", "--no-progress"])
    assert code == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Replayed records from cpu" in text
    assert f"recorded:sdpa_math@{fluxlab.current_platform().device_name}" in text


@pytest.mark.slow
def test_default_compare_on_this_machine(tmp_path):
    """What `fluxlab compare` does with no options: the CPU set, then the embedded model's captures and images."""
    code = main(["compare", "--out", str(tmp_path), "--no-progress"])
    text = (tmp_path / "report.md").read_text()
    # Exit 1 means "a verdict is fail": emu_sage models SageAttention 1.0.6, whose kernel is biased toward zero on
    # the default inputs' ragged key lengths; a quantised emulator may fail the same way on a captured layer.
    # Every exact kernel passes; whatever fails is a quantised emulator, and it fails as biased.
    assert code == 1, text
    for name in ("sdpa", "sdpa_math", "sdpa_flash", "flex"):
        assert f"| {name} | pass |" in text
    failed = {line.split(" | ")[0].removeprefix("| ") for line in text.splitlines()
              if line.startswith("| ") and " | fail | " in line}
    assert "emu_sage" in failed and failed <= {"emu_sage", "emu_aiter_sage"}, failed
    if hasattr(fluxlab, "load_flux2") and hasattr(fluxlab, "capture"):
        assert "## Captured from the embedded FLUX.2 [klein] model" in text
        assert (tmp_path / "images.png").exists() and "PSNR" in text
    else:
        assert "FLUX.2 model skipped" in text


def test_compare_parallel_refuses_ring_without_lse(tmp_path, capsys):
    from fluxlab.cli import main

    assert main(["compare", "--parallel", "ring=2", "--backends", "sage", "--out", str(tmp_path)]) == 1
    assert "ring attention merges partial results with the log-sum-exp; 'sage' does not return it" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_compare_parallel_ulysses_matches_one_rank(tmp_path, capsys):
    from fluxlab.cli import main

    assert main(["compare", "--parallel", "ulysses=2", "--backends", "sdpa", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "parallel.md").read_text()
    assert "| ulysses=2 | sdpa |" in report and "**pass**" in report
