"""`fluxlab generate`: a PNG and a manifest per backend, atomically written; bad input refused before loading."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import diffusers  # noqa: E402,F401

from fluxlab.cli import main  # noqa: E402
from fluxlab.errors import InvalidSizeError  # noqa: E402
from fluxlab.models.generate import parse_size  # noqa: E402


def test_generate_writes_images_and_manifests(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["generate", "--prompt", "a red circle", "--seed", "3", "--steps", "2", "--size", "64x32",
               "--backends", "sdpa,reference", "--out", str(out), "--variant", "klein", "--model", "tiny",
               "--max-sequence-length", "64", "--no-progress"])
    assert rc == 0
    for backend in ("sdpa", "reference"):
        image = Image.open(out / backend / "image.png")
        assert image.size == (64, 32)
        manifest = json.loads((out / backend / "manifest.json").read_text())
        assert manifest["backend"] == backend
        assert manifest["attention_calls"] == {backend: 4 * 2 * 2}  # layers x steps x CFG branches
        assert manifest["seed"] == 3 and manifest["steps"] == 2
        assert manifest["size"] == {"width": 64, "height": 32}
        assert manifest["platform"]["vendor"] == "cpu"
        assert set(manifest["versions"]) >= {"torch", "diffusers", "transformers", "fluxlab", "python"}
        assert len(manifest["timings"]["steps_s"]) == 2 and manifest["timings"]["generate_s"] > 0
        assert manifest["model"]["pipeline"] == "Flux2KleinPipeline"
    assert not list(out.rglob(".*.tmp"))  # no temporary files left behind
    assert "reference" in capsys.readouterr().out


@pytest.mark.parametrize("size", ["65", "64x100", "0", "big"])
def test_size_not_a_multiple_of_16_is_refused_before_generating(size, tmp_path, capsys):
    assert main(["generate", "--model", "tiny", "--size", size, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "multiple of 16" in err or "WIDTHxHEIGHT" in err
    assert not (tmp_path / "x").exists()


def test_parse_size():
    assert parse_size("64") == (64, 64) and parse_size("64x96") == (64, 96) and parse_size(128) == (128, 128)
    with pytest.raises(InvalidSizeError, match="use 96 or 112"):
        parse_size("100")


def test_unknown_or_unavailable_backend_is_refused_before_loading(tmp_path, capsys):
    assert main(["generate", "--backends", "sdpa,sdpa_flsh", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'sdpa_flash'" in capsys.readouterr().err
    assert main(["generate", "--backends", "aiter", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "aiter runs on amd" in capsys.readouterr().err


def test_demo_side_by_side_writes_grid_and_manifest(tmp_path):
    from fluxlab.demo import exact_backends, flux2_side_by_side

    names = exact_backends("cpu")
    assert names[0] == "sdpa" and {"sdpa_flash", "reference"} <= set(names)
    assert not {"sage", "aiter_sage"} & set(names)  # quantised kernels are not "exact"
    rows = flux2_side_by_side(tmp_path, steps=1, progress=False)  # the README demo's model: "embedded" (Klein)
    assert [r["backend"] for r in rows] == names
    # 4 double + 4 single blocks, x 2 true-CFG branches, for one step: every call through the named backend
    assert all(r["attention_calls"] == {r["backend"]: 16} for r in rows)
    assert all(r["max_abs_diff_vs_first"] <= 2 for r in rows)  # exact kernels: at most rounding, in 8-bit pixels
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > len(names) * 64
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["source"] == "embedded" and manifest["variant"] == "klein"
    assert [r["backend"] for r in manifest["backends"]] == names
    assert all((tmp_path / path).is_file() for path in manifest["images"].values())
