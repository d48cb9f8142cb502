"""benchmarks/amd_quant.py: its dry run, and docs/amd_quant.md's table generated from the committed result, whose
emulated cosines must order the formats as aiter's published ones do."""

import json

from _benchmarks import ROOT, load_benchmark

script = load_benchmark("amd_quant")


def test_tiny_dry_run_measures_every_format(tmp_path):
    assert script.main(["--tiny", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "amd_quant.json").read_text())
    rows = data["kernel"]["rows"]["transformer"]
    assert set(rows) == {"emu_aiter (bf16)", *script.FORMATS}
    for fmt in script.FORMATS:  # quantised: further from float64 than the bf16 kernel, and not noise
        assert rows["emu_aiter (bf16)"]["rel_l2_vs_fp64"] < rows[fmt]["rel_l2_vs_fp64"] < 0.5
        assert 0.9 < rows[fmt]["cosine_vs_bf16"] < 1.0
    assert "images" not in data and data["published"]["cosine_vs_bf16"]["mxfp4"] == 0.968871


def test_docs_table_is_generated_from_the_committed_result():
    data = json.loads(script.RESULT.read_text())
    assert script.docs_section(data) in (ROOT / "docs" / "amd_quant.md").read_text()


def test_emulated_cosines_order_the_formats_as_aiter_publishes():
    data = json.loads(script.RESULT.read_text())
    published = data["published"]["cosine_vs_bf16"]
    emulated = {fmt: data["kernel"]["rows"]["transformer"][fmt]["cosine_vs_bf16"] for fmt in published}
    assert sorted(published, key=published.get) == sorted(emulated, key=emulated.get)
    assert set(data["images"]["rows"]) >= {f"{script.PADDED}:format={fmt}" for fmt in script.FORMATS}
