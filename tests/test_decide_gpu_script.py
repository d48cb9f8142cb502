"""benchmarks/decide_gpu.py: its CPU dry run (--tiny) goes through the GPU run's code path, records the step-level
confirmation and the interleaved plan-vs-automatic rounds, and README's decide-gpu block renders from its JSON."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from _benchmarks import ROOT, load_benchmark


@pytest.mark.slow
def test_tiny_dry_run_records_the_confirmation_and_the_paired_rounds(tmp_path):
    from fluxlab.decide import AutotuneResult

    out = tmp_path / "h200" / "decide"
    assert load_benchmark("decide_gpu").main(["--tiny", "--sizes", "64", "--repeats", "3",
                                     "--confirm-rounds", "2", "--out", str(out)]) == 0
    results = json.loads((out / "decide_gpu.json").read_text())
    tune = results["autotune"][0]
    confirmation = tune["confirmation"]
    variants = {t["variant"] for t in confirmation["timings"]} | {v for t in confirmation["timings"]
                                                                  for v in t["same_as"]}
    assert {"per-layer plan", "automatic pick"} <= variants and tune["kept"] in variants
    assert all(len(t["times_ms"]) == 2 for t in confirmation["timings"]) or confirmation["rounds"] == 0
    # the kept plan against the automatic pick: 3 rounds timing both, a ratio per round, medians and spreads
    assert len(tune["plan_step_ms"]) == len(tune["automatic_step_ms"]) == len(tune["paired_ratios"]) == 3
    low, high = tune["paired_ratio_spread"]
    assert low <= tune["paired_ratio_median"] <= high
    assert tune["plan_over_automatic"] == tune["plan_median_ms"] / tune["automatic_median_ms"]
    plan = AutotuneResult.load(out / "autotune_plan_64.json")
    assert plan.confirmation is not None and plan.confirmation.kept == tune["kept"]
    assert "### Step-level confirmation at 64^2" in (out / "decide_gpu.md").read_text()

    # README's block renders from this JSON (a card name stands in for the GPU's)
    results["environment"]["card"] = "CPU dry run"
    (out / "decide_gpu.json").write_text(json.dumps(results))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        text = " ".join(load_benchmark("readme_numbers").decide_gpu(tmp_path).split())  # unwrapped
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert f"**{tune['kept']}** was kept" in text and f"{tune['paired_ratio_median']:.4f}×" in text
    shutil.rmtree(out)
