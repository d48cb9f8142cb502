"""The shared helpers: atomic writes honour the umask and leave nothing behind, provenance never says "HEAD",
rel-L2, timing and dtype names."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from fluxlab import util
from fluxlab.errors import FluxlabError, FluxlabWarning


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_is_0644_under_umask_022(tmp_path, umask_022):
    util.atomic_write(tmp_path / "a.txt", "text")
    util.atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_text() == "text" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _mode(tmp_path / "a.txt") == 0o644 and _mode(tmp_path / "b.bin") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temporary files left


def test_atomic_write_follows_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        util.atomic_write(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_atomic_path_fixes_the_mode_of_files_a_writer_recreates(tmp_path, umask_022):
    """safetensors' save_file and PIL replace the temporary file: the mode is set after the writer is done."""
    from PIL import Image
    from safetensors.torch import save_file

    with util.atomic_path(tmp_path / "t.safetensors") as temporary:
        save_file({"x": torch.zeros(2)}, str(temporary))
    with util.atomic_path(tmp_path / "i.png") as temporary:
        Image.new("RGB", (4, 4)).save(temporary, format="PNG")
    assert _mode(tmp_path / "t.safetensors") == 0o644 and _mode(tmp_path / "i.png") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.png", "t.safetensors"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer broke"):
        with util.atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer broke")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_git_revision_is_a_real_commit_or_none(tmp_path, monkeypatch):
    revision = util.git_revision()
    assert revision is None or (len(revision["commit"]) in (40, 64) and revision["commit"] != "HEAD")
    # A repository without commits: `git rev-parse HEAD` prints "HEAD" there; fluxlab must say None instead.
    empty = tmp_path / "repo"
    (empty / "fluxlab").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(empty)], check=True)
    monkeypatch.setattr(util, "__file__", str(empty / "fluxlab" / "util.py"))
    monkeypatch.delenv(util.GIT_COMMIT_ENV, raising=False)
    assert util.git_revision() is None and util.git_commit() is None
    monkeypatch.setenv(util.GIT_COMMIT_ENV, "HEAD")  # not a commit: ignored, and said
    with pytest.warns(FluxlabWarning, match="not a full commit hash"):
        assert util.git_revision() is None
    monkeypatch.setenv(util.GIT_COMMIT_ENV, "03d137e")  # a short hash would let a stale checkout answer: said
    with pytest.warns(FluxlabWarning, match="'03d137e' is not a full commit hash"):
        assert util.git_revision() is None
    monkeypatch.setenv(util.GIT_COMMIT_ENV, "ab" * 20)
    assert util.git_revision() == {"commit": "ab" * 20, "dirty": None}


def test_git_revision_ignores_a_repository_around_an_installed_fluxlab(tmp_path, monkeypatch):
    outer = tmp_path / "home"
    package = outer / "site-packages" / "fluxlab"
    package.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    (outer / "f").write_text("x")
    subprocess.run(["git", "-C", str(outer), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(outer), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    monkeypatch.setattr(util, "__file__", str(package / "util.py"))
    monkeypatch.delenv(util.GIT_COMMIT_ENV, raising=False)
    assert util.git_revision() is None  # that commit belongs to someone else's repository


def test_provenance_has_date_platform_versions_git():
    info = util.provenance()
    assert set(info) == {"date", "platform", "versions", "git"}
    assert info["versions"]["torch"] == torch.__version__ and info["date"].endswith("+00:00")
    json.dumps(info, allow_nan=False)


def test_rel_l2():
    ref = torch.tensor([3.0, 4.0])
    assert util.rel_l2(ref, ref) == 0.0
    assert util.rel_l2(torch.tensor([3.0, 5.0]), ref) == pytest.approx(0.2)
    assert util.rel_l2(torch.zeros(2), torch.zeros(2)) == 0.0
    assert util.rel_l2(torch.ones(2), torch.zeros(2)) == float("inf")
    with pytest.raises(ValueError, match="equal shapes"):
        util.rel_l2(torch.ones(2, 1), torch.ones(2))


def test_time_calls_warms_up_then_times_each_repeat():
    calls = []
    timing = util.time_calls(lambda: calls.append(1) or len(calls), warmup=2, repeats=3,
                             before_each=lambda: calls.append(0))
    assert len(timing.times_ms) == 3 and all(t >= 0 for t in timing.times_ms)
    assert calls == [1, 1, 0, 1, 0, 1, 0, 1] and timing.result == len(calls)
    assert timing.min_ms <= timing.median_ms
    with pytest.raises(ValueError, match="repeats"):
        util.time_calls(lambda: None, repeats=0)


def test_dtype_names_both_ways():
    assert util.dtype_name(torch.bfloat16) == "bf16" and util.dtype_name("float16") == "fp16"
    assert util.parse_dtype("bf16") is torch.bfloat16 and util.parse_dtype("torch.float32") is torch.float32
    assert util.torch_dtype_name("bf16") == "bfloat16"
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert util.parse_dtype(util.dtype_name(dtype)) is dtype
    with pytest.raises(FluxlabError, match="unknown dtype 'int8'.*bf16"):
        util.parse_dtype("int8")


def test_no_module_keeps_its_own_copy_of_a_helper():
    """The duplicates the helpers replaced do not come back (grep of fluxlab/ and benchmarks/)."""
    root = Path(__file__).resolve().parents[1]
    sources = [p for folder in ("fluxlab", "benchmarks") for p in (root / folder).rglob("*.py")
               if p.name != "util.py"]
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for needle in ("tempfile.mkstemp", "def _rel_l2", "def rel_l2", "rev-parse", "def _atomic_write",
                       "def _versions", '.replace("torch.", "")', ".replace('torch.', '')"):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


if torch.cuda.is_available():  # defined only where it can run (as conftest does for GPU files): no green skip

    @pytest.mark.gpu
    def test_time_calls_waits_for_the_gpu():
        """On a GPU the clock stops only after the device finished: the stream is idle when time_calls returns."""
        a = torch.randn(4096, 4096, device="cuda")
        timing = util.time_calls(lambda: a @ a, warmup=1, repeats=3, device="cuda")
        assert torch.cuda.current_stream().query()  # nothing still queued: each call was synchronised
        assert timing.result.is_cuda and len(timing.times_ms) == 3 and timing.min_ms > 0
