"""benchmarks/frontier_gpu.py: its CPU dry run exercises the GPU run's code path, marks the Pareto set right, and
README's frontier block renders from its JSON (or says "not yet measured")."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

import fluxlab

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One small dry run: 3 steps (k = 0, 1), 2 timing rounds, the embedded frontier with one seed."""
    out = tmp_path_factory.mktemp("frontier")
    script = load_benchmark("frontier_gpu")
    rc = script.main(["--tiny", "--out", str(out), "--steps", "3", "--rounds", "2", "--size", "64",
                      "--text-tokens", "16", "--seeds", "0", "--embedded-text-tokens", "16", "--no-locate",
                       "--budget-s", "1e9"])  # the code path, not the clock: no round is cut on a busy machine
    assert rc == 0
    return out, json.loads((out / "frontier_gpu.json").read_text())


def _dominated(point, others) -> bool:
    """An independent statement of the Pareto rule: another point at least as fast and as faithful, better in one."""
    t, e = point
    return any(ot <= t and oe <= e and (ot < t or oe < e) for ot, oe in others)


@pytest.mark.slow
def test_dry_run_writes_three_files_and_applies_each_schedule_per_step(dry_run):
    out, data = dry_run
    assert sorted(p.name for p in out.iterdir()) == ["frontier_gpu.json", "frontier_gpu.md", "frontier_gpu.png"]
    assert (out / "frontier_gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DRY RUN" in (out / "frontier_gpu.md").read_text()
    assert data["dry_run"] and data["complete"]
    assert data["stands_in_for"] == {"sdpa": "fa4", "emu_sage": "sage", "sdpa_math": "sdpa_cudnn"}
    assert data["environment"]["command"] and data["environment"]["date"]
    dev = data["dev"]
    rows = {r["name"]: r for r in dev["rows"]}
    assert list(rows) == ["sdpa (exact)", "emu_sage everywhere", "emu_sage, sdpa at 1 first+last"]
    # what each step really asked for: the schedule followed the loop's step, not the bare transformer's "no step"
    assert rows["emu_sage, sdpa at 1 first+last"]["kernels"] == [["sdpa", 1], ["emu_sage", 1], ["sdpa", 1]]
    assert rows["emu_sage everywhere"]["kernels"] == [["emu_sage", 3]]
    assert dev["warmup_ran"]["emu_sage"] == {"emu_sage": 4}  # 2 + 2 attention layers of the tiny transformer
    assert dev["rounds_done"] == 2 and all(len(r["runs_step_ms"]) == 2 for r in rows.values())
    assert all(r["repeat_rel_l2"] == [0.0] for r in rows.values())  # CPU kernels are deterministic
    exact, ends = rows["sdpa (exact)"], rows["emu_sage, sdpa at 1 first+last"]
    assert exact["final_latent_rel_l2"] == 0.0 and rows["emu_sage everywhere"]["final_latent_rel_l2"] > 0
    # exact first step: no drift yet; the fast middle step moves the latents
    assert ends["per_step_rel_l2_vs_exact"][0] == 0.0 and ends["per_step_rel_l2_vs_exact"][1] > 0
    assert 0 < dev["spread"]["final_latent_rel_l2"] < 0.05  # sdpa_math vs sdpa: rounding apart
    assert set(dev["kernel_step_ms"]) == {"sdpa", "emu_sage"}
    assert ends["predicted_step_ms"] == pytest.approx(
        (2 * dev["kernel_step_ms"]["sdpa"] + dev["kernel_step_ms"]["emu_sage"]) / 3)


@pytest.mark.slow
def test_pareto_marks_follow_the_rule_for_both_fidelities(dry_run):
    _, data = dry_run
    dev_rows = data["dev"]["rows"]
    points = [(r["step_ms"], r["final_latent_rel_l2"]) for r in dev_rows]
    for row, point in zip(dev_rows, points):
        assert row["pareto"] == (not _dominated(point, [p for p in points if p is not point])), row["name"]
    assert dev_rows[0]["pareto"]  # the exact row is the only one with zero drift
    embedded = data["embedded"]
    assert embedded["exact"] == "sdpa" and embedded["fast"] == "emu_sage"  # head_dim 32 fits: no padding
    assert [r["name"] for r in embedded["frontier"]["rows"]] == list(embedded["k_of_row"])
    paired = data["embedded_vs_dev_time"]
    assert [r["k"] for r in paired] == [None, 0, 1]
    points = [(r["dev_step_ms"], r["final_latent_rel_l2"]) for r in paired]
    for row, point in zip(paired, points):
        assert row["pareto"] == (not _dominated(point, [p for p in points if p is not point])), row["name"]
    assert all(r["verdict"] in ("pass", "warn", "fail") for r in paired)


def test_mark_pareto_keeps_only_undominated_rows_and_never_a_failed_one():
    from fluxlab.decide.frontier import FrontierRow, mark_pareto

    rows = [FrontierRow("exact", None, "", step_ms=10.0, final_latent_rel_l2=0.0),
            FrontierRow("fast, faithful", None, "", step_ms=8.0, final_latent_rel_l2=0.01),
            FrontierRow("slower and worse", None, "", step_ms=9.0, final_latent_rel_l2=0.02),
            FrontierRow("fastest, worst", None, "", step_ms=7.0, final_latent_rel_l2=0.05),
            FrontierRow("broken", None, "", step_ms=1.0, final_latent_rel_l2=0.0, error="boom")]
    mark_pareto(rows)
    assert [r.name for r in rows if r.pareto] == ["exact", "fast, faithful", "fastest, worst"]


def test_padding_the_head_dim_leaves_a_quantised_kernel_s_answer_unchanged():
    """sage takes head_dim 64/96/128; the embedded model has 32. Zero-padding q/k/v must not change the result:
    checked on emu_sage (sage's algorithm: int8 Q·K per block, K smoothing) behind a 64-only registration."""
    script = load_benchmark("frontier_gpu")
    from fluxlab.backends.emulated import emu_sage

    fluxlab.register_backend("fg_sage_hd64", emu_sage, head_dims=(64, 96, 128), quantised=True, replace=True)
    try:
        assert script.padded_backend("fg_sage_hd64", head_dim=64) == "fg_sage_hd64"
        name = script.padded_backend("fg_sage_hd64", head_dim=32)
        assert name == "fg_sage_hd64_padded64" and fluxlab.registry.get_backend(name).caps.quantised
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 200, 4, 32, generator=gen) for _ in range(3))
        with pytest.raises(fluxlab.FluxlabError):
            fluxlab.attention(q, k, v, backend="fg_sage_hd64")  # the 64-only kernel refuses head_dim 32
        padded = fluxlab.attention(q, k, v, backend=name)
        direct = emu_sage(q, k, v, scale=32 ** -0.5)
        exact = fluxlab.attention(q, k, v, backend="sdpa_math")
        assert padded.shape == q.shape
        assert fluxlab.util.rel_l2(padded, direct) < 1e-6  # padding changes nothing but rounding order
        assert fluxlab.util.rel_l2(padded, exact) > 1e-4  # and it is still the quantised kernel, not sdpa
    finally:
        fluxlab.registry.unregister_backend("fg_sage_hd64")
        fluxlab.registry.unregister_backend("fg_sage_hd64_padded64")


def test_readme_block_says_not_yet_measured_without_the_results_file(tmp_path):
    numbers = load_benchmark("readme_numbers")
    text = numbers.render("decide-frontier", tmp_path)
    assert "not yet measured" in text and "frontier_gpu.json" in text
    assert not re.search(r"\d\.\d|\d ?ms|×", text)  # no measured number invented


@pytest.mark.slow
def test_readme_block_renders_the_results_file(dry_run, tmp_path):
    out, data = dry_run
    numbers = load_benchmark("readme_numbers")
    target = tmp_path / "h200" / "frontier"
    target.mkdir(parents=True)
    shutil.copy(out / "frontier_gpu.json", target)
    shutil.copy(out / "frontier_gpu.png", target)
    text = numbers.render("decide-frontier", tmp_path)
    assert text.startswith("**DRY RUN**")  # a dry run can never read as a measurement
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(data["dev"]["rows"])
    paired = {r["k"]: r for r in data["embedded_vs_dev_time"]}
    for line, row in zip(table, data["dev"]["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["name"] and cells[1] == f"{row['step_ms']:.1f}"
        assert cells[3] == f"{row['final_latent_rel_l2']:.3g}" and (cells[4] == "P") == row["pareto"]
        assert (cells[9] == "P") == paired[row["k"]]["pareto"] and cells[8] == paired[row["k"]]["verdict"]
    assert "frontier_gpu.png" in text
    assert math.isfinite(data["dev"]["spread"]["final_latent_rel_l2"])
