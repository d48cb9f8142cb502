"""The gate beside the error size: planted kernels that a size-only rule lets through fail, exact kernels (in any
reduction order) pass, and the gate's limits are the derivation from the committed measurement files."""

import json

import pytest
import torch

import fluxlab
from fluxlab.compare import AttentionCase, compare_attention
from fluxlab.compare.gate import Yardstick, judge_gate
from fluxlab.compare.tolerances import GATE_RULE

from _benchmarks import ROOT, load_benchmark
from _compare_kernels import PLANTED, hides_nan
from _verdict import judgement

RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture
def registered():
    names = []

    def register(name, fn, **caps):
        fluxlab.register_backend(name, fn, replace=True, **caps)
        names.append(name)
        return name

    yield register
    for name in names:
        fluxlab.registry.unregister_backend(name)


# What each planted kernel's verdict must show on at least one default input (besides "fail").
PLANTED_SIGNS = {
    "planted_round_up": lambda r: r.biased and r.bias_direction == "toward +inf" and "biased" in r.notes,
    "planted_round_to_zero": lambda r: r.biased and r.bias_direction == "toward zero" and "biased" in r.notes,
    "planted_ragged_tail": lambda r: r.rel_l2_ratio > 4,
    "planted_batch_mixing": lambda r: r.worst_slice == "batch 1",
    "planted_bad_head": lambda r: r.worst_slice == "head 3" and r.worst_head_ratio > GATE_RULE.slice_warn,
    "planted_unsafe_softmax": lambda r: r.nonfinite_where_finite > 0 and "where float64 is finite" in r.notes,
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_kernel_fails_with_the_defaults(registered, name):
    registered(name, PLANTED[name][0])
    report = compare_attention(backends=[name], progress=False)
    assert report.verdicts == {name: "fail"}, report.to_markdown(details=False)
    assert any(PLANTED_SIGNS[name](row) for row in report.rows), report.to_markdown()
    assert PLANTED[name][1] in " ".join(row.notes for row in report.rows)


def test_the_planted_biases_pass_a_size_only_rule(registered):
    """Why the gate exists: rounding toward +inf or toward zero stays within 2.1x torch's error."""
    for name in ("planted_round_up", "planted_round_to_zero"):
        registered(name, PLANTED[name][0])
    report = compare_attention(backends=["planted_round_up", "planted_round_to_zero"], progress=False)
    assert all(row.rel_l2_ratio < 2.2 and row.max_abs_ratio < 4 for row in report.rows)
    assert all(row.biased for row in report.rows)


def test_every_exact_cpu_kernel_and_emulator_passes_the_defaults():
    """Every exact kernel and every emulator passes, except emu_sage: it models SageAttention 1.0.6, whose kernel
    is biased toward zero on key lengths that are not a multiple of 64 (the default inputs have 1000 and 520)."""
    report = compare_attention(progress=False)
    verdicts = report.verdicts
    assert verdicts.pop("emu_sage") == "fail" and set(verdicts.values()) == {"pass"}, report.to_markdown(details=False)
    assert {"sdpa", "sdpa_math", "sdpa_flash", "flex", "emu_bf16", "emu_aiter"} <= set(verdicts)
    failed = [r for r in report.rows_for("emu_sage") if r.verdict == "fail"]
    assert failed and all(r.biased and r.bias_direction == "toward zero" for r in failed)
    for row in report.rows:
        if row.backend == "emu_sage":
            continue
        assert not row.biased and row.fail_fraction < 1
        if not row.quantised:
            assert row.flipped_rows == 0 and row.worst_head_ratio <= GATE_RULE.slice_pass


def test_exact_kernels_that_reduce_in_other_orders_pass(registered):
    """Float32 softmax, online softmax over 64-key blocks, halves merged by LSE, reversed keys, P in the dtype."""
    variants = load_benchmark("gate_thresholds").VARIANTS
    for name, fn in variants.items():
        registered(name, fn)
    report = compare_attention(backends=list(variants), dtypes=("bf16", "fp16"), progress=False, error_maps=False)
    assert report.verdicts == dict.fromkeys(variants, "pass"), report.to_markdown(details=False)


def test_aiter_truncation_is_reported_biased_at_attention_level():
    report = compare_attention(backends=["emu_aiter:how_v3_bf16_cvt=2", "emu_aiter:how_v3_bf16_cvt=0"],
                               progress=False, error_maps=False)
    assert report.verdicts == {"emu_aiter:how_v3_bf16_cvt=2": "fail", "emu_aiter:how_v3_bf16_cvt=0": "pass"}
    for row in report.rows_for("emu_aiter:how_v3_bf16_cvt=2"):
        assert row.biased and row.bias_direction == "toward zero" and row.bias < 0
        assert "biased" in row.notes


def _nan_case():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 96, 2, 64, generator=gen) for _ in range(3))
    q[0, 5, 1, 3] = float("nan")  # query 5 of head 1 has no answer; float64 says NaN there
    return AttentionCase("nan query", q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=0.125)


def test_nan_where_float64_is_nan_is_not_a_failure_and_hiding_it_is_reported(registered):
    registered("hides_nan", hides_nan)
    report = compare_attention([_nan_case()], backends=["sdpa_math", "sdpa", "hides_nan"], progress=False)
    assert report.verdicts == {"sdpa_math": "pass", "sdpa": "pass", "hides_nan": "warn"}, report.to_markdown()
    hidden = report.rows_for("hides_nan")[0]
    assert hidden.finite_where_nonfinite == 64 and "hides a NaN/inf" in hidden.notes
    for row in report.rows_for("sdpa"):
        assert row.nonfinite_where_finite == 0 and row.rel_l2 < 5e-3


def test_bias_statistics_tell_signed_from_toward_zero():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 512, 4, 32, generator=gen, dtype=torch.float64)  # 4096 rows: the bias limit is its floor
    noise = torch.randn(ref.shape, generator=gen, dtype=torch.float64) * 1e-3
    yard = Yardstick(ref, None, torch.bfloat16)
    plain = yard.measure(ref + noise)
    up = yard.measure(ref + noise.abs())
    shrunk = yard.measure(ref - noise.abs() * torch.sign(ref))
    assert abs(plain.signed_bias) < 0.1 and abs(plain.magnitude_bias) < 0.1
    assert up.signed_bias > 0.7 and up.bias_direction == "toward +inf"
    assert shrunk.magnitude_bias < -0.7 and abs(shrunk.signed_bias) < 0.1 and shrunk.bias_direction == "toward zero"
    _, notes, biased = judge_gate(shrunk, quantised=False)
    assert biased and any(n.startswith("biased:") for n in notes)
    assert not judge_gate(plain, quantised=False)[2]
    few_rows = Yardstick(ref[:1, :8, :2], None, torch.bfloat16).measure(ref[:1, :8, :2] + noise[:1, :8, :2].abs())
    assert not judge_gate(few_rows, quantised=False)[2]  # 16 rows: a mean of so few cannot tell bias from chance


def test_one_bad_head_and_one_bad_batch_element_are_judged_on_their_own():
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(3, 40, 8, 32, generator=gen, dtype=torch.float64)
    rounding = ref.to(torch.bfloat16).double()
    out = rounding.clone()
    out[2, :, 5] += (rounding[2, :, 5] - ref[2, :, 5]) * 4  # one head of one batch element: 5x the rounding error
    stats = Yardstick(ref, None, torch.bfloat16, text_tokens=10).measure(out)
    head, batch = stats.worst_slice("head"), stats.worst_slice("batch")
    assert (head.index, batch.index) == (5, 2)
    assert head.ratio > 2.7 and batch.ratio > 1.8  # about sqrt((25 + 2) / 3) and sqrt((25 + 7) / 8)
    assert stats.worst_slice("segment").ratio < 1.6  # spread over every token: the segments barely differ
    assert [s.label for s in stats.slices if s.kind == "segment"] == ["text tokens", "image tokens"]


def test_flips_count_only_rows_where_float64_is_clear():
    ref = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    ref[0, 0, 0] = torch.tensor([1.0, 0.5, 0.0, 0.0])  # clear: the top channel leads by half the row's scale
    ref[0, 1, 0] = torch.tensor([1.0, 1.0 - 1e-4, 0.0, 0.0])  # a near tie: not clear in bf16
    out = ref.clone()
    out[0, :, 0, 1] += 0.6  # both rows' top channel moves to channel 1
    stats = Yardstick(ref, None, torch.bfloat16).measure(out)
    assert (stats.clear_rows, stats.flipped_rows) == (1, 1)


def test_gate_limits_are_the_derivation_from_the_committed_measurements():
    script = load_benchmark("gate_thresholds")
    files = [RESULTS / name for name in script.GATE_FILES if (RESULTS / name).is_file()]
    assert RESULTS / "cpu" / "gate_thresholds.json" in files
    derived = script.derive_gate_rule(json.loads(path.read_text()) for path in files)
    assert derived == GATE_RULE, f"update tolerances.GATE_RULE to {derived}"


def test_engine_and_test_helper_give_one_verdict(registered):
    registered("planted_round_up", PLANTED["planted_round_up"][0])
    case = fluxlab.compare.InputSpec(300, 3, 64, batch=2, text_tokens=33).materialise(torch.bfloat16, seed=2)
    report = compare_attention([case], backends=["planted_round_up", "sdpa_flash"], progress=False)
    for row in report.rows:
        out = fluxlab.attention(case.q, case.k, case.v, backend=row.backend, scale=case.scale)
        result = judgement(out, case.q, case.k, case.v, scale=case.scale, text_tokens=case.text_tokens)
        assert result.verdict == row.verdict and result.biased == row.biased


def test_captured_activations_go_through_the_gate_and_the_report_names_the_closest_layers(registered):
    from fluxlab.compare import compare_captured
    from fluxlab.models.tiny import build_tiny_pipeline

    registered("planted_round_to_zero", PLANTED["planted_round_to_zero"][0])
    pipe = build_tiny_pipeline("dev")
    fluxlab.attach(pipe, backend="sdpa")
    try:
        report = compare_captured(pipe, ["sdpa_math", "sdpa_flash", "planted_round_to_zero"], steps=2,
                                  capture_steps=[-1], dtype="bf16", progress=False, error_maps=False,
                                  pipe_kwargs={"max_sequence_length": 256})  # S 272 x 2 heads: enough rows
    finally:
        fluxlab.detach(pipe)
    layers = {r.input for r in report.rows}
    assert len(layers) == 4 and all(name.endswith("/step1") for name in layers)  # 2 double + 2 single blocks
    assert report.verdicts == {"sdpa_math": "pass", "sdpa_flash": "pass", "planted_round_to_zero": "fail"}
    closest = report.closest_to_failing(backend="sdpa_flash")
    assert closest[0].fail_fraction == max(r.fail_fraction for r in report.rows_for("sdpa_flash")) < 1
    assert all(r.biased for r in report.rows_for("planted_round_to_zero"))
    markdown = report.to_markdown(details=False)
    assert "Closest to failing" in markdown and closest[0].input in markdown


def test_the_measurement_script_feeds_the_derivation():
    """benchmarks/gate_thresholds.py: the GPU set has the shapes that expose bugs; one small input runs end to end
    on this CPU and its summary is what derive_gate_rule reads."""
    from fluxlab.compare import InputSpec
    from fluxlab.platform import current_platform

    script = load_benchmark("gate_thresholds")
    gpu = [spec for spec, *_ in script.input_set("cuda", dry_run=False)]
    assert any(spec.seq % 64 and spec.batch > 1 and spec.text_tokens == 512 for spec in gpu)
    assert max(spec.seq for spec in gpu) == 16896 and len(gpu) <= 16
    script.register_variants()
    try:
        runs = script.run_case(InputSpec(96, 2, 32, batch=2, text_tokens=10), torch.bfloat16, 0, torch.device("cpu"),
                               ["sdpa_math", "ref_online_blocks64"], ["info_round_to_zero_bf16"], current_platform())
    finally:
        for name in {**script.VARIANTS, **script.INFO_VARIANTS}:
            fluxlab.registry.unregister_backend(name)
    assert [r["kernel"] for r in runs] == ["sdpa_math", "ref_online_blocks64", "info_round_to_zero_bf16"]
    summary = script.summarise(runs)
    assert summary["exact_summary"]["runs"] == 2
    assert summary["info_summary"]["info_round_to_zero_bf16"]["max_abs_bias"] > 0.3
    rule = script.derive_gate_rule([{**summary, "runs": runs, "large_rows": script.LARGE_ROWS}])  # as the file holds
    assert rule.bias_z > 0 and rule.slice_pass >= 1 and rule.flip_pass > 0
