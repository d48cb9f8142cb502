"""Image-level bands (fluxlab.compare.bands): the committed band file, the rule built on it, and verdicts in bands
on the embedded model (real generations on the CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import fluxlab
from fluxlab.compare import bands as B
from fluxlab.compare.images import compare_images

ROOT = Path(__file__).resolve().parents[1]
BAND_FILE = ROOT / "benchmarks" / "results" / "cpu" / "image_bands.json"
# every committed CPU band: 32 text tokens (fast; the tests below use it), and the settings of compare_images'
# defaults (4 steps, 512 text tokens), the README and notebook 03 (8 steps, 512) and notebook 03's AMD cell (144)
CPU_BAND_FILES = [path for path in sorted(B.RESULTS.glob(B.BAND_GLOB)) if path.parent.name == "cpu"]
# the setting the committed CPU band was measured in (benchmarks/image_bands.py defaults)
STEPS, SIZE, FAST = 4, 64, {"max_sequence_length": 32}
PROMPT = B.DEFAULT_BAND_PROMPTS[0]


def data(path=BAND_FILE):
    return json.loads(path.read_text())


# -- the committed file ----------------------------------------------------------------------------------------------


def test_the_default_settings_have_committed_cpu_bands():
    settings = {(s["dtype"], s["steps"], s["max_sequence_length"])
                for s in (data(path)["setting"] for path in CPU_BAND_FILES)}
    assert settings == {("float32", 4, 32), ("float32", 4, 512), ("float32", 8, 512), ("float32", 8, 144)}
    for path in CPU_BAND_FILES:  # each file says how to measure it again, and its own name is in that command
        assert path.name == "image_bands.json" or f"--out benchmarks/results/cpu/{path.name}" in data(path)["command"]


@pytest.mark.parametrize("path", CPU_BAND_FILES, ids=lambda p: p.name)
def test_band_file_agrees_with_its_derivation(path):
    d = data(path)
    assert d["format"] == B.BAND_FORMAT
    assert d["bands"] == B.derive_bands(d["cells"]), "bands are not the largest pair distances of the cells"
    band = B.ImageBand.load(path)
    assert band.headroom() == pytest.approx(d["headroom"])
    assert d["limits"] == {"pass_bands": B.PASS_BANDS, "warn_bands": B.WARN_BANDS, "floors": B.FLOORS}
    # where and how it was measured
    assert d["provenance"]["git"]["commit"] and d["provenance"]["date"] and d["provenance"]["versions"]["torch"]
    assert d["command"].startswith("python benchmarks/image_bands.py")
    assert len(d["prompts"]) >= 3 and len(d["seeds"]) >= 2
    assert len(d["cells"]) == len(d["prompts"]) * len(d["seeds"])
    # every legitimate change ran in every cell, and both classes have a nonzero band in every metric
    assert all(not cell["missing"] for cell in d["cells"])
    assert all(d["bands"][B.LOW_PRECISION][m] > 0 for m in B.METRICS)
    assert d["bands"][B.EXACT]["final_latent_rel_l2"] > 0
    # the low-precision band is wider than the exact one: bf16 rounding moves a generation more than float32's
    assert d["bands"][B.LOW_PRECISION]["final_latent_rel_l2"] > 100 * d["bands"][B.EXACT]["final_latent_rel_l2"]
    # aiter's RTNE (0) and RTNA (1) are legitimate, round-toward-zero (2) is not part of the band
    low = d["variants"][B.LOW_PRECISION]
    assert "emu_aiter:how_v3_bf16_cvt=0" in low and "emu_aiter:how_v3_bf16_cvt=1" in low
    assert not any("how_v3_bf16_cvt=2" in spec for kinds in d["variants"].values() for spec in kinds)
    from fluxlab.numerics import BF16_MODE_NAMES, RTNA, RTNE

    assert "even" in BF16_MODE_NAMES[RTNE] and "away" in BF16_MODE_NAMES[RTNA]


@pytest.mark.parametrize("path", CPU_BAND_FILES, ids=lambda p: p.name)
def test_band_file_verdicts_of_the_judged_kernels_follow_the_rule(path):
    d = data(path)
    rows = next(iter(d["judged"].values()))
    band = B.ImageBand.load(path)
    for name, row in rows.items():
        if name in ("sdpa",):
            continue
        kind = B.EXACT if name == "band_scale_1pct" else B.LOW_PRECISION
        if kind == B.LOW_PRECISION:
            numbers = B.from_image_metrics(row["ssim_worst"], row["psnr_worst"], row["final_latent_rel_l2_worst"])
            assert B.judge_with_band(numbers, band, B.LOW_PRECISION)[0] == row["verdict"], name
        assert "bands" in row["note"], row["note"]
    assert rows["band_scale_1pct"]["verdict"] == "fail"
    assert rows["band_scale_10pct_bf16"]["verdict"] == "fail"


# -- the rule --------------------------------------------------------------------------------------------------------


def test_judge_in_bands_counts_bands_and_names_the_source():
    band = {"final_latent_rel_l2": 0.0062, "one_minus_ssim": 1e-4, "pixel_rmse": 1e-3}
    verdict, note, away = B.judge_in_bands({"final_latent_rel_l2": 0.021, "one_minus_ssim": 1e-4,
                                            "pixel_rmse": 1e-3}, band, "somewhere.json: RTNE vs RTNA")
    assert away == pytest.approx(0.021 / 0.0062) and verdict == "warn"
    assert "3.39 bands (band 0.0062)" in note and "somewhere.json: RTNE vs RTNA" in note
    assert B.judge_in_bands({"final_latent_rel_l2": 0.006}, band, "x", metrics=("final_latent_rel_l2",))[0] == "pass"
    assert B.judge_in_bands({"final_latent_rel_l2": 0.02}, band, "x", metrics=("final_latent_rel_l2",))[0] == "warn"
    assert B.judge_in_bands({"final_latent_rel_l2": 0.03}, band, "x", metrics=("final_latent_rel_l2",))[0] == "fail"
    assert B.judge_in_bands({"final_latent_rel_l2": math.nan}, band, "x")[0] == "fail"
    assert B.judge_in_bands({"final_latent_rel_l2": math.inf}, band, "x")[0] == "fail"
    # one metric out of band decides: an image far off with latents in band fails
    assert B.judge_in_bands({"final_latent_rel_l2": 0.001, "one_minus_ssim": 1e-2, "pixel_rmse": 1e-3}, band,
                            "x")[0] == "fail"
    # 1 - SSIM is quadratic in a small change: 4x the band in 1 - SSIM is 2 bands
    assert B.judge_in_bands({"one_minus_ssim": 4e-4}, band, "x", metrics=("one_minus_ssim",))[2] == pytest.approx(2)
    # a band of 0 (bit-identical variants) falls back to the floor, so rounding noise is not a failure
    assert B.judge_in_bands({"final_latent_rel_l2": 1e-6}, {"final_latent_rel_l2": 0.0}, "x",
                            metrics=("final_latent_rel_l2",))[0] == "pass"


def _band(rel: float, card: str, outputs=None, **setting) -> B.ImageBand:
    pair = {"a": "reference", "b": "sdpa", "class": B.LOW_PRECISION, "final_latent_rel_l2": rel,
            "one_minus_ssim": 1e-5, "pixel_rmse": 1e-4}
    return B.ImageBand({"model": "m", "steps": 4, **setting}, ["p"], [0], {B.LOW_PRECISION: {"x": "y"}},
                       [{"prompt": "p", "seed": 0, "card": card, "pairs": [pair]}], cards=[card],
                       source=f"{card}.json", outputs=outputs or {})


def test_cross_card_merge_adds_the_card_change_and_refuses_other_settings(tmp_path):
    latent = np.ones((1, 4, 8), dtype=np.float32)
    h100 = _band(0.01, "h100", {"p|0": latent})
    h200 = _band(0.02, "h200", {"p|0": latent * 1.05})
    h200.save(tmp_path / "h200.json")
    loaded = B.ImageBand.load(tmp_path / "h200.json")
    assert loaded.bands == h200.bands and np.array_equal(loaded.outputs["p|0"], latent * 1.05)
    merged = B.merge_bands([h100, loaded])
    assert merged.cards == ["h100", "h200"]
    cross = [c for c in merged.cells if c["card"] == "cross-card"]
    assert cross and cross[0]["pairs"][0]["final_latent_rel_l2"] == pytest.approx(0.05 / 1.05, rel=1e-6)
    assert merged.bands[B.LOW_PRECISION]["final_latent_rel_l2"] == pytest.approx(0.05 / 1.05, rel=1e-6)
    assert "h100 vs h200" in merged.source_text(B.LOW_PRECISION)
    with pytest.raises(B.ImageBandError, match="steps 4 in the band, 8 here|cannot be merged"):
        B.merge_bands([h100, _band(0.01, "h200", steps=8)])


def test_band_load_errors_name_the_fix(tmp_path):
    with pytest.raises(B.ImageBandError, match="measure_image_band"):
        B.ImageBand.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(B.ImageBandError, match="ImageBand.save"):
        B.ImageBand.load(tmp_path / "bad.json")


# -- on the embedded model -------------------------------------------------------------------------------------------


def _scale_1pct(q, k, v, *, scale, causal=False, return_lse=False, **options):
    return fluxlab.attention(q, k, v, backend="sdpa", scale=scale * 1.01, causal=causal)


@pytest.fixture(scope="module")
def pipe():
    fluxlab.register_backend("bands_scale_1pct", _scale_1pct, replace=True, description="planted: scale x1.01")
    pipeline = fluxlab.load_flux2("embedded")
    yield pipeline
    fluxlab.detach(pipeline)
    fluxlab.registry.unregister_backend("bands_scale_1pct")


def test_committed_band_applies_to_its_setting_only(pipe):
    setting = B.setting_of(pipe, steps=STEPS, height=SIZE, width=SIZE, pipe_kwargs=FAST)
    band = B.default_band(setting)
    assert band is not None and band.source == "benchmarks/results/cpu/image_bands.json"
    other = B.setting_of(pipe, steps=STEPS + 1, height=SIZE, width=SIZE, pipe_kwargs=FAST)
    assert B.default_band(other) is None
    with pytest.raises(B.ImageBandError, match=r"steps 4 in the band, 5 here.*measure_image_band"):
        B.resolve_band(BAND_FILE, other)
    # a mismatching band is refused before any generation
    with pytest.raises(B.ImageBandError, match="steps 4 in the band, 2 here"):
        compare_images(pipe, ["sdpa", "emu_bf16"], steps=2, band=BAND_FILE, **FAST)


@pytest.mark.slow
def test_verdicts_in_bands_exact_pass_planted_fails_and_notes_name_the_band(pipe):
    backends = ["sdpa", "sdpa_math", "reference", "bands_scale_1pct", "emu_aiter:how_v3_bf16_cvt=1"]
    result = compare_images(pipe, backends, prompt=PROMPT, steps=STEPS, seeds=[0], height=SIZE, width=SIZE, **FAST)
    verdicts, rows = result.verdicts, result.metrics
    for name in ("sdpa", "sdpa_math", "reference"):
        assert verdicts[name] == "pass", rows[name].verdict_note
    planted = rows["bands_scale_1pct"]
    assert verdicts["bands_scale_1pct"] == "fail", planted.verdict_note
    assert planted.final_latent_rel_l2_worst > 10 * B.WARN_BANDS * result.spread  # many bands away, not borderline
    assert "bands (band" in planted.verdict_note and "exact kernels sdpa, sdpa_math, reference" in planted.verdict_note
    rtna = rows["emu_aiter:how_v3_bf16_cvt=1"]
    assert verdicts["emu_aiter:how_v3_bf16_cvt=1"] == "pass", rtna.verdict_note  # part of the band it is judged by
    assert "benchmarks/results/cpu/image_bands.json: RTNE vs RTNA" in rtna.verdict_note


@pytest.mark.slow
def test_measure_image_band_for_a_users_setting_and_save_load(pipe, tmp_path):
    from fluxlab.compare import measure_image_band

    band = measure_image_band(pipe, prompts=["a blue dot"], seeds=[3], steps=1, classes=(B.EXACT,), **FAST)
    pairs = band.cells[0]["pairs"]
    assert len(pairs) == 6 and {p["class"] for p in pairs} == {B.EXACT}  # 4 exact variants, every pair
    rerun = next(p for p in pairs if {p["a"], p["b"]} == {"sdpa", "sdpa#rerun"})
    assert rerun["final_latent_rel_l2"] >= 0
    assert band.bands == B.derive_bands(band.cells) and band.bands[B.EXACT]["final_latent_rel_l2"] > 0
    assert band.setting["steps"] == 1 and band.setting["model"] == "fluxlab/models/embedded"
    band.save(tmp_path / "mine.json")
    again = B.ImageBand.load(tmp_path / "mine.json")
    assert again.bands == band.bands and again.setting == band.setting
    with pytest.raises(B.ImageBandError, match="no low_precision class"):
        B.judge_with_band({"final_latent_rel_l2": 0.1}, again, B.LOW_PRECISION)


@pytest.mark.slow
def test_locate_drift_counts_its_drift_in_bands(pipe):
    drift = fluxlab.locate_drift(pipe, "sdpa", "bands_scale_1pct", prompt=PROMPT, steps=STEPS, height=SIZE,
                                 width=SIZE, budget=2, **FAST)
    band = B.ImageBand.load(BAND_FILE)
    assert drift.band == band.band(B.EXACT, "final_latent_rel_l2")  # an exact-class kernel: the exact band
    assert drift.bands_away == pytest.approx(drift.all_bad_drift / drift.band) and drift.bands_away > B.WARN_BANDS
    assert "bands (band" in drift.headline() and "benchmarks/results/cpu/image_bands.json" in drift.headline()
    assert drift.as_dict()["bands_away"] == drift.bands_away
