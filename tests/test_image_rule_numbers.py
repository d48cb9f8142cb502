"""The image rule's text (IMAGE_RULE_TEXT) quotes measurements: they must agree with the committed results file."""

from __future__ import annotations

import json
from pathlib import Path

from fluxlab.compare import IMAGE_RULE_TEXT
from fluxlab.compare.image_rule import FIDELITY_BUDGET, judge_budget

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu" / "image_rule.json"

# (backends, field, low, high) as IMAGE_RULE_TEXT states them; worst seed at each step count.
QUOTED = [
    (("sdpa", "sdpa_math", "sdpa_flash", "flex"), "final_latent_rel_l2_worst", 0.8e-6, 1.1e-6, "0.8-1.1e-6"),
    (("scale_1pct",), "final_latent_rel_l2_worst", 1.1e-2, 1.4e-2, "1.1-1.4e-2"),
    (("scale_10pct",), "final_latent_rel_l2_worst", 0.10, 0.16, "0.10-0.16"),
    (("scale_10pct",), "ssim_worst", 0.988, 0.992, "0.988-0.992"),
    (("scale_10pct",), "psnr_worst", 33.0, 35.0, "33-35 dB"),
    (("bf16_io",), "final_latent_rel_l2_worst", 3.3e-3, 4.7e-3, "3.3-4.7e-3"),
]


def runs():
    data = json.loads(RESULTS.read_text())
    assert [r["steps"] for r in data["runs"]] == [4, 8] and data["seeds"] == [0, 1]
    return data["runs"]


def test_quoted_ranges_hold_in_the_results_file():
    text = " ".join(IMAGE_RULE_TEXT.split())
    for backends, field, low, high, quoted in QUOTED:
        assert quoted in text, f"IMAGE_RULE_TEXT no longer quotes {quoted}; update QUOTED"
        for run in runs():
            for backend in backends:
                value = run["rows"][backend][field]
                assert low * 0.995 <= value <= high * 1.005, (backend, field, run["steps"], value, quoted)


def test_verdicts_in_the_results_file_follow_the_rule():
    for run in runs():
        rows = run["rows"]
        assert all(rows[b]["verdict"] == "pass" for b in ("reference", "sdpa", "sdpa_math", "sdpa_flash", "flex"))
        assert all(rows[b]["verdict"] == "fail" for b in ("scale_1pct", "scale_10pct", "bf16_io"))
        bug = rows["scale_10pct"]
        # sglang's SSIM gate alone would pass the 10 % scale bug; the latent term of the budget fails it
        assert bug["ssim_worst"] >= FIDELITY_BUDGET.pass_ssim
        assert judge_budget(bug["ssim_worst"], bug["psnr_worst"], bug["final_latent_rel_l2_worst"])[0] == "fail"
        # rounding to bf16 stays inside the budget with room
        bf16 = rows["bf16_io"]
        assert judge_budget(bf16["ssim_worst"], bf16["psnr_worst"], bf16["final_latent_rel_l2_worst"])[0] == "pass"
        assert rows["emu_bf16"]["verdict"] == "pass"
