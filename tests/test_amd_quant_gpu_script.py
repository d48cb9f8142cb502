"""benchmarks/amd_quant_gpu.py: the CPU dry run (no Triton here: the emulator side runs, the aiter side says why
not) and the mismatch classification it reports on the GPU, on crafted values."""

import json
import math

import torch
from _benchmarks import load_benchmark

script = load_benchmark("amd_quant_gpu")


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_tiny_dry_run_writes_the_emulator_side_and_why_aiter_did_not_run(tmp_path):
    assert script.main(["--tiny", "--device", "cpu", "--aiter-root", str(tmp_path / "absent"),
                        "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "amd_quant_gpu.json").read_text())
    assert data["aiter"]["available"] is False and data["aiter"]["reason"]
    assert data["verdict"].startswith("not run") and data["comparisons"] == {}
    assert data["shape"] == [1, 64, 2, 128] and set(data["emulator"]) == {"normal", "outliers", "ties"}
    # ties: every block has amax 6, after the rotation the scales spread; the per-tensor fp8 scale is 6 / 448
    assert data["emulator"]["ties"]["fp8_scale"] == (t(6.0) / t(448.0)).item()
    assert all(row["mxfp4_downcast_scale_codes"] for row in data["emulator"].values())
    assert "v_rndne_f32" in data["not_runnable_on_nvidia"]["int8_per_tensor"]
    assert data["provenance"]["date"] and "amd_quant_gpu.py" in data["command"]
    assert "not run" in (tmp_path / "amd_quant_gpu.md").read_text()


def test_fp8_boundary_and_power_of_two_probes():
    # e4m3fn around 17: 16 and 18 are neighbours, 17 is their midpoint; 17.5 rounds to 18 from either side
    assert script.near_fp8_boundary(t(17.0, 17.5)).tolist() == [True, False]
    assert script.near_power_of_two(t(1.0, 1.5, 0.5, 0.99999994)).tolist() == [True, False, True, True]


def test_same_bits_treats_nan_as_equal_and_zeros_by_sign():
    assert script.same_bits(t(math.nan, 0.0, 1.0), t(math.nan, -0.0, 1.0)).tolist() == [True, False, True]


def test_mismatches_go_to_the_first_cause_that_explains_them():
    match = torch.tensor([True, False, False, False])
    causes = {"a": torch.tensor([False, True, True, False]), "b": torch.tensor([False, True, False, False])}
    row = script.summarise(match, causes, [])
    assert row["mismatched"] == 3 and row["causes"] == {"a": 2, "b": 0, "unexplained": 1}
    assert script.verdict(row) == "differs"
    row["causes"]["unexplained"] = 0
    assert script.verdict(row) == "identical up to a"
    assert script.verdict(script.summarise(torch.tensor([True]), {}, [])) == "bit-identical"


def test_interpreter_cause_is_empty_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not script.interpreter_carry(t(32.0), t(16.0)).any()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert script.interpreter_carry(t(32.0, -32.0, 16.0), t(16.0, 16.0, 32.0)).tolist() == [True, False, False]
