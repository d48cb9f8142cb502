"""Determinism and invariance axes: reruns, a sample alone vs inside a batch, its position in the batch. The CPU
kernels are invariant on all three; planted kernels that break one axis each are caught on that axis."""

import json

import pytest
import torch
import torch.nn.functional as F

import fluxlab
from fluxlab.cli import main
from fluxlab.compare import InputSpec
from fluxlab.compare.invariance import check_invariance

SMALL = InputSpec(200, 2, 64, text_tokens=24)


def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          scale=scale).transpose(1, 2)


def _keys_permuted(q, k, v, scale, perm):
    return _sdpa(q.float(), k[:, perm].float(), v[:, perm].float(), scale).to(q.dtype)


def random_key_order(q, k, v, *, scale, causal=False, return_lse=False):
    """Sums the keys in a fresh random order on every call (as atomics or a split-K race would)."""
    return _keys_permuted(q, k, v, scale, torch.randperm(k.shape[1]))


def batch_dependent(q, k, v, *, scale, causal=False, return_lse=False):
    """Another reduction order when the batch is larger than one (a heuristic that picks tiles by batch size)."""
    order = torch.arange(k.shape[1])
    return _keys_permuted(q, k, v, scale, order.flip(0) if q.shape[0] > 1 else order)


def position_dependent(q, k, v, *, scale, causal=False, return_lse=False):
    """Batch elements at odd indices reduce their keys in reverse order."""
    order = torch.arange(k.shape[1])
    return torch.cat([_keys_permuted(q[b:b + 1], k[b:b + 1], v[b:b + 1], scale, order.flip(0) if b % 2 else order)
                      for b in range(q.shape[0])])


@pytest.fixture
def planted():
    kernels = {"random_key_order": random_key_order, "batch_dependent": batch_dependent,
               "position_dependent": position_dependent}
    for name, fn in kernels.items():
        fluxlab.register_backend(name, fn, replace=True)
    yield list(kernels)
    for name in kernels:
        fluxlab.registry.unregister_backend(name)


def test_cpu_kernels_are_deterministic_and_batch_invariant():
    report = check_invariance(["sdpa", "sdpa_math", "sdpa_flash", "emu_bf16"], spec=SMALL)
    for name, axes in report.verdicts.items():
        assert axes == {"rerun": True, "batch": True, "position": True}, (name, report.to_markdown())


def test_each_planted_kernel_breaks_its_own_axis(planted):
    report = check_invariance(planted, spec=SMALL, dtype="fp32")
    assert report.verdicts == {
        "random_key_order": {"rerun": False, "batch": False, "position": False},
        "batch_dependent": {"rerun": True, "batch": False, "position": True},
        "position_dependent": {"rerun": True, "batch": True, "position": False},
    }, report.to_markdown()
    for row in report.rows:
        for axis in ("rerun", "batch", "position"):
            identical = getattr(row, {"rerun": "rerun_identical", "batch": "batch_invariant",
                                      "position": "position_invariant"}[axis])
            difference = getattr(row, f"{axis}_max_abs")
            assert (difference == 0) == identical and difference < 1e-5  # reordering: float32 roundoff only


def test_cli_writes_the_invariance_tables(tmp_path, capsys):
    code = main(["compare", "--invariance", "--model", "none", "--backends", "sdpa,sdpa_math", "--dtypes",
                 "bf16,fp32", "--out", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "invariance.md").read_text()
    assert text.count("| sdpa_math |") == 2 and "identical" in text and "differs" not in text
    data = json.loads((tmp_path / "invariance.json").read_text())
    assert [run["meta"]["dtype"] for run in data["runs"]] == ["bfloat16", "float32"]
    assert "invariance.md" in capsys.readouterr().out
