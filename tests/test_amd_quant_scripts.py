"""benchmarks/amd_quant_dev.py (GPU: each MHA v4 format's final-latent drift on the [dev]-size model): its CPU dry run
runs the GPU run's code path; benchmarks/amd_quant_frontier.py: the committed CPU result is fidelity only, its Pareto
marks follow the rule, and docs/amd_quant.md shows its table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _benchmarks import ROOT, load_benchmark


@pytest.fixture(scope="module")
def dev_dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("amd_quant_dev")
    script = load_benchmark("amd_quant_dev")
    assert script.main(["--tiny", "--out", str(out), "--steps", "2", "--formats", "i8fp8,mxfp4",
                        "--budget-s", "1e9"]) == 0  # the code path, not the clock: nothing skipped when busy
    return out, json.loads((out / "amd_quant_dev.json").read_text())


def test_dev_dry_run_runs_every_kernel_on_every_step(dev_dry_run):
    out, data = dev_dry_run
    assert sorted(p.name for p in out.iterdir()) == ["amd_quant_dev.json", "amd_quant_dev.md"]
    assert "DRY RUN" in (out / "amd_quant_dev.md").read_text()
    assert data["dry_run"] and data["complete"] and data["stands_in_for"] == {"sdpa": "sdpa_cudnn",
                                                                               "sdpa_math": "sdpa_flash"}
    assert data["model"]["head_dim"] == 128  # MHA v4's head_dim: the emulators see the model's own q/k/v
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["sdpa", "sdpa_math", "emu_aiter_quant:format=i8fp8", "emu_aiter_quant:format=mxfp4",
                          "emu_aiter:how_v3_bf16_cvt=1"]
    for name, row in rows.items():  # the schedule asked for that kernel in every layer of every step
        assert row["kernels"] == [name, name], name
        assert row["finite"] and "error" not in row and "skipped" not in row
    assert rows["sdpa"]["final_latent_rel_l2"] == 0.0
    spread = data["spread"]["final_latent_rel_l2"]
    assert 0 < spread < 0.05
    i8, mx4 = (rows[f"emu_aiter_quant:format={f}"] for f in ("i8fp8", "mxfp4"))
    for row in (i8, mx4):  # quantised: moved, not exploded; per-step drift ends at the final one
        assert 0 < row["final_latent_rel_l2"] < 0.5
        assert len(row["per_step_rel_l2"]) == 2 and row["per_step_rel_l2"][-1] == row["final_latent_rel_l2"]
        assert row["over_exact_spread"] == pytest.approx(row["final_latent_rel_l2"] / spread)
        assert row["final_latent_rel_l2_vs_emu_aiter"] > 0
    assert i8["final_latent_rel_l2"] != mx4["final_latent_rel_l2"]  # two formats, two different kernels


def test_dev_script_refuses_without_a_gpu_or_with_an_unknown_format(tmp_path):
    script = load_benchmark("amd_quant_dev")
    with pytest.raises(SystemExit):
        script.main(["--tiny", "--out", str(tmp_path), "--formats", "int4"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no GPU here"):
            script.main(["--out", str(tmp_path)])


def _dominated(point, others) -> bool:
    share, drift = point
    return any(s >= share and d <= drift and (s > share or d < drift) for s, d in others)


def test_committed_frontier_is_fidelity_only_with_exact_ends_per_format():
    script = load_benchmark("amd_quant_frontier")
    data = json.loads((ROOT / "benchmarks" / "results" / "cpu" / "amd_quant" / "amd_quant_frontier.json").read_text())
    assert not data["dry_run"] and set(data["formats"]) == set(script.FORMATS)
    assert data["exact"] == "emu_aiter" and "Speed not measured" in data["speed"]
    steps = data["steps"]
    for fmt, entry in data["formats"].items():
        rows = entry["rows"]
        assert all("step_ms" not in r and "speedup" not in r for r in rows)  # no emulator wall time as speed
        shares = sorted(r["quantised_share"] for r in rows)
        assert shares == sorted([0.0] + [(steps - 2 * k) / steps for k in range(4) if 2 * k < steps]), fmt
        exact = next(r for r in rows if r["quantised_share"] == 0.0)
        assert exact["final_latent_rel_l2"] == 0.0 and exact["pareto"]
        everywhere = next(r for r in rows if r["quantised_share"] == 1.0)
        assert everywhere["final_latent_rel_l2"] > 0 and not any(r["error"] for r in rows)
        points = [(r["quantised_share"], r["final_latent_rel_l2"]) for r in rows]
        for row, point in zip(rows, points):
            assert row["pareto"] == (not _dominated(point, [p for p in points if p is not point])), (fmt, row)
            assert row["verdict"] in ("pass", "warn", "fail") and math.isfinite(row["final_latent_rel_l2"])
    assert script.table(data) in (ROOT / "docs" / "amd_quant.md").read_text()
