"""Records folders: safetensors + JSON manifest, bit-exact, atomic, locked, hash-verified, validated; replay compares
with what was recorded. Each bad input of issue 11 item 3 has its test here."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fluxlab
from fluxlab.compare import records as records_module
from fluxlab.compare.records import (RecordIntegrityError, RecordsFolderError, RecordsNotFoundError, load_records,
                                     save_records)
from fluxlab.errors import FluxlabError, InvalidInputError
from fluxlab.compare import replay
from fluxlab.record import AttentionRecord
from _child import SAFETY_CAP_S  # a hang guard, not a speed budget


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


# -- a path that holds no manifest is refused, never the parent's ----------------------------------------------------


def test_a_typo_below_a_records_folder_is_refused_not_the_parent_loaded(tmp_path):
    save_records(tmp_path / "run", _records()[:1])
    with pytest.raises(RecordsNotFoundError, match=r"typo: no such records folder .*run is a records folder"):
        load_records(tmp_path / "run" / "typo")
    with pytest.raises(RecordsNotFoundError, match="no such records folder"):
        replay(tmp_path / "elsewhere", backends=["sdpa"], progress=False)
    (tmp_path / "run" / "sub").mkdir()
    with pytest.raises(RecordsNotFoundError, match="holds no manifest.json"):
        load_records(tmp_path / "run" / "sub")
    tensor_file = next((tmp_path / "run").glob("*.safetensors"))
    with pytest.raises(RecordsNotFoundError, match="is a file, not a records folder"):
        load_records(tensor_file)
    loaded, _ = load_records(tmp_path / "run" / "manifest.json")  # naming the manifest itself is fine
    assert len(loaded) == 1
    assert issubclass(RecordsNotFoundError, FluxlabError) and issubclass(RecordsNotFoundError, FileNotFoundError)


# -- two processes saving into one folder ----------------------------------------------------------------------------

_SAVER = """
import sys, torch
from fluxlab.compare.records import save_records
from fluxlab.record import AttentionRecord
which, folder, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
gen = torch.Generator().manual_seed(which)
for i in range(rounds):
    q, k, v = (torch.randn(1, 64 + which, 2, 16, generator=gen) for _ in range(3))
    save_records(folder, [AttentionRecord(q, k, v, scale=0.25, layer=f"writer{which}", step=i)] * (4 + which))
"""


def test_two_processes_saving_into_one_folder_leave_one_complete_save(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    env = {**os.environ, "PYTHONPATH": str(Path(fluxlab.__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(which), str(folder), "12"], env=env,
                              stderr=subprocess.PIPE, text=True) for which in (1, 2)]
    errors = [proc.communicate(timeout=SAFETY_CAP_S)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    loaded, manifest = load_records(folder)  # whichever save came last, complete and hash-verified
    writer = loaded[0].layer
    assert writer in ("writer1", "writer2") and all(r.layer == writer for r in loaded)
    assert len(loaded) == 4 + int(writer[-1]) and loaded[0].step == 11
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", manifest["tensor_file"]])


# -- only fluxlab's own files are replaced ---------------------------------------------------------------------------


def test_a_resave_deletes_only_the_tensor_file_the_old_manifest_named(tmp_path):
    save_records(tmp_path, _records()[:1])
    first = json.loads((tmp_path / "manifest.json").read_text())["tensor_file"]
    users = {"attention-mine.safetensors": b"user data", "attention-0123456789abcdef.safetensors": b"also mine",
             "notes.txt": b"keep"}
    for name, data in users.items():
        (tmp_path / name).write_bytes(data)
    save_records(tmp_path, _records()[1:])
    second = json.loads((tmp_path / "manifest.json").read_text())["tensor_file"]
    assert second != first and not (tmp_path / first).exists()
    for name, data in users.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "manifest.json", second])


def test_save_refuses_a_folder_whose_manifest_is_not_fluxlabs(tmp_path):
    foreign = {"backend": "sdpa", "image": "image.png"}  # e.g. what `fluxlab generate` writes
    (tmp_path / "manifest.json").write_text(json.dumps(foreign))
    with pytest.raises(RecordsFolderError, match="not a valid fluxlab records manifest.*new folder"):
        save_records(tmp_path, _records()[:1])
    assert json.loads((tmp_path / "manifest.json").read_text()) == foreign
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecordsFolderError, match="is a file; save_records writes a folder"):
        save_records(tmp_path / "file", _records()[:1])


# -- links and malformed manifests -----------------------------------------------------------------------------------


def test_a_symlinked_tensor_file_or_manifest_is_refused(tmp_path):
    save_records(tmp_path / "real", _records()[:1])
    linked = tmp_path / "linked"
    linked.mkdir()
    manifest = json.loads((tmp_path / "real" / "manifest.json").read_text())
    (linked / "manifest.json").write_text(json.dumps(manifest))
    (linked / manifest["tensor_file"]).symlink_to(tmp_path / "real" / manifest["tensor_file"])
    with pytest.raises(RecordIntegrityError, match="is a symbolic link"):
        load_records(linked)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").symlink_to(tmp_path / "real" / "manifest.json")
    (other / manifest["tensor_file"]).write_bytes((tmp_path / "real" / manifest["tensor_file"]).read_bytes())
    with pytest.raises(RecordIntegrityError, match="manifest.json is a symbolic link"):
        load_records(other)


def _edit(entry_or_manifest, path, value):
    target = entry_or_manifest
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    (("records",), _DELETE, "field 'records' is missing"),
    (("records",), {"0": 1}, "field 'records' must be list, got dict"),
    (("tensor_sha256",), 12, "field 'tensor_sha256' must be str, got int"),
    (("format_version",), "1", "field 'format_version' must be int, got str"),
    (("records", 0), "q,k,v", r"records\[0\] must be a JSON object"),
    (("records", 0, "scale"), _DELETE, r"field 'records\[0\].scale' is missing"),
    (("records", 0, "scale"), "0.17", r"field 'records\[0\].scale' must be int or float, got str"),
    (("records", 0, "causal"), "yes", r"field 'records\[0\].causal' must be bool"),
    (("records", 0, "step"), True, r"field 'records\[0\].step' must be int or null, got bool"),
    (("records", 0, "tensors", "q"), _DELETE, r"'records\[0\].tensors.q' is missing"),
    (("records", 0, "tensors", "q", "shape"), [1, "40", 3, 32], r"'records\[0\].tensors.q.shape' must be a list"),
    (("records", 0, "tensors", "q", "shape"), [1, 40, 3, 16], r"'records\[0\].tensors.q' says bfloat16 \[1, 40, 3, 16\]"),
    (("records", 0, "tensors", "q", "dtype"), "bfloat17", r"'records\[0\].tensors.q.dtype' is 'bfloat17'"),
    (("records", 0, "tensors", "q", "key"), "9.q", r"'records\[0\].tensors.q.key' names '9.q'"),
    (("records", 0, "tensors", "extra"), {"key": "0.q"}, r"'records\[0\].tensors.extra' is not a record tensor"),
])
def test_a_malformed_manifest_is_refused_naming_the_field(tmp_path, path, value, message):
    save_records(tmp_path, _records()[:1])
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    _edit(manifest, path, value)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RecordIntegrityError, match=message):
        load_records(tmp_path)


# -- replayed records are validated like live calls ------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "shown"), [(-5, "-5"), (0, "0"), ("NaN", "nan"), ("Infinity", "inf")])
def test_a_recorded_scale_that_a_live_call_refuses_is_not_replayed(tmp_path, scale, shown):
    save_records(tmp_path, _records()[:1])
    manifest_path = tmp_path / "manifest.json"
    text = manifest_path.read_text()
    manifest = json.loads(text)
    manifest["records"][0]["scale"] = "__SCALE__"
    manifest_path.write_text(json.dumps(manifest).replace('"__SCALE__"', str(scale)))  # NaN/Infinity as JSON allows
    pattern = rf"records\[0\] \(transformer_blocks.0.attn/step0\) is not a valid attention call: scale must be a " \
              rf"finite number > 0, got {shown}"
    with pytest.raises(RecordIntegrityError, match=pattern):
        replay(tmp_path, backends=["sdpa"], progress=False)


def _rewrite_tensors(folder, change):
    """Replace the tensor file's content (and the manifest's hash and shapes to match): a record that is
    internally consistent on disk but not a valid attention call."""
    from safetensors.torch import load_file, save_file

    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    tensor_path = folder / manifest["tensor_file"]
    tensors = load_file(str(tensor_path))
    change(tensors)
    save_file(tensors, str(tensor_path))
    manifest["tensor_sha256"] = hashlib.sha256(tensor_path.read_bytes()).hexdigest()
    for entry in manifest["records"]:
        for info in entry["tensors"].values():
            info["shape"] = list(tensors[info["key"]].shape)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update({"0.k": t["0.k"][..., :16].contiguous()}), "q and k head dims differ"),
    (lambda t: t.update({"0.v": t["0.v"][:, :20].contiguous()}), "k and v sequence lengths differ"),
    (lambda t: t.update({"0.q": t["0.q"][0].contiguous()}), "q has 3 dims"),
    (lambda t: t.update({"0.out": t["0.out"][:, :20].contiguous()}), r"out has shape \(1, 20, 2, 32\)"),
    (lambda t: t.update({"0.lse": t["0.lse"].transpose(1, 2).contiguous()}), r"lse has shape \(1, 40, 2\)"),
])
def test_recorded_shapes_that_a_live_call_refuses_are_not_replayed(tmp_path, change, message):
    save_records(tmp_path, _records()[:1])
    _rewrite_tensors(tmp_path, change)
    with pytest.raises(RecordIntegrityError, match=message):
        replay(tmp_path, backends=["sdpa"], progress=False)


def test_save_refuses_a_record_that_is_not_a_valid_attention_call(tmp_path):
    bad = _records()[0]
    bad.scale = -5.0
    with pytest.raises(InvalidInputError, match=r"records\[1\] .* scale must be a finite number > 0"):
        save_records(tmp_path / "out", [_records()[1], bad])
    assert not (tmp_path / "out").exists()


def test_record_files_are_readable_by_others_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        save_records(tmp_path, _records())
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert len(modes) == 2 and set(modes.values()) == {0o644}, modes


def test_an_invalid_record_in_memory_is_refused_by_compare_attention():
    from fluxlab.compare import compare_attention

    bad = _records()[2]
    bad.scale = float("nan")
    with pytest.raises(InvalidInputError, match=r"record 0 \(record0\) is not a valid attention call: scale must be"):
        compare_attention([bad], backends=["sdpa"], progress=False)
