"""The plan object and the dispatch-level bad inputs of issue 11: one answer to "what runs", kernels bound at
plan time, ``fa`` as a group, one spec grammar, context-local ``use_backend``, a bad environment variable, the
layout check with ``heads=``, scales that overflow, and an LSE without a gradient."""

from __future__ import annotations

import ast
import builtins
import importlib
import pathlib
import threading

import pytest
import torch

import fluxlab
from fluxlab import plan
from fluxlab.platform import Platform
from fluxlab.errors import (BackendUnavailableError, FluxlabError, FluxlabWarning, InvalidBackendSpecError,
                            InvalidInputError, NoBackendError)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    monkeypatch.delenv("FLUXLAB_ATTENTION_BACKEND", raising=False)
    fluxlab.clear_caches()
    yield
    fluxlab.dispatch.reset_backend_choice()
    fluxlab.clear_caches()


def cpu_inputs(shape=(1, 16, 2, 32), dtype=torch.float32, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad) for _ in range(3))


def meta(shape=(1, 4608, 24, 128), dtype=torch.bfloat16):
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t, t, t


# --- the plan object ----------------------------------------------------------------------------------------------

def test_plan_answers_what_runs_and_runs_it():
    q, k, v = cpu_inputs()
    p = plan(q, k, v)
    assert isinstance(p, fluxlab.Plan)
    assert (p.backend, p.requested, p.platform.vendor, p.options, p.warnings) == ("sdpa", None, "cpu", {}, ())
    assert p.version == torch.__version__.split("+")[0]
    assert p.scale == pytest.approx(32 ** -0.5) and not p.causal and not p.return_lse
    torch.testing.assert_close(p(q, k, v), fluxlab.attention(q, k, v, backend="sdpa"), rtol=0, atol=0)
    assert p.run is not None and "runs: sdpa" in p.describe() and "requested: automatic" in p.describe()
    others = p.reasons_for_others()
    assert "ranked below sdpa" in others["sdpa_flash"][0]
    assert any("not on cpu" in r for r in others["sdpa_cudnn"])


def test_plan_refuses_inputs_of_another_kind():
    q, k, v = cpu_inputs()
    p = plan(q, k, v)
    q2, k2, v2 = cpu_inputs(shape=(1, 17, 2, 32))
    with pytest.raises(InvalidInputError, match="this plan was made for q 1x16x2x32.*fluxlab.plan"):
        p(q2, k2, v2)


@pytest.mark.parametrize("backend, profile", [("fa3", "h100"), ("fa2", "a100"), ("aiter", "mi300x"),
                                              ("aiter_sage", "mi300x"), ("aiter_triton", "mi300x")])
def test_kernel_is_bound_when_the_plan_is_made_nothing_imported_per_call(standins, backend, profile):
    # The library (its stand-in here) is imported by plan(), not per call.
    p = plan(*meta(shape=(2, 40, 4, 128)), backend=backend, platform=getattr(Platform, profile)())
    assert p.backend == backend and p.requested == backend

    real_import, imported = builtins.__import__, []

    def recording_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    q, k, v = cpu_inputs(shape=(2, 40, 4, 128), dtype=torch.bfloat16)
    builtins.__import__ = recording_import
    try:
        out = p.fn(q, k, v, scale=p.scale, causal=False, return_lse=False)
    finally:
        builtins.__import__ = real_import
    assert out.shape == q.shape
    assert [name for name in imported if name.split(".")[0] in ("flash_attn", "flash_attn_interface", "aiter")] == []


# --- fa as a priority group; no import circle ---------------------------------------------------------------------

def test_fa_is_a_group_resolved_by_the_plan(standins):
    group = fluxlab.registry.get_backend("fa")
    assert not isinstance(group, fluxlab.Backend) and not hasattr(group, "fn")  # no kernel that raises
    p = plan(*meta(shape=(2, 40, 4, 128)), backend="fa", platform=Platform.h100())
    assert (p.backend, p.requested) == ("fa3", "fa")  # fa4 not installed; fa3's stand-in is
    assert plan(*meta(shape=(2, 40, 4, 128)), backend="flash", platform=Platform.a100()).backend == "fa2"
    with pytest.raises(BackendUnavailableError, match="no member of the 'fa' group can run here"):
        plan(*meta(dtype=torch.float32), backend="fa", platform=Platform.h100())


def test_backends_never_import_the_registry_or_dispatcher():
    for path in (ROOT / "fluxlab" / "backends").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module not in ("registry", "dispatch"), f"{path.name} imports ..{node.module}"


# --- one spec grammar ---------------------------------------------------------------------------------------------

def test_one_grammar_for_attention_use_backend_and_compare():
    from fluxlab.compare import BackendSpec

    q, k, v = cpu_inputs()
    expected = fluxlab.attention(q, k, v, backend="sdpa")
    torch.testing.assert_close(fluxlab.attention(q, k, v, backend="sdpa:cudnn=0"), expected, rtol=0, atol=0)
    with fluxlab.use_backend("sdpa:cudnn=0"):
        assert str(fluxlab.dispatch.selected_backend()) == "sdpa:cudnn=0"
        torch.testing.assert_close(fluxlab.attention(q, k, v), expected, rtol=0, atol=0)
    assert BackendSpec.parse("sdpa:cudnn=0").choice == fluxlab.choice.BackendChoice.parse("sdpa:cudnn=0")
    assert plan(q, k, v, backend="native:cudnn=off").knobs == (("cudnn", False),)


@pytest.mark.parametrize("where", ["parse", "attention", "use_backend", "compare"])
def test_option_values_are_validated_by_the_backend(where):
    from fluxlab.compare import BackendSpec

    q, k, v = cpu_inputs()
    spec = "aiter:how_v3_bf16_cvt=7"
    call = {"parse": lambda: fluxlab.choice.BackendChoice.parse(spec), "attention": lambda: fluxlab.attention(q, k, v, backend=spec),
            "use_backend": lambda: fluxlab.use_backend(spec), "compare": lambda: BackendSpec.parse(spec)}[where]
    with pytest.raises(InvalidBackendSpecError) as info:
        call()
    message = str(info.value)
    assert "how_v3_bf16_cvt=7 is not valid" in message
    assert "0 (RTNE" in message and "1 (RTNA" in message and "2 (RTZ" in message


# --- context-local use_backend ------------------------------------------------------------------------------------

def test_another_threads_with_block_does_not_serve_this_thread():
    q, k, v = cpu_inputs()
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        with fluxlab.use_backend("sdpa_math"):
            seen["other"] = plan(q, k, v).backend
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert entered.wait(10)
    try:
        assert plan(q, k, v).backend == "sdpa"  # this thread: automatic, not the other thread's choice
        assert fluxlab.attention(q, k, v) is not None and fluxlab.dispatch.selected_backend() is None
    finally:
        release.set()
        thread.join(10)
    assert seen["other"] == "sdpa_math"


def test_interleaved_exits_leave_nothing_selected():
    first, second = fluxlab.use_backend("reference"), None
    first.__enter__()
    second = fluxlab.use_backend("sdpa_math")
    second.__enter__()
    first.__exit__(None, None, None)  # out of order, as two generators or tasks can do
    assert str(fluxlab.dispatch.selected_backend()) == "sdpa_math"
    second.__exit__(None, None, None)
    assert fluxlab.dispatch.selected_backend() is None  # before: 'reference' stayed selected for good
    q, k, v = cpu_inputs()
    assert plan(q, k, v).backend == "sdpa"


@pytest.mark.parametrize("value, problem", [("nosuch", "unknown attention backend 'nosuch'"),
                                            ("aiter:how_v3_bf16_cvt=7", "how_v3_bf16_cvt=7 is not valid")])
def test_bad_environment_variable_names_itself(monkeypatch, value, problem):
    monkeypatch.setenv("FLUXLAB_ATTENTION_BACKEND", value)
    q, k, v = cpu_inputs()
    with pytest.raises(InvalidBackendSpecError) as info:
        fluxlab.attention(q, k, v)
    message = str(info.value)
    assert f"FLUXLAB_ATTENTION_BACKEND={value!r}" in message and problem in message
    assert "unset FLUXLAB_ATTENTION_BACKEND" in message
    assert fluxlab.attention(q, k, v, backend="sdpa") is not None  # an explicit choice does not read it


# --- layout check with heads= -------------------------------------------------------------------------------------

def test_heads_catches_a_transposed_tensor_the_layout_check_alone_cannot():
    q, k, v = (t.transpose(1, 2) for t in cpu_inputs(shape=(1, 16, 2, 32)))  # [B, H, S, D] = 1x2x16x32
    assert fluxlab.attention(q, k, v).shape == q.shape  # documented: few heads, short sequence -> undecidable
    with pytest.raises(InvalidInputError, match="declares 2 heads.*pass q.transpose\\(1, 2\\)"):
        fluxlab.attention(q, k, v, heads=2)


# --- scales that overflow -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale, match", [(1e37, "can overflow the attention scores"),
                                          (1e39, "beyond torch.float32's largest value")])
def test_a_scale_that_overflows_float32_is_refused(scale, match):
    q, k, v = cpu_inputs()
    with pytest.raises(InvalidInputError, match=match) as info:
        fluxlab.attention(q, k, v, scale=scale)
    assert "head_dim ** -0.5 = 0.176777" in str(info.value)
    assert torch.isfinite(fluxlab.attention(q, k, v, scale=1e3)).all()  # large but safe: runs


def test_overflow_rule_uses_the_inputs_magnitude():
    q, k, v = cpu_inputs()
    big = q * 1e19  # scores up to ~1e38 x head_dim: beyond float32
    with pytest.raises(InvalidInputError, match="max\\|q\\| x max\\|k\\|"):
        fluxlab.attention(big, k * 1e19, v, scale=1.0)
    half = cpu_inputs(dtype=torch.float16)
    with pytest.raises(InvalidInputError, match="overflows float16 when q and k are pre-scaled"):
        q16 = (half[0].float() * (6e4 / half[0].float().abs().max())).half()  # fits float16 (max 65504)
        fluxlab.attention(q16, half[1], half[2], scale=4.0)  # but 2 x 6e4 does not


# --- LSE gradient -------------------------------------------------------------------------------------------------

def _lse_loss_grad(backend):
    q, k, v = cpu_inputs(dtype=torch.float64, requires_grad=True)
    out, lse = fluxlab.attention(q, k, v, backend=backend, scale=0.3, return_lse=True)
    (out.sum() + lse.double().sum()).backward()
    return q.grad


def test_lse_with_grad_inputs_refused_where_it_has_no_backward():
    q, k, v = cpu_inputs(requires_grad=True)
    with pytest.raises(BackendUnavailableError, match="sdpa_flash's log-sum-exp carries no gradient"):
        fluxlab.attention(q, k, v, backend="sdpa_flash", return_lse=True)
    with pytest.raises(NoBackendError, match="carries no gradient"):
        fluxlab.attention(q, k, v, return_lse=True)  # automatic choice: nothing on CPU's list qualifies
    with torch.no_grad():  # no gradient needed: fine
        out, lse = fluxlab.attention(q, k, v, backend="sdpa_flash", return_lse=True)
    assert lse.shape == (1, 2, 16)


def test_lse_gradient_is_right_where_it_is_returned():
    q, k, v = cpu_inputs(dtype=torch.float64, requires_grad=True)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.3
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    (out.sum() + torch.logsumexp(scores, -1).sum()).backward()
    torch.testing.assert_close(_lse_loss_grad("reference"), q.grad)


# --- stand-in marks, errors -----------------------------------------------------------------------------------------

def test_stand_in_only_backends_are_marked_in_doctor():
    rows = {r.name: r for r in fluxlab.backends()}
    assert {n for n, r in rows.items() if r.stand_in_only} >= {"fa2", "aiter", "aiter_sage"}
    # fa3 ran on an H100 (PyPI's fa3-fwd: benchmarks/results/h100/hopper_quant/)
    assert not rows["fa4"].stand_in_only and not rows["sdpa"].stand_in_only and not rows["fa3"].stand_in_only
    lines = {line.split()[0]: line for line in fluxlab.doctor_text().splitlines()[4:]}
    assert "proven on a stand-in only" in lines["fa2"] and "proven on a stand-in only" not in lines["fa3"]
    ranks_doc = importlib.import_module("fluxlab.backends.flash_attn").__doc__  # where fa2/fa3 get their ranks
    assert "H200" not in ranks_doc and "stand-in" in ranks_doc
    assert "see README" not in (ROOT / "fluxlab" / "backends" / "aiter.py").read_text()


def test_every_error_and_warning_class_is_fluxlabs():
    found = []
    for path in sorted((ROOT / "fluxlab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Warning")):
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                found.append((module, node.name))
    assert len(found) >= 15
    for module, name in found:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, (FluxlabError, FluxlabWarning)), f"{module}.{name} is outside FluxlabError"


# --- the FLUX.2 router passes heads= ------------------------------------------------------------------------------

def test_flux2_router_passes_each_modules_head_count(monkeypatch):
    from fluxlab.models import attach as attach_module
    from fluxlab.models.tiny import build_tiny_pipeline

    from _flux2 import attached, generate

    seen = []
    real_attention = attach_module.attention

    def recording(q, k, v, **kwargs):
        seen.append((q.shape[2], kwargs.get("heads")))
        return real_attention(q, k, v, **kwargs)

    monkeypatch.setattr(attach_module, "attention", recording)
    pipe = build_tiny_pipeline("dev")
    with attached(pipe):
        generate(pipe, steps=1)
    assert seen and all(heads is not None and heads == q_heads for q_heads, heads in seen)


def test_widget_generation_thread_keeps_the_callers_backend_choice():
    from fluxlab.widgets._common import RunControls

    seen, done = [], threading.Event()

    def generation():
        seen.append(str(fluxlab.dispatch.selected_backend()))
        done.set()

    with fluxlab.use_backend("sdpa_math"):
        RunControls(threaded=True).launch(generation)  # a background thread, as in a Jupyter kernel
        assert done.wait(10)
    assert seen == ["sdpa_math"]


def test_registered_backend_declares_its_option_values():
    def kernel(q, k, v, *, scale, causal=False, return_lse=False, mode=0):
        return fluxlab.attention(q, k, v, backend="sdpa", scale=scale)

    fluxlab.register_backend("moded", kernel, options={"mode": 0}, option_values={"mode": {0: "plain", 1: "fast"}})
    try:
        q, k, v = cpu_inputs()
        assert plan(q, k, v, backend="moded:mode=1").options == {"mode": 1}
        with pytest.raises(InvalidBackendSpecError, match="mode=2 is not valid; valid values: 0 \\(plain\\), 1 \\(fast\\)"):
            fluxlab.attention(q, k, v, backend="moded:mode=2")
    finally:
        fluxlab.registry.unregister_backend("moded")
