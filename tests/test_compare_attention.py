"""compare_attention: broken kernels fail, correct ones pass, the sweep survives anything a kernel does."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fluxlab
import fluxlab.compare as compare
from fluxlab.compare import AttentionCase, InputSpec, compare_attention
from fluxlab.compare import attention as attention_module
from fluxlab.compare import gate as gate_module

from _compare_kernels import BROKEN, int8_qk_fp8_p, nan_output, raises, scores_in_low_precision, short_output

SMALL = [InputSpec(256, 4, 64, distribution=d) for d in compare.DISTRIBUTIONS]


@pytest.fixture
def registered():
    """Register kernels through the public API for one test, and remove them afterwards."""
    names = []

    def register(name, fn, **caps):
        fluxlab.register_backend(name, fn, **caps)
        names.append(name)
        return name

    yield register
    for name in names:
        fluxlab.registry.unregister_backend(name)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_kernel_fails_on_every_distribution(registered, name):
    registered(name, BROKEN[name])
    report = compare_attention(SMALL, backends=[name, "sdpa"], progress=False)
    assert report.verdicts == {name: "fail", "sdpa": "pass"}
    for row in report.rows_for(name):
        assert row.verdict == "fail"
        assert row.rel_l2_ratio > 50, (row.input, row.rel_l2_ratio)  # far beyond the 4x warn band
        assert row.error is None and "rel_l2" in row.notes


def test_dropped_head_is_localised(registered):
    registered("broken_head", BROKEN["broken_head"])
    report = compare_attention(SMALL[:1], backends=["broken_head"], progress=False)
    row = report.rows[0]
    assert row.worst_head == 1
    assert row.worst_head_rel_l2 == pytest.approx(1.0)  # the whole head is missing
    others = [e for h, e in enumerate(row.error_map.per_head) if h != 1]
    assert max(others) < 5e-3
    assert "worst head 1" in row.notes


def test_boundary_bug_is_localised_to_the_text_tokens(registered):
    registered("broken_boundary", BROKEN["broken_boundary"])
    case = InputSpec(256, 4, 64, text_tokens=32).materialise(torch.bfloat16, seed=0)
    report = compare_attention([case], backends=["broken_boundary"], progress=False)
    emap = report.rows[0].error_map
    assert emap.text_tokens == 32
    # every query attends to the shifted keys, so every token is wrong: the map is flat across tokens...
    assert emap.per_token.min() > 0.05
    assert report.rows[0].verdict == "fail"


@pytest.mark.parametrize("name,fn,expected", [
    ("kernel_nan", nan_output, "output has 1 NaN and 0 inf values"),
    ("kernel_raises", raises, "RuntimeError: kernel exploded"),
    ("kernel_short", short_output, "returned shape (1, 255, 4, 64)"),
])
def test_misbehaving_kernel_is_a_failed_row_and_the_sweep_finishes(registered, name, fn, expected):
    registered(name, fn)
    report = compare_attention(SMALL[:2], backends=[name, "sdpa"], progress=False)
    assert [r.backend for r in report.rows] == [name, "sdpa", name, "sdpa"]
    assert report.verdicts == {name: "fail", "sdpa": "pass"}
    for row in report.rows_for(name):
        assert row.verdict == "fail" and expected in row.error
        if name == "kernel_nan":  # the error numbers cover the finite values; the NaN alone fails the row
            assert row.nonfinite_where_finite == 1 and row.rel_l2 < 5e-3
        else:
            assert math.isnan(row.rel_l2)
    assert expected in report.to_markdown()


CORRECT_CPU = ["sdpa", "sdpa_math", "sdpa_flash", "flex"]
CORRECT_SHAPES = [  # (batch, seq, heads, head_dim)
    (1, 77, 3, 64),
    (2, 256, 4, 128),
    (1, 320, 2, 128),
]


@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("shape", CORRECT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_correct_cpu_backend_passes(shape, dtype):
    batch, seq, heads, dim = shape
    inputs = [InputSpec(seq, heads, dim, distribution=d, batch=batch) for d in compare.DISTRIBUTIONS]
    report = compare_attention(inputs, backends=CORRECT_CPU, dtypes=[dtype], seeds=(0, 1), progress=False)
    assert len(report.rows) == 3 * 2 * len(CORRECT_CPU)
    assert report.verdicts == dict.fromkeys(CORRECT_CPU, "pass"), report.to_markdown()
    for row in report.rows:
        # measured over 1080 CPU runs: rel_l2 <= 1.48 x, max_abs <= 2.33 x the yardstick
        assert row.rel_l2_ratio < 1.6 and row.max_abs_ratio < 2.6, (row.backend, row.input, row.seed)
        assert row.cosine > 0.99999


def test_yardstick_is_torch_math_and_close_to_rounding():
    report = compare_attention(SMALL, backends=["sdpa_math"], dtypes=["bf16", "fp16"], progress=False)
    for row in report.rows:
        # torch's math kernel upcasts: its error is the rounding of the exact answer to the dtype
        assert row.baseline_rel_l2 == pytest.approx(row.rounding_rel_l2, rel=0.1)
        assert row.rel_l2 == row.baseline_rel_l2 and row.rel_l2_ratio == 1.0
    bf16 = [r.baseline_rel_l2 for r in report.rows if r.dtype == "bfloat16"]
    fp16 = [r.baseline_rel_l2 for r in report.rows if r.dtype == "float16"]
    assert all(1.5e-3 < e < 1.9e-3 for e in bf16) and all(1.8e-4 < e < 2.4e-4 for e in fp16)


def test_sloppy_low_precision_kernel_is_flagged(registered):
    """Rounding the scores to bf16: 2.5x torch's error on broad attention (warn), 15x with outliers (fail)."""
    registered("sloppy", scores_in_low_precision)
    report = compare_attention(SMALL[:2], backends=["sloppy"], progress=False)
    normal, outliers = report.rows
    assert normal.verdict == "warn" and 2.0 < normal.rel_l2_ratio < 4.0
    assert outliers.verdict == "fail" and outliers.rel_l2_ratio > 10
    assert report.verdicts == {"sloppy": "fail"}


def test_lowp_reduction_knob_is_a_comparison_axis():
    report = compare_attention(SMALL[:1], backends=["sdpa_math", "sdpa_math:lowp_reduction=1"], progress=False)
    exact, lowp = report.rows
    assert exact.backend == "sdpa_math" and exact.verdict == "pass"
    assert lowp.backend == "sdpa_math:lowp_reduction=1" and lowp.verdict == "warn"
    assert 2.0 < lowp.rel_l2_ratio < 4.0
    assert not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()  # restored


def test_quantised_kernel_is_judged_by_its_budget_and_labelled(registered):
    registered("int8_plain", int8_qk_fp8_p)
    registered("int8_quantised", int8_qk_fp8_p, quantised=True)
    report = compare_attention(SMALL[:2], backends=["int8_plain", "int8_quantised"], progress=False)
    assert report.verdicts == {"int8_plain": "fail", "int8_quantised": "pass"}
    for row in report.rows_for("int8_quantised"):
        assert row.quantised and 0.01 < row.rel_l2 <= 0.05
        assert row.notes.startswith("quantised:")
    assert "yes" in report.to_markdown()  # the quantised column


def test_dtype_axis_and_seeds():
    report = compare_attention(SMALL[:1], backends=["sdpa"], dtypes=["bf16", "fp16", "fp32"], seeds=(3, 4),
                               progress=False)
    assert [(r.dtype, r.seed) for r in report.rows] == [
        ("bfloat16", 3), ("bfloat16", 4), ("float16", 3), ("float16", 4), ("float32", 3), ("float32", 4)]
    fp32 = [r.rel_l2 for r in report.rows if r.dtype == "float32"]
    assert all(e < 1e-6 for e in fp32)


def test_unsupported_backend_is_skipped_with_reasons_not_failed():
    report = compare_attention(SMALL[:1], backends=["sdpa", "sdpa_cudnn"], progress=False)
    assert report.verdicts == {"sdpa": "pass"}
    assert "sdpa_cudnn" in report.skipped and "nvidia" in report.skipped["sdpa_cudnn"][0]
    assert not report.failed


def test_report_renderings():
    report = compare_attention(SMALL[:2], backends=["sdpa", "flex"], progress=False)
    frame = report.to_dataframe()
    assert list(frame["backend"]) == ["sdpa", "flex", "sdpa", "flex"]
    assert {"rel_l2", "baseline_rel_l2", "rel_l2_ratio", "lse_max_abs", "time_ms", "verdict"} <= set(frame.columns)
    assert frame.loc[1, "lse_max_abs"] < 1e-4  # flex returns an LSE
    html = report._repr_html_()
    assert "#c8e6c9" in html and "<table" in html and "flex" in html
    md = report.to_markdown()
    assert md.count("| pass |") >= 2
    worst = report.worst()
    assert worst.verdict == "pass" and worst.rel_l2_ratio == max(r.rel_l2_ratio for r in report.rows)
    assert report.worst("sdpa").backend == "sdpa"


def test_gqa_and_record_inputs_compare_against_the_recorded_output():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 96, 4, 64, generator=gen).bfloat16()
    k, v = (torch.randn(1, 96, 2, 64, generator=gen).bfloat16() for _ in range(2))
    recorded = fluxlab.attention(q, k, v, backend="sdpa_math")
    record = fluxlab.record.AttentionRecord(q, k, v, scale=0.125, out=recorded, backend="sdpa_math",
                                            layer="blocks.0.attn", step=2, text_tokens=10)
    report = compare_attention([record], backends=["sdpa", "sdpa_flash"], progress=False)
    assert [r.backend for r in report.rows] == ["recorded:sdpa_math", "sdpa", "sdpa_flash"]
    assert report.rows[0].input == "blocks.0.attn/step2" and report.rows[0].source == "recorded output"
    assert all(r.verdict == "pass" for r in report.rows)
    assert report.rows[0].rel_l2_vs_recorded is None
    assert 0 < report.rows[1].rel_l2_vs_recorded < 5e-3


class _LargestTensor(TorchDispatchMode):
    """Records the shape of every tensor any torch op produces."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_comparison_at_2048_never_holds_an_s_by_s_matrix(monkeypatch, registered):
    seq = 2048

    def chunked_kernel(q, k, v, *, scale, causal=False, return_lse=False):  # exact, 128 queries at a time
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q[:, i:i + 128].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale).transpose(1, 2)
            for i in range(0, q.shape[1], 128)], dim=1)

    registered("chunked", chunked_kernel)
    monkeypatch.setattr(attention_module, "REFERENCE_BUDGET_ELEMENTS", 2**19)
    monkeypatch.setattr(gate_module, "BASELINE_BUDGET_ELEMENTS", 2**19)
    case = InputSpec(seq, 2, 16).materialise(torch.bfloat16, seed=0)
    with _LargestTensor() as spy:
        report = compare_attention([case], backends=["chunked"], progress=False)
    assert report.verdicts == {"chunked": "pass"}
    assert spy.shapes, "the spy saw no ops"
    largest = max(math.prod(s) for s in spy.shapes)
    assert largest <= 2**19, f"a tensor of {largest} elements exists; the budget is {2**19}"
    assert not any(len(s) >= 2 and s[-1] >= seq and s[-2] >= seq for s in spy.shapes)


def test_case_objects_are_accepted_as_is():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 50, 2, 32, generator=gen) for _ in range(3))
    case = AttentionCase("mine", q, k, v, scale=0.2)
    report = compare_attention(case, backends=["sdpa"], progress=False)
    assert report.rows[0].input == "mine" and report.rows[0].dtype == "float32"
    assert report.verdicts == {"sdpa": "pass"}


def test_error_map_figure_names_the_worst_head(registered, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from fluxlab.compare import plot_error_maps

    registered("broken_head", BROKEN["broken_head"])
    report = compare_attention(SMALL[:1], backends=["sdpa", "broken_head"], progress=False)
    fig = plot_error_maps(report, path=tmp_path / "maps.png")
    assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"
    titles = [ax.get_title(loc="left") + ax.get_title() for ax in fig.axes]
    assert any("broken_head [fail]" in t for t in titles)
    assert any("per head (worst 1)" in t for t in titles)
    with pytest.raises(ValueError, match="no row has an error map"):
        plot_error_maps(compare_attention(SMALL[:1], backends=["sdpa"], progress=False, error_maps=False))


def test_to_dataframe_without_pandas_says_how_to_get_it(monkeypatch):
    import sys

    report = compare_attention(SMALL[:1], backends=["sdpa"], progress=False)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        report.to_dataframe()
    assert report.rows[0].as_dict()["backend"] == "sdpa"  # the rows need no pandas


def test_another_backend_can_be_the_reference():
    """reference= runs that backend on float64 copies: torch's math kernel in float64 is as good as exact."""
    exact = compare_attention(SMALL[:1], backends=["sdpa_flash"], progress=False)
    by_math = compare_attention(SMALL[:1], backends=["sdpa_flash"], reference="sdpa_math", progress=False)
    assert by_math.verdicts == {"sdpa_flash": "pass"}
    assert by_math.rows[0].rel_l2 == pytest.approx(exact.rows[0].rel_l2, rel=1e-6)
    assert exact.rows[0].lse_max_abs < 1e-4
    assert by_math.rows[0].lse_max_abs is None  # sdpa_math gives no LSE to compare the kernel's with


def test_backend_specs_parse_options_and_knobs():
    from fluxlab.compare import BackendSpec

    aiter = BackendSpec.parse("aiter:how_v3_bf16_cvt=0")
    assert (aiter.name, aiter.options, aiter.knobs, aiter.label) == ("aiter", {"how_v3_bf16_cvt": 0}, (),
                                                                      "aiter:how_v3_bf16_cvt=0")
    knob = BackendSpec.parse("native:cudnn=off")  # diffusers' alias
    assert (knob.name, knob.options, knob.knobs, knob.label) == ("sdpa", {}, (("cudnn", False),), "sdpa:cudnn=0")
    with pytest.raises(ValueError, match="has no option"):
        BackendSpec.parse("sdpa:how_v3_bf16_cvt=0")
    with pytest.raises(ValueError, match="takes 0 or 1"):
        BackendSpec.parse("sdpa:cudnn=maybe")
    report = compare_attention(SMALL[:1], backends="sdpa,aiter:how_v3_bf16_cvt=0", progress=False)
    assert report.verdicts == {"sdpa": "pass"}  # aiter cannot run on this CPU: skipped with its reasons
    assert "aiter:how_v3_bf16_cvt=0" in report.skipped
