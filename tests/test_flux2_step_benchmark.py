"""benchmarks/flux2_step.py runs end to end: its --tiny CPU dry run exercises the GPU run's code path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import diffusers  # noqa: E402,F401

from fluxlab.registry import all_backends  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flux2_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("flux2_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_dry_run_writes_json_and_markdown(tmp_path):
    bench = _load()
    rc = bench.main(["--tiny", "--sizes", "64", "--repeats", "1", "--warmup", "0", "--skip-cpu",
                     "--backends", "sdpa", "reference", "--out", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "flux2_step.json").read_text())
    block = results["sizes"]["64"]
    rows = {(r["via"], r["backend"]): r for r in block["rows"]}
    assert set(rows) == {("diffusers", "native"), ("diffusers", "_native_cudnn"), ("diffusers", "_native_flash"),
                         ("fluxlab", "auto"), ("fluxlab", "sdpa"), ("fluxlab", "reference")}
    assert "error" in rows[("diffusers", "_native_cudnn")]  # no cuDNN on CPU: recorded, the run goes on
    assert rows[("fluxlab", "sdpa")]["ran"] == {"sdpa": 4}
    assert rows[("fluxlab", "sdpa")]["rel_l2_vs_native"] == 0.0  # same kernel, bit-identical step
    assert rows[("fluxlab", "reference")]["ran"] == {"reference": 4}
    assert block["noop"]["ran"] == {"noop_attention": 4} and block["seq"] == 512 + 16
    assert set(block["attention_alone"]) == {"sdpa", "reference"}
    assert block["target"]["diffusers_fastest"] in ("native", "_native_flash")
    assert "noop_attention" not in {b.name for b in all_backends()}  # unregistered afterwards
    assert "TINY DRY RUN" in (tmp_path / "flux2_step.md").read_text()
