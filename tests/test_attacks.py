"""Attacks a careless or hostile user could make, each once a silent wrong answer or a deletion: every one is now
refused with a message naming the problem (or judged correctly), and nothing outside a run folder is touched."""

from __future__ import annotations

import gc
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxlab.outputs import RUN_FILE

REPO = Path(__file__).resolve().parents[1]


def _fluxlab(capsys, *argv: str) -> tuple[int, str]:
    """The CLI in this process (the installed entry point's exit codes and one-line errors are test_cli's): its
    exit code and what it wrote to stderr. An exception escaping ``main`` fails the test as a traceback would."""
    from fluxlab.cli import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def _plant(out: Path, victim: Path, how: str) -> None:
    """A results folder received from someone else: its run file names the victim by one route out."""
    out.mkdir()
    if how == "absolute":
        listed = [str(victim)]
    elif how == "parent":
        listed = [os.path.relpath(victim, out)]
    elif how == "link-to-folder":
        (out / "sdpa").symlink_to(victim.parent, target_is_directory=True)
        listed = [f"sdpa/{victim.name}"]
    elif how == "link-to-file":
        (out / "image.png").symlink_to(victim)
        listed = ["image.png"]
    elif how == "run-file-is-a-link":
        decoy = victim.parent / "decoy.json"
        decoy.write_text(json.dumps({"files": [victim.name]}))
        (out / RUN_FILE).symlink_to(decoy)
        return
    else:
        raise AssertionError(how)
    (out / RUN_FILE).write_text(json.dumps({"verb": "generate", "files": listed}))


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("how", ["absolute", "parent", "link-to-folder", "link-to-file", "run-file-is-a-link"])
def test_a_planted_run_file_cannot_delete_anything_outside_the_run_folder(tmp_path, capsys, how, overwrite):
    victim = tmp_path / "home" / "precious" / "important.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("irreplaceable")
    out = tmp_path / "received-results"
    _plant(out, victim, how)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    beside_victim = sorted(p.name for p in victim.parent.iterdir())

    code, err = _fluxlab(capsys, "generate", "--model", "tiny", "--backends", "sdpa", "--steps", "1", "--size", "32",
                         "--max-sequence-length", "16", "--no-progress", "--out", str(out),
                         *(["--overwrite"] if overwrite else []))

    assert victim.read_text() == "irreplaceable"  # the victim and its folder survive
    assert sorted(p.name for p in victim.parent.iterdir()) == beside_victim
    assert code == 2, err
    assert "Traceback" not in err
    assert "deletes nothing" in err or "links that lead out of the folder" in err, err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # the folder itself untouched


def test_a_run_file_naming_only_its_own_files_still_replaces_them(tmp_path, capsys):
    """The guard refuses routes out, not fluxlab's own earlier files: a re-run replaces them."""
    out = tmp_path / "run"
    args = ["generate", "--model", "tiny", "--backends", "sdpa", "--steps", "1", "--size", "32",
            "--max-sequence-length", "16", "--no-progress", "--out", str(out)]
    try:
        code, err = _fluxlab(capsys, *args)
        assert code == 0, err
        (out / "sdpa" / "stale.txt").write_text("from an older fluxlab")  # listed as its own: it goes
        listed = json.loads((out / RUN_FILE).read_text())
        (out / RUN_FILE).write_text(json.dumps({**listed, "files": [*listed["files"], "sdpa/stale.txt"]}))
        code, err = _fluxlab(capsys, *args)
        assert code == 0, err
        assert not (out / "sdpa" / "stale.txt").exists()
        assert (out / "sdpa" / "image.png").is_file()
    finally:
        gc.collect()  # the CLI's pipelines are dropped, not detached: their share of the router goes with them now


# -- compare_images judges its reference too ------------------------------------------------------------------------


def _nan_kernel(q, k, v, *, scale, **_):
    return torch.full_like(q, float("nan"))


def _scale_1_5(q, k, v, *, scale, **_):
    """An otherwise exact kernel whose softmax scale is 1.5x too large: close, finite, and wrong."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.5 * scale)
    return out.transpose(1, 2)


@pytest.fixture(scope="module")
def tiny_pipe_with_bad_kernels():
    import fluxlab
    from fluxlab.models.attach import attach, detach
    from fluxlab.models import FLUX2_BACKENDS

    pipe = fluxlab.load_flux2("tiny", variant="dev")
    fluxlab.register_backend("attack_nan", _nan_kernel)
    fluxlab.register_backend("attack_scale_1_5", _scale_1_5)
    detach(pipe)
    attach(pipe, allowed=FLUX2_BACKENDS | {"attack_nan", "attack_scale_1_5"})
    yield pipe
    detach(pipe)
    fluxlab.registry.unregister_backend("attack_nan")
    fluxlab.registry.unregister_backend("attack_scale_1_5")


SMALL = dict(steps=2, seeds=(0, 1), height=32, width=32)


@pytest.mark.slow
@pytest.mark.parametrize("first, why", [
    ("attack_nan", r"the reference backend 'attack_nan' failed: BackendOutputError: .* NaN/inf values"),
    ("attack_scale_1_5", "is not exact at seed 0: against the float64")])
def test_a_broken_reference_is_refused_with_the_reason(tiny_pipe_with_bad_kernels, first, why):
    from fluxlab.compare.images import compare_images
    from fluxlab.errors import BadReferenceError

    with pytest.raises(BadReferenceError, match=why) as caught:
        compare_images(tiny_pipe_with_bad_kernels, [first, "sdpa"], reference=first, **SMALL)
    assert "reference='sdpa'" in str(caught.value)  # the fix is named


@pytest.mark.slow
def test_a_broken_first_backend_is_not_a_default_reference_that_passes_itself(tiny_pipe_with_bad_kernels):
    from fluxlab.compare.images import compare_images
    from fluxlab.errors import BadReferenceError

    result = compare_images(tiny_pipe_with_bad_kernels, ["attack_nan", "sdpa"], **SMALL)
    assert result.reference == "sdpa" and result.verdicts == {"attack_nan": "fail", "sdpa": "pass"}
    with pytest.raises(BadReferenceError, match="is not exact at seed 0"):  # exact-looking, but 1.5x the scale
        compare_images(tiny_pipe_with_bad_kernels, ["attack_scale_1_5", "sdpa"], **SMALL)


@pytest.mark.slow
def test_the_same_broken_kernels_fail_when_an_exact_backend_is_the_reference(tiny_pipe_with_bad_kernels):
    from fluxlab.compare.images import compare_images

    result = compare_images(tiny_pipe_with_bad_kernels, ["sdpa", "attack_nan", "attack_scale_1_5"], **SMALL)
    assert result.verdicts == {"sdpa": "pass", "attack_nan": "fail", "attack_scale_1_5": "fail"}
    assert "against the float64 'reference' backend" in result.metrics["sdpa"].verdict_note


@pytest.mark.parametrize("call", [dict(backends=["emu_sage", "sdpa"], reference="emu_sage"),
                                  dict(backends=["emu_sage", "emu_bf16"])], ids=["named", "all-approximate"])
def test_an_approximate_reference_is_refused_before_any_generation(monkeypatch, call):
    import fluxlab.compare.images as images
    from fluxlab.errors import BadReferenceError

    def refuse(*_a, **_k):
        raise AssertionError("a generation started before the reference was refused")

    monkeypatch.setattr(images, "run", refuse)  # the one pipeline runner every generation goes through
    with pytest.raises(BadReferenceError, match="approximate"):
        images.compare_images(object(), call["backends"], reference=call.get("reference"), steps=1)


@pytest.mark.slow
def test_an_approximate_first_backend_is_judged_against_an_exact_default_reference(tiny_pipe_with_bad_kernels):
    from fluxlab.compare.images import compare_images

    result = compare_images(tiny_pipe_with_bad_kernels, ["emu_sage", "sdpa"], **SMALL)
    assert result.reference == "sdpa"
    assert "the reference" not in result.metrics["emu_sage"].verdict_note


# -- autotune: a candidate is its whole spec ------------------------------------------------------------------------


def _image(pipe):
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt="a fox", height=32, width=32, num_inference_steps=2, max_sequence_length=16,
                generator=generator, output_type="np").images


@pytest.mark.slow
def test_autotune_measures_stores_and_applies_a_candidates_options(tmp_path):
    import fluxlab
    from fluxlab.decide import AutotuneResult, autotune
    from fluxlab.models.attach import set_backend, set_schedule

    rtz = "emu_aiter:how_v3_bf16_cvt=2"  # aiter's round-toward-zero variant: not the default rounding
    pipe = fluxlab.load_flux2("tiny", variant="dev")
    plan = autotune(pipe, candidates=[rtz, "emu_aiter"], prompt="a fox", steps=2, allow_quantised=True,
                    confirm=False, repeats=1, height=32, width=32, max_sequence_length=16)
    measured = {(m.layer, m.backend): m.rel_l2 for m in plan.measurements}
    layers = list(plan.automatic)
    assert {b for _, b in measured} == {rtz, "emu_aiter"}  # not collapsed into one "emu_aiter"
    assert all(measured[(layer, rtz)] != measured[(layer, "emu_aiter")] for layer in layers)
    assert plan.settings["candidates"] == [rtz, "emu_aiter"]
    # stored: the loaded plan keeps the spec apart; applied: a schedule of it runs the option, not the default
    loaded = AutotuneResult.load(plan.save(tmp_path / "plan.json"))
    assert {(m.layer, m.backend): m.rel_l2 for m in loaded.measurements} == measured
    assert loaded.choices == plan.choices and rtz not in loaded.choices.values()  # it is judged warn there
    assert rtz in loaded.reasons and "warn" in loaded.reasons[rtz]
    plan.choices = {layer: rtz for layer in layers}
    set_schedule(pipe, plan.schedule)
    scheduled = _image(pipe)
    set_schedule(pipe, None)
    set_backend(pipe, rtz)
    direct = _image(pipe)
    set_backend(pipe, "emu_aiter")
    default = _image(pipe)
    set_backend(pipe, None)
    assert np.array_equal(scheduled, direct)
    assert not np.array_equal(scheduled, default)
    fluxlab.detach(pipe)  # the router leaves with the last attached model


# -- AutotuneResult.load checks a plan against its own evidence --------------------------------------------------------

H200_PLAN = REPO / "benchmarks/results/h200/decide/autotune_plan_1024.json"


def _edited_plan(tmp_path, edit) -> Path:
    data = json.loads(H200_PLAN.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _first_layer(data) -> str:
    return next(iter(data["choices"]))


def _choose_failing(data):
    layer = _first_layer(data)
    data["choices"][layer] = "fa4"
    for m in data["measurements"]:
        if m["layer"] == layer and m["backend"] == "fa4":
            m["verdict"] = "fail"


def _choose_unmeasured_quantised(data):
    data["choices"][_first_layer(data)] = "sage"


def _choose_quantised_measured_pass(data):
    layer = _first_layer(data)
    data["choices"][layer] = "emu_sage"
    data["measurements"].append({"layer": layer, "backend": "emu_sage", "verdict": "pass", "time_ms": 0.1,
                                 "quantised": True})


def _choose_unmeasured_exact(data):
    data["choices"][_first_layer(data)] = "sdpa"


def _choose_untimed(data):
    layer = _first_layer(data)
    for m in data["measurements"]:
        if m["layer"] == layer and m["backend"] == data["choices"][layer]:
            m["time_ms"] = None


@pytest.mark.parametrize("edit, why", [
    (_choose_failing, "fa4 on {layer} was judged fail"),
    (_choose_unmeasured_quantised, "sage on {layer} was never measured there"),
    (_choose_quantised_measured_pass, "emu_sage on {layer} is quantised/emulated but the plan was made with "
                                      "allow_quantised=False"),
    (_choose_unmeasured_exact, "sdpa on {layer} was never measured there"),
    (_choose_untimed, "on {layer} has no measured time"),
], ids=["failing", "unmeasured-quantised", "quantised-not-allowed", "unmeasured-exact", "untimed"])
def test_a_hand_edited_plan_is_refused_by_its_own_evidence(tmp_path, edit, why):
    from fluxlab.decide import AutotuneResult, InvalidPlanError

    path = _edited_plan(tmp_path, edit)
    layer = _first_layer(json.loads(path.read_text()))
    for allow_mismatch in (False, True):  # evidence is not a platform difference: allow_mismatch does not skip it
        with pytest.raises(InvalidPlanError, match=re.escape(why.format(layer=layer))):
            AutotuneResult.load(path, allow_mismatch=allow_mismatch)
    assert AutotuneResult.load(H200_PLAN, allow_mismatch=True).choices  # the unedited plan loads


def _made_here(data, versions):
    from fluxlab.decide.autotune import current_identity

    platform, here = current_identity(sorted({b for b in data["choices"].values()}))
    data["platform"] = platform
    data["versions"] = here if versions == "here" else versions


@pytest.mark.parametrize("versions, loads", [("here", True), ({}, False), ({"fluxlab": "0.1.0"}, False)],
                         ids=["all-versions", "no-versions", "fluxlab-only"])
def test_missing_versions_do_not_skip_the_version_check(tmp_path, versions, loads):
    from fluxlab.decide import AutotuneResult, PlanMismatchError

    path = _edited_plan(tmp_path, lambda data: _made_here(data, versions))
    if loads:
        assert AutotuneResult.load(path).choices
    else:
        with pytest.raises(PlanMismatchError, match=r"version torch None there, '.+' here"):
            AutotuneResult.load(path)


# -- a Plan refuses what attention() refuses -------------------------------------------------------------------------


def _qkv(*shape, dtype=torch.float32):
    torch.manual_seed(0)
    return tuple(torch.randn(*shape, dtype=dtype) for _ in range(3))


def test_a_plan_made_without_grad_refuses_grad_inputs_when_its_lse_has_no_backward():
    import fluxlab
    from fluxlab.errors import BackendUnavailableError

    q, k, v = _qkv(1, 16, 2, 32)
    p = fluxlab.plan(q, k, v, backend="sdpa_flash", return_lse=True)  # no grad at plan time
    assert p(q, k, v)[1].shape == (1, 2, 16)  # still runs without grad
    with pytest.raises(BackendUnavailableError, match="sdpa_flash', whose log-sum-exp carries no gradient"):
        p(q.clone().requires_grad_(), k, v)
    with pytest.raises(BackendUnavailableError):  # attention() refuses the same call
        fluxlab.attention(q.clone().requires_grad_(), k, v, backend="sdpa_flash", return_lse=True)
    with torch.no_grad():  # no gradient wanted: runs
        p(q.clone().requires_grad_(), k, v)
    # a backend whose LSE has a backward runs, and its gradient is the float64 truth's
    exact = fluxlab.plan(q, k, v, backend="reference", return_lse=True)
    qg = q.clone().requires_grad_()
    exact(qg, k, v)[1].sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


def test_a_plan_called_with_k_in_another_dtype_is_refused_with_the_fix():
    import fluxlab
    from fluxlab.errors import InvalidInputError

    q, k, v = _qkv(1, 16, 2, 32)
    p = fluxlab.plan(q, k, v, backend="sdpa")
    with pytest.raises(InvalidInputError, match=r"k 1x16x2x32 bfloat16 on cpu.*k = k.to\(q\)"):
        p(q, k.bfloat16(), v)


# -- [B, H, S, D] with few tokens ------------------------------------------------------------------------------------


def test_a_head_axis_longer_than_the_sequence_axis_warns_once_naming_heads():
    import warnings

    import fluxlab
    from fluxlab.errors import LayoutWarning

    bhsd = torch.randn(1, 4, 128, 64)  # [B, H, S, D]: read as 128 heads of 4 tokens
    with pytest.warns(LayoutWarning, match=r"128 in the heads dim but 4 in the sequence dim.*heads=128"):
        fluxlab.attention(bhsd, bhsd, bhsd, backend="sdpa_math")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        fluxlab.attention(bhsd, bhsd, bhsd, backend="sdpa")  # once per shape, not per call
        other = torch.randn(1, 4, 96, 64)
        fluxlab.attention(other, other, other, heads=96)  # the layout confirmed: no warning
        bshd = torch.randn(1, 128, 4, 64)
        fluxlab.attention(bshd, bshd, bshd)  # the usual layout: no warning


# -- outputs that break the contract ---------------------------------------------------------------------------------


def _all_nan(q, k, v, *, scale, causal=False, return_lse=False):
    return torch.full_like(q, float("nan"))


def _on_meta(q, k, v, *, scale, causal=False, return_lse=False):
    return torch.empty_like(q, device="meta")


@pytest.mark.parametrize("fn, error, fragment", [
    (_all_nan, "BackendOutputError", "returned 1024 NaN/inf values of 1024 for finite inputs"),
    (_on_meta, "BackendOutputError", "returned its output on meta for inputs on cpu"),
], ids=["nan-out", "other-device"])
def test_a_user_backend_breaking_the_output_contract_is_refused(fn, error, fragment):
    import fluxlab

    fluxlab.register_backend("attack_out", fn)
    try:
        q, k, v = _qkv(1, 16, 2, 32)
        for call in (lambda: fluxlab.attention(q, k, v, backend="attack_out"),
                     lambda: fluxlab.plan(q, k, v, backend="attack_out")(q, k, v)):
            fluxlab.clear_caches()
            with pytest.raises(getattr(fluxlab.errors, error), match=re.escape(fragment)):
                call()
    finally:
        fluxlab.registry.unregister_backend("attack_out")


def test_nan_inputs_are_named_on_a_plans_first_call():
    import fluxlab
    from fluxlab.errors import InvalidInputError

    q, k, v = _qkv(1, 16, 2, 32)
    q[0, 3, 1, 0] = float("nan")
    fluxlab.clear_caches()
    with pytest.raises(InvalidInputError, match="q contains 1 NaN/inf values"):
        fluxlab.attention(q, k, v, backend="sdpa")
    assert torch.isnan(fluxlab.attention(q, k, v, backend="sdpa", check_finite=False)).any()  # asked: no check


# -- register_backend refuses what could only fail later --------------------------------------------------------------


def _no_scale(q, k, v, *, causal=False, return_lse=False):
    return q


def _good(q, k, v, *, scale, causal=False, return_lse=False):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          scale=scale).transpose(1, 2)


REGISTRATIONS = [  # (id, name, fn, keyword arguments, message fragment)
    ("no-scale-keyword", "attack_k", _no_scale, {}, "fn must take the keyword argument(s) scale"),
    ("option-not-taken", "attack_k", _good, {"options": {"block": 64}}, "keyword argument(s) block"),
    ("replace-reference", "reference", _good, {"replace": True}, "'reference' is a built-in backend"),
    ("replace-sdpa", "sdpa", _good, {"replace": True}, "'sdpa' is a built-in backend"),
    ("alias", "native", _good, {"replace": True}, "'native' is an alias of the built-in 'sdpa'"),
    ("dtype-typo", "attack_k", _good, {"dtypes": "bfloat17"}, "dtypes has 'bfloat17', not a floating"),
]


@pytest.mark.parametrize("case", REGISTRATIONS, ids=[c[0] for c in REGISTRATIONS])
def test_register_backend_refuses_at_registration(case):
    import fluxlab
    from fluxlab.errors import BackendRegistrationError

    _, name, fn, kwargs, fragment = case
    with pytest.raises(BackendRegistrationError, match=re.escape(fragment)):
        fluxlab.register_backend(name, fn, **kwargs)
    assert fluxlab.registry.get_backend("reference").builtin  # nothing replaced


def test_register_backend_takes_dtypes_by_name():
    import fluxlab

    backend = fluxlab.register_backend("attack_bf16", _good, dtypes="bfloat16")
    try:
        assert backend.caps.dtypes == frozenset({torch.bfloat16})
        q, k, v = _qkv(1, 16, 2, 32, dtype=torch.bfloat16)
        assert fluxlab.attention(q, k, v, backend="attack_bf16").dtype == torch.bfloat16
    finally:
        fluxlab.registry.unregister_backend("attack_bf16")


@pytest.mark.parametrize("scale", [True, False], ids=["True", "False"])
def test_a_bool_scale_is_refused(scale):
    import fluxlab
    from fluxlab.errors import InvalidInputError

    q, k, v = _qkv(1, 16, 2, 32)
    with pytest.raises(InvalidInputError, match="scale must be a Python float, got bool"):
        fluxlab.attention(q, k, v, scale=scale)


# -- DriftExplorer never leaves a schedule installed ----------------------------------------------------------------


@pytest.mark.slow
def test_drift_explorer_leaves_no_schedule_behind_across_a_detach_and_attach():
    import fluxlab
    from fluxlab.decide.runs import DecideInputError
    from fluxlab.models.attach import state_of
    from fluxlab.widgets import DriftExplorer

    pipe = fluxlab.load_flux2("tiny", variant="dev")
    drift = fluxlab.locate_drift(pipe, "sdpa", "emu_bf16", prompt="a fox", steps=2, height=32, width=32,
                                 max_sequence_length=16, beam=1)
    plain = _image(pipe)
    explorer = DriftExplorer(pipe, drift, threaded=False)
    fluxlab.detach(pipe)
    fluxlab.attach(pipe)  # a new attachment: the explorer's runner was made on the old one
    layer = drift.layers[0]
    explorer.click(layer, 0)
    assert explorer.last_error is None and (layer, 0) in explorer.views
    assert state_of(pipe).schedule is None  # the one-cell schedule is gone
    assert np.array_equal(_image(pipe), plain)  # a plain call runs sdpa everywhere again
    with pytest.raises(DecideInputError, match="layer 'bogus' is not in this DriftMap"):
        explorer.click("bogus", 0)
    with pytest.raises(DecideInputError, match="this DriftMap has steps 0..1"):
        explorer.click(layer, 7)
    fluxlab.detach(pipe)  # the router leaves with the last attached model


# -- bad backend options are refused when the spec is parsed ---------------------------------------------------------

BAD_SPECS = [  # (spec, message fragment)
    ("emu_aiter:how_v3_bf16_cvt=7", "how_v3_bf16_cvt=7 is not valid; valid values: 0 (RTNE"),
    ("emu_bf16:probs=fp16", "probs='fp16' is not valid; valid values: 'bf16'"),
    ("emu_sage:pv_chunk=3", "pv_chunk=3 is not valid; valid values: 1 ("),
    ("emu_aiter_sage:fp8=e5m2", "fp8='e5m2' is not valid; valid values: 'e4m3fnuz'"),
    ("emu_bf16:block_n=abc", "block_n='abc' is not valid: block_n takes a whole number of keys >= 0"),
    ("emu_aiter:block_n=-5", "block_n=-5 is not valid"),  # once silently "all keys"
    ("emu_bf16:block_n=true", "block_n=True is not valid"),
    ("reference:cudnn=0", "knob 'cudnn' in 'reference:cudnn=0' changes nothing for 'reference'"),
    ("emu_bf16:lowp_reduction=1", "changes nothing for 'emu_bf16' (it acts on sdpa, sdpa_math only)"),
]


@pytest.mark.parametrize("spec, fragment", BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_a_bad_backend_option_is_refused_at_parse_time_everywhere(spec, fragment, monkeypatch):
    import fluxlab
    from fluxlab.choice import BackendChoice
    from fluxlab.errors import InvalidBackendSpecError

    with pytest.raises(InvalidBackendSpecError, match=re.escape(fragment)):
        BackendChoice.parse(spec)
    q, k, v = _qkv(1, 16, 2, 32)
    with pytest.raises(InvalidBackendSpecError, match=re.escape(fragment)):  # no kernel ran first
        fluxlab.attention(q, k, v, backend=spec)
    monkeypatch.setenv("FLUXLAB_ATTENTION_BACKEND", spec)
    fluxlab.clear_caches()
    with pytest.raises(InvalidBackendSpecError, match=re.escape(fragment)):
        fluxlab.attention(q, k, v)


@pytest.mark.parametrize("spec", ["emu_bf16:block_n=8", "emu_aiter:how_v3_bf16_cvt=2,block_n=0",
                                  "emu_sage:pv_chunk=64", "sdpa:cudnn=0", "sdpa_math:lowp_reduction=1"])
def test_valid_backend_options_still_parse_and_run(spec):
    import fluxlab

    q, k, v = _qkv(1, 16, 2, 64)
    assert torch.isfinite(fluxlab.attention(q, k, v, backend=spec)).all()


# -- the library verbs refuse what they are told up front -----------------------------------------------------------


def test_the_compiled_op_refuses_a_gradient_with_a_message():
    import fluxlab
    from fluxlab.errors import InvalidInputError

    compiled = torch.compile(lambda q, k, v: fluxlab.attention(q, k, v, backend="sdpa"), backend="eager",
                             fullgraph=True)
    q, k, v = (torch.randn(1, 16, 2, 32, requires_grad=True) for _ in range(3))
    with pytest.raises(InvalidInputError, match="op without a backward.*outside torch.compile for training"):
        compiled(q, k, v).sum().backward()
    with torch.no_grad():
        assert torch.equal(compiled(q, k, v), fluxlab.attention(q, k, v, backend="sdpa"))


@pytest.fixture(scope="module")
def tiny():
    import fluxlab

    pipe = fluxlab.load_flux2("tiny", variant="dev")
    yield pipe
    fluxlab.detach(pipe)  # the router leaves with the last attached model: later modules see diffusers' own


def _verbs(tiny):
    import fluxlab
    from fluxlab.compare.images import compare_images

    small = dict(height=32, width=32)
    return {
        "compare-seed-and-seeds": (lambda: compare_images(tiny, ["sdpa"], seed=3, seeds=[0, 1], steps=1, **small),
                                   "InvalidInputError", "got seed=3 and seeds=[0, 1]: pass one of them"),
        "compare-output-type": (lambda: compare_images(tiny, ["sdpa"], steps=1, output_type="pil", **small),
                                "InvalidInputError", "output_type cannot be passed through to the pipeline"),
        "locate-output-type": (lambda: fluxlab.locate_drift(tiny, "sdpa", "emu_bf16", prompt="a", steps=2,
                                                            output_type="pil", **small),
                               "InvalidInputError", "output_type cannot be passed through to the pipeline"),
        "locate-generator": (lambda: fluxlab.locate_drift(tiny, "sdpa", "emu_bf16", prompt="a", steps=2,
                                                          generator=torch.Generator(), **small),
                             "InvalidInputError", "use seed= instead of generator"),
        "locate-seed-1.5": (lambda: fluxlab.locate_drift(tiny, "sdpa", "emu_bf16", prompt="a", steps=2, seed=1.5,
                                                         **small),
                            "InvalidInputError", "seed must be a whole number from 0 to 2**63 - 1, got 1.5"),
        "generate-seed-1.5": (lambda: fluxlab.generate(tiny, ["sdpa"], prompt="a", steps=1, seed=1.5, **small),
                              "InvalidInputError", "seed must be a whole number"),
        "load-empty": (lambda: fluxlab.load_flux2(""), "FileMissingError", "the model source is empty"),
        "load-blank": (lambda: fluxlab.load_flux2("  "), "FileMissingError", "the model source is empty"),
    }


@pytest.mark.parametrize("case", ["compare-seed-and-seeds", "compare-output-type", "locate-output-type",
                                  "locate-generator", "locate-seed-1.5", "generate-seed-1.5", "load-empty",
                                  "load-blank"])
def test_a_verb_refuses_a_bad_argument_before_generating(tiny, case, monkeypatch):
    import fluxlab
    from fluxlab.decide.runs import Runner

    def refuse(*_a, **_k):
        raise AssertionError("a generation started before the mistake was reported")

    monkeypatch.setattr(type(tiny), "__call__", refuse)
    monkeypatch.setattr(Runner, "run", refuse)
    call, error, fragment = _verbs(tiny)[case]
    with pytest.raises(fluxlab.FluxlabError, match=re.escape(fragment)) as caught:
        call()
    assert type(caught.value).__name__ == error


@pytest.mark.slow
def test_numpy_integers_are_whole_numbers_for_the_verbs(tiny, tmp_path):
    import fluxlab

    results = fluxlab.generate(tiny, ["sdpa"], prompt="a", steps=np.int64(2), seed=np.int64(1), width=np.int64(32),
                               height=32, max_sequence_length=16, out_dir=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "sdpa" / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["seed"] == 1 and results[0].manifest["steps"] == 2
    drift = fluxlab.locate_drift(tiny, "sdpa", "emu_bf16", prompt="a", steps=np.int64(2), budget=3, height=32,
                                 width=32, max_sequence_length=16)
    assert drift.steps == 2


# -- plan files -------------------------------------------------------------------------------------------------------


def _plan_file_cases(tmp_path):
    good = json.loads(H200_PLAN.read_text())
    cases = {
        "not-json": ("{not json", "InvalidFileError", "is not a JSON autotune plan"),
        "a-list": ("[1, 2]", "InvalidFileError", "is not a fluxlab-autotune/1 plan (format 'list')"),
        "no-choices": ({k: v for k, v in good.items() if k != "choices"}, "InvalidFileError",
                       "its field 'choices' is missing"),
        "choices-a-list": ({**good, "choices": ["sdpa"]}, "InvalidFileError",
                           "its field 'choices' is a list, not a dict"),
        "measurement-extra-field": ({**good, "measurements": [{**good["measurements"][0], "speed": 1}]},
                                    "InvalidFileError", "unexpected keyword argument 'speed'"),
        "unknown-backend": ({**good, "choices": {"x.attn": "sdpa_flsh"}}, "UnknownBackendError", "sdpa_flsh"),
        "bad-option": ({**good, "choices": {"x.attn": "emu_aiter:how_v3_bf16_cvt=7"}}, "InvalidInputError",
                       "how_v3_bf16_cvt=7 is not valid"),
    }
    for name, (content, error, fragment) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        yield name, path, error, fragment
    yield "a-folder", tmp_path, "InvalidFileError", "is a folder, not a plan file"
    yield "missing", tmp_path / "nope.json", "FileMissingError", "no autotune plan at"


def test_a_malformed_plan_file_is_one_clear_error(tmp_path):
    import fluxlab
    from fluxlab.decide import AutotuneResult

    seen = []
    for name, path, error, fragment in _plan_file_cases(tmp_path):
        with pytest.raises(fluxlab.FluxlabError) as caught:
            AutotuneResult.load(path, allow_mismatch=True)
        assert type(caught.value).__name__ == error, (name, caught.value)
        assert fragment in str(caught.value), (name, str(caught.value))
        seen.append(name)
    assert len(seen) == 9


def test_plan_save_expands_home_and_names_the_path_it_was_given(tmp_path, monkeypatch):
    from fluxlab.decide import AutotuneResult
    from fluxlab.decide.files import ResultFileError

    plan = AutotuneResult.load(H200_PLAN, allow_mismatch=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    saved = plan.save("~/plans/p.json")
    assert saved == tmp_path / "home" / "plans" / "p.json" and saved.is_file()
    assert not (tmp_path / "~").exists()
    with pytest.raises(ResultFileError, match=re.escape(f"cannot write {tmp_path}: it is a folder")):
        plan.save(tmp_path)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ResultFileError) as caught:
        plan.save(tmp_path / "a-file" / "p.json")
    assert f"cannot write {tmp_path / 'a-file' / 'p.json'}" in str(caught.value)
    assert ".tmp" not in str(caught.value)


def test_a_later_larger_input_cannot_overflow_a_plan_silently():
    import fluxlab
    from fluxlab.errors import InvalidInputError

    q, k, v = _qkv(1, 16, 2, 64)
    p = fluxlab.plan(q, k, v, backend="sdpa_math", scale=0.125)  # the scale fits these inputs
    big_q, big_k = q * 1e22, k * 1e22  # the same shape: |scale * q.k| now beyond float32
    with pytest.raises(InvalidInputError, match="scale 0.125 can overflow the attention scores"):
        p(big_q, big_k, v)  # the plan's first call: its output is checked, the overflow named
    assert torch.isfinite(p(q, k, v)).all()
    with pytest.raises(InvalidInputError, match="can overflow the attention scores"):
        p(big_q, big_k, v, check_finite=True)  # every later call, when asked
    fluxlab.clear_caches()
    with pytest.raises(InvalidInputError, match="can overflow the attention scores"):
        fluxlab.attention(big_q, big_k, v, scale=0.125, backend="sdpa_math")  # a new plan: checked at plan time


# -- an attached pipeline's call ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_attached_pipe_refuses_a_shrunk_size_and_a_second_thread():
    import threading

    import fluxlab
    from fluxlab.errors import InvalidSizeError, PipelineBusyError

    pipe = fluxlab.load_flux2("tiny", variant="dev")
    with pytest.raises(InvalidSizeError, match="height 40 is not a multiple of 16.*use 32 or 48"):
        pipe(prompt="a", height=40, width=32, num_inference_steps=1, max_sequence_length=16)
    started, release = threading.Event(), threading.Event()

    def hold(pipeline, step, timestep, tensors):  # the first generation waits here, mid-run
        started.set()
        release.wait(timeout=300)
        return tensors

    first = threading.Thread(target=lambda: pipe(prompt="a", height=32, width=32, num_inference_steps=2,
                                                 max_sequence_length=16, callback_on_step_end=hold))
    first.start()
    try:
        assert started.wait(timeout=300)
        with pytest.raises(PipelineBusyError, match="a pipeline serves one generation at a time"):
            pipe(prompt="a", height=32, width=32, num_inference_steps=1, max_sequence_length=16)
    finally:
        release.set()
        first.join()
    assert _image(pipe).shape == (1, 32, 32, 3)  # free again afterwards
    fluxlab.detach(pipe)
    assert not hasattr(type(pipe), "_fluxlab_unguarded")  # detach gives the pipeline its own class back
