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


# -- a whole generation on the embedded model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def generation_report():
    """Two exact kernels and the two planted ones that break the batch axes, through whole generations of the
    embedded model (1 step, 2 prompts: the smallest batch whose rotation moves every sample)."""
    from fluxlab.compare import check_generation_invariance
    from fluxlab.compare.invariance import PROMPTS

    planted = {"gen_batch_dependent": batch_dependent, "gen_position_dependent": position_dependent}
    for name, fn in planted.items():
        fluxlab.register_backend(name, fn, replace=True)
    pipe = fluxlab.load_flux2()
    try:
        yield check_generation_invariance(pipe, ["sdpa", "sdpa_math", *planted], prompts=PROMPTS[:2], steps=1,
                                          max_sequence_length=144)
    finally:
        fluxlab.detach(pipe)  # a model left attached keeps the router installed for later tests
        for name in planted:
            fluxlab.registry.unregister_backend(name)


def test_exact_cpu_kernels_are_invariant_in_a_whole_generation(generation_report):
    report = generation_report
    for name in ("sdpa", "sdpa_math"):
        row = next(r for r in report.rows if r.backend == name)
        assert row.error is None and set(row.attention_calls) == {name}, report.to_markdown()  # it served them all
        assert (row.rerun, row.kernel_batch, row.position) == (True, True, True), report.to_markdown()
        assert row.rerun_max_abs == row.kernel_batch_max_abs == row.position_max_abs == 0.0
        # Alone vs batch includes the model's own linear layers at batch 1 vs 2 (a matrix-vector product vs a
        # matrix product on the CPU: another summation order); whatever it is, it is float32 roundoff, not a bug.
        assert row.batch_rel_l2 < 1e-4 and (row.batch_max_abs == 0.0) == row.batch, report.to_markdown()
        assert 0 < row.latent_step < 1e-5  # float32 at latents of order one


def test_planted_batch_and_position_dependence_is_caught_in_a_whole_generation(generation_report):
    verdicts = generation_report.verdicts
    assert verdicts["gen_batch_dependent"]["rerun"] is True
    assert verdicts["gen_batch_dependent"]["kernel_batch"] is False  # the kernel at batch 2 != at batch 1
    assert verdicts["gen_batch_dependent"]["position"] is True
    assert verdicts["gen_position_dependent"]["rerun"] is True
    assert verdicts["gen_position_dependent"]["position"] is False  # the sample at index 1 reduces in reverse
    assert verdicts["gen_position_dependent"]["kernel_batch"] is False  # alone, every sample is at index 0
    row = next(r for r in generation_report.rows if r.backend == "gen_position_dependent")
    assert 0 < row.position_max_abs and row.position_rel_l2 < 1e-3  # a reordered float32 sum: small, not zero
    text = generation_report.to_markdown()
    assert "| gen_position_dependent | identical |" in text and "differs: rel-L2" in text


def test_generation_report_saves_json(generation_report, tmp_path):
    data = json.loads(generation_report.save(tmp_path / "gen.json").read_text())
    assert data["result_type"] == "GenerationInvarianceReport" and data["meta"]["batch"] == 2
    assert [r["backend"] for r in data["rows"]] == ["sdpa", "sdpa_math", "gen_batch_dependent",
                                                    "gen_position_dependent"]
    assert data["provenance"]["model"]["pipeline"] == "Flux2KleinPipeline"


def test_cli_adds_whole_generations_of_the_model(tmp_path, capsys):
    out = tmp_path / "inv"
    assert main(["compare", "--invariance", "--backends", "sdpa", "--dtypes", "fp32", "--steps", "1",
                 "--out", str(out)]) == 0
    text = (out / "invariance.md").read_text()
    assert "## Whole generations of the embedded model" in text and "| sdpa | identical |" in text
    data = json.loads((out / "invariance.json").read_text())
    row = data["generation"]["rows"][0]
    assert row["backend"] == "sdpa" and row["rerun"] and row["kernel_batch"] and row["position"]
    assert data["generation"]["meta"]["seeds"] == [0, 1, 2, 3] and data["generation"]["meta"]["batch"] == 4


def test_benchmark_dry_run_takes_the_gpu_run_code_path(tmp_path):
    """benchmarks/invariance.py --dry-run: the function calls of the GPU run (attention level, then generations
    of the embedded model on --device), shrunk, on this machine's CPU."""
    from _benchmarks import load_benchmark

    script = load_benchmark("invariance")
    assert script.main(["--dry-run", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generation.json", "generation.md", "invariance.json",
                                                          "invariance.md"]
    attention = json.loads((tmp_path / "invariance.json").read_text())
    assert attention["dry_run"] and [r["backend"] for r in attention["runs"][0]["rows"]] == ["sdpa", "sdpa_math"]
    generation = json.loads((tmp_path / "generation.json").read_text())
    assert generation["dry_run"] and generation["meta"]["steps"] == 1 and generation["meta"]["dtype"] == "float32"
    assert [(r["backend"], r["rerun"], r["kernel_batch"], r["position"]) for r in generation["rows"]] == [
        ("sdpa", True, True, True), ("sdpa_math", True, True, True)]
    assert "DRY RUN" in (tmp_path / "generation.md").read_text()
