"""Records: safetensors + JSON manifest, bit-exact, atomic, hash-verified; replay compares with what was recorded."""

import hashlib
import json
import os

import pytest
import torch

import fluxlab
from fluxlab.compare import records as records_module
from fluxlab.compare.records import RecordIntegrityError, load_records, save_records
from fluxlab.compare.replay import replay
from fluxlab.record import AttentionRecord


def _records():
    gen = torch.Generator().manual_seed(7)
    fused = torch.randn(1, 40, 3, 2, 32, generator=gen).bfloat16()  # one QKV projection: q/k/v share storage
    q, k, v = fused.unbind(dim=2)
    out, lse = fluxlab.attention(q, k, v, backend="sdpa_flash", return_lse=True)
    half = [torch.randn(2, 24, 4, 16, generator=gen).half() for _ in range(3)]
    full = [torch.randn(1, 33, 2, 64, generator=gen) for _ in range(3)]
    return [
        AttentionRecord(q, k, v, scale=32**-0.5, out=out, lse=lse, layer="transformer_blocks.0.attn", step=0,
                        backend="sdpa_flash", text_tokens=8, meta={"note": "double block", "dtype": torch.bfloat16}),
        AttentionRecord(*half, scale=0.3, out=None, layer="single_transformer_blocks.1.attn", step=3,
                        branch="uncond", meta={"inf": float("inf")}),
        AttentionRecord(*full, scale=1 / 7, causal=True, out=fluxlab.attention(*full, causal=True, scale=1 / 7),
                        backend="sdpa"),
    ]


def _bits(t):
    return t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous().view(
        {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_round_trip_is_bit_exact(tmp_path):
    records = _records()
    manifest_path = save_records(tmp_path / "run", records)
    loaded, manifest = load_records(tmp_path / "run")
    assert manifest_path == tmp_path / "run" / "manifest.json"
    assert len(loaded) == len(records)
    for before, after in zip(records, loaded):
        for name in ("q", "k", "v", "out", "lse"):
            a, b = getattr(before, name), getattr(after, name)
            if a is None:
                assert b is None
                continue
            assert b.dtype == a.dtype and b.shape == a.shape
            assert torch.equal(_bits(a), _bits(b)), name
        assert after.scale == before.scale  # the exact float
        assert (after.layer, after.step, after.branch, after.backend, after.text_tokens, after.causal) == (
            before.layer, before.step, before.branch, before.backend, before.text_tokens, before.causal)
    assert loaded[0].meta == {"note": "double block", "dtype": "bfloat16"}
    assert loaded[1].meta == {"inf": "inf"}


def test_manifest_says_where_and_how(tmp_path):
    save_records(tmp_path, _records()[:1], extra={"command": "pytest"})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[1] == "manifest.json" and files[0].endswith(".safetensors")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["platform"]["vendor"] == fluxlab.current_platform().vendor
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["fluxlab"] and "diffusers" in manifest["versions"]
    assert manifest["backends"] == ["sdpa_flash"]
    assert manifest["tensor_file"] == files[0]
    assert manifest["tensor_sha256"] == hashlib.sha256((tmp_path / files[0]).read_bytes()).hexdigest()
    assert manifest["git"] is None or len(manifest["git"]["commit"]) == 40
    assert manifest["extra"] == {"command": "pytest"}
    assert (tmp_path / files[0]).read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle


def test_tampered_tensor_file_is_refused_naming_file_and_hashes(tmp_path):
    save_records(tmp_path, _records())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    tensor_file = tmp_path / manifest["tensor_file"]
    data = bytearray(tensor_file.read_bytes())
    data[-3] ^= 0x01  # one bit of one value
    tensor_file.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(RecordIntegrityError) as info:
        load_records(tmp_path)
    message = str(info.value)
    assert str(tensor_file) in message and actual in message and manifest["tensor_sha256"] in message
    assert "Refusing to load" in message


def test_tampered_manifest_is_refused(tmp_path):
    save_records(tmp_path, _records())
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tensor_file"] = "../elsewhere.safetensors"
    path.write_text(json.dumps(manifest))
    with pytest.raises(RecordIntegrityError, match="expected a file name inside the record folder"):
        load_records(tmp_path)
    path.write_text("{ not json")
    with pytest.raises(RecordIntegrityError, match="not valid JSON"):
        load_records(tmp_path)


def test_failed_save_leaves_the_previous_save_intact(tmp_path, monkeypatch):
    old = _records()[:1]
    save_records(tmp_path, old)
    before = sorted(p.name for p in tmp_path.iterdir())
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("manifest.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(records_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_records(tmp_path, _records()[1:])
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp files, no orphaned tensor file
    loaded, _ = load_records(tmp_path)
    assert len(loaded) == 1 and torch.equal(loaded[0].q, old[0].q)


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(*args, **kwargs):
        raise RuntimeError("safetensors failed")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(RuntimeError):
        save_records(tmp_path / "new", _records())
    assert not (tmp_path / "new").exists()


def test_resave_replaces_and_removes_the_old_tensor_file(tmp_path):
    save_records(tmp_path, _records()[:1])
    save_records(tmp_path, _records()[1:])
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    loaded, _ = load_records(tmp_path)
    assert len(loaded) == 2


def test_replay_compares_with_the_recorded_outputs(tmp_path):
    records = _records()
    records[2].out = records[2].out.clone()
    records[2].out[0, 5, 1] += 0.5  # the "other machine" got token 5, head 1 wrong
    save_records(tmp_path, records)
    report = replay(tmp_path, backends=["sdpa"], progress=False)
    rows = {(r.backend.split("@")[0], r.input): r for r in report.rows}
    good = rows[("recorded:sdpa_flash", "transformer_blocks.0.attn/step0")]
    bad = rows[("recorded:sdpa", "record2")]
    assert good.verdict == "pass" and good.source == "recorded output"
    assert bad.verdict == "fail" and bad.worst_head == 1 and bad.worst_token == 5
    assert rows[("sdpa", "record2")].rel_l2_vs_recorded > 1e-2
    assert rows[("sdpa", "transformer_blocks.0.attn/step0")].rel_l2_vs_recorded < 1e-2
    assert report.meta["recorded"]["versions"]["torch"] == torch.__version__
    assert "@" in good.backend  # says which machine the recorded output came from
    assert report.verdicts["sdpa"] == "pass"


def test_results_are_stored_with_the_records(tmp_path):
    from fluxlab.compare import compare_attention

    records = _records()[:1]
    report = compare_attention(records, backends=["sdpa"], progress=False)
    save_records(tmp_path, records, results=report)
    _, manifest = load_records(tmp_path)
    assert [r["backend"] for r in manifest["results"]] == [r.backend for r in report.rows]
    assert manifest["results"][1]["verdict"] == "pass"
