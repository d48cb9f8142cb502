"""Bad input gets a clear error that names the problem and the fix."""

import pytest
import torch

import fluxlab
from fluxlab.platform import Platform
from fluxlab.errors import BackendUnavailableError, InvalidInputError, UnknownBackendError


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device) if device != "meta" else torch.empty(
        *shape, dtype=dtype, device="meta")


Q = (1, 16, 2, 32)

CASES = [  # (id, q, k, v, kwargs, error type, message fragments)
    ("3d", t(16, 2, 32), t(*Q), t(*Q), {}, InvalidInputError,
     ["q has 3 dims", "[batch, seq, heads, head_dim]", "unflatten"]),
    ("5d", t(*Q), t(1, 1, 16, 2, 32), t(*Q), {}, InvalidInputError, ["k has 5 dims"]),
    ("head-dims-differ", t(*Q), t(1, 16, 2, 64), t(1, 16, 2, 64), {}, InvalidInputError,
     ["q and k head dims differ (32 vs 64)"]),
    ("kv-heads-not-dividing", t(1, 16, 6, 32), t(1, 16, 4, 32), t(1, 16, 4, 32), {}, InvalidInputError,
     ["6 query heads are not a multiple of 4 key/value heads"]),
    ("dtype-mismatch", t(*Q), t(*Q, dtype=torch.bfloat16), t(*Q), {}, InvalidInputError,
     ["dtypes differ", "k = k.to(q.dtype)"]),
    ("device-mismatch", t(*Q), t(*Q, device="meta"), t(*Q), {}, InvalidInputError,
     ["different devices (cpu, meta, cpu)"]),
    ("bhsd-by-declared-heads", t(1, 2, 16, 32), t(1, 2, 16, 32), t(1, 2, 16, 32), {"heads": 2},
     InvalidInputError, ["model declares 2 heads", "[batch, heads, seq, head_dim]", "transpose(1, 2)"]),
    ("bhsd-implausible-heads", t(1, 2, 4608, 8), t(1, 2, 4608, 8), t(1, 2, 4608, 8), {}, InvalidInputError,
     ["4608 in the heads dim", "transpose(1, 2)"]),
    ("nan", t(*Q).index_fill(1, torch.tensor([3]), float("nan")), t(*Q), t(*Q), {"check_finite": True},
     InvalidInputError, ["q contains 64 NaN/inf values"]),
    ("inf-in-v", t(*Q), t(*Q), t(*Q).index_fill(0, torch.tensor([0]), float("inf")), {"check_finite": True},
     InvalidInputError, ["v contains 1024 NaN/inf values"]),
    ("unknown-backend", t(*Q), t(*Q), t(*Q), {"backend": "flash_atention"}, UnknownBackendError,
     ["unknown attention backend 'flash_atention'", "Did you mean 'flash_attn'?"]),
    ("unknown-backend-2", t(*Q), t(*Q), t(*Q), {"backend": "sdpa_cudn"}, UnknownBackendError,
     ["Did you mean 'sdpa_cudnn'?"]),
    ("not-installed", t(*Q, device="meta"), t(*Q, device="meta"), t(*Q, device="meta"),
     {"backend": "sage", "platform": Platform.h100()}, BackendUnavailableError,
     ["'sageattention' (module sageattention) is not installed: pip install 'sageattention==1.0.6'"]),
    ("unsupported-platform", t(*Q), t(*Q), t(*Q), {"backend": "sdpa_cudnn"}, BackendUnavailableError,
     ["sdpa_cudnn runs on nvidia, not on cpu"]),
    ("head-dim-unsupported", t(1, 16, 2, 100, dtype=torch.bfloat16, device="meta"),
     t(1, 16, 2, 100, dtype=torch.bfloat16, device="meta"), t(1, 16, 2, 100, dtype=torch.bfloat16, device="meta"),
     {"backend": "fa4", "platform": Platform.h100()}, BackendUnavailableError,
     ["fa4 needs head_dim a multiple of 8, got 100"]),
    ("head-dim-too-large", t(1, 16, 2, 256, dtype=torch.bfloat16, device="meta"),
     t(1, 16, 2, 256, dtype=torch.bfloat16, device="meta"), t(1, 16, 2, 256, dtype=torch.bfloat16, device="meta"),
     {"backend": "sdpa_cudnn", "platform": Platform.h100()}, BackendUnavailableError,
     ["head_dim 256 exceeds sdpa_cudnn's maximum of 128"]),
    ("dtype-unsupported", t(*Q, device="meta"), t(*Q, device="meta"), t(*Q, device="meta"),
     {"backend": "sdpa_cudnn", "platform": Platform.h100()}, BackendUnavailableError,
     ["dtype float32 is not supported by sdpa_cudnn (supports bfloat16, float16)"]),
    ("scale-zero", t(*Q), t(*Q), t(*Q), {"scale": 0.0}, InvalidInputError,
     ["scale must be a finite number > 0, got 0.0", "head_dim ** -0.5 = 0.176777"]),
    ("scale-negative", t(*Q), t(*Q), t(*Q), {"scale": -1.0}, InvalidInputError, ["got -1.0"]),
    ("scale-tensor", t(*Q), t(*Q), t(*Q), {"scale": torch.tensor(0.1)}, InvalidInputError,
     ["scale must be a Python float"]),
    ("int-dtype", t(*Q).long(), t(*Q).long(), t(*Q).long(), {}, InvalidInputError, ["needs a floating dtype"]),
    ("empty-seq", t(1, 0, 2, 32), t(*Q), t(*Q), {}, InvalidInputError, ["q is empty"]),
    ("kv-seq-differ", t(*Q), t(1, 16, 2, 32), t(1, 15, 2, 32), {}, InvalidInputError,
     ["k and v sequence lengths differ (16 vs 15)"]),
    ("batch-differ", t(*Q), t(2, 16, 2, 32), t(2, 16, 2, 32), {}, InvalidInputError, ["batch sizes differ"]),
    ("causal-unequal-lengths", t(*Q), t(1, 20, 2, 32), t(1, 20, 2, 32), {"causal": True}, InvalidInputError,
     ["causal attention with seq_q 16 != seq_k 20 is ambiguous"]),
    ("lse-not-returned", t(*Q), t(*Q), t(*Q), {"backend": "sdpa_math", "return_lse": True},
     BackendUnavailableError, ["sdpa_math does not return the log-sum-exp"]),
    ("not-a-tensor", [[1.0]], t(*Q), t(*Q), {}, InvalidInputError, ["q must be a torch.Tensor, got list"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_message(case):
    _, q, k, v, kwargs, error, fragments = case
    with pytest.raises(error) as info:
        fluxlab.attention(q, k, v, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"missing {fragment!r} in:\n{message}"


def test_enough_cases():
    assert len(CASES) >= 15


def test_finite_check_can_be_enabled_by_environment(monkeypatch):
    q = t(*Q)
    q[0, 0, 0, 0] = float("nan")
    assert torch.isnan(fluxlab.attention(q, t(*Q), t(*Q), check_finite=False)).any()  # off: no sync per call
    monkeypatch.setenv("FLUXLAB_CHECK_FINITE", "1")
    with pytest.raises(InvalidInputError, match="q contains 1 NaN/inf values"):
        fluxlab.attention(q, t(*Q), t(*Q))


def test_broken_backend_output_is_caught():
    fluxlab.register_backend("wrong_layout", lambda q, k, v, *, scale, causal, return_lse: q.transpose(1, 2))
    try:
        with pytest.raises(fluxlab.errors.BackendOutputError, match=r"returned shape \(1, 2, 16, 32\); the contract"):
            fluxlab.attention(t(*Q), t(*Q), t(*Q), backend="wrong_layout")
    finally:
        fluxlab.registry.unregister_backend("wrong_layout")


def test_register_backend_rejects_bad_definitions():
    with pytest.raises(ValueError, match="built-in backend and cannot be replaced"):
        fluxlab.register_backend("sdpa", lambda *a, **k: None)
    fluxlab.register_backend("my_twice", lambda *a, **k: None)
    try:
        with pytest.raises(ValueError, match="already exists; pass replace=True"):
            fluxlab.register_backend("my_twice", lambda *a, **k: None)
    finally:
        fluxlab.registry.unregister_backend("my_twice")
    with pytest.raises(ValueError, match="must be lower-case"):
        fluxlab.register_backend("My Kernel", lambda *a, **k: None)
    with pytest.raises(TypeError, match="unknown capability \\['lse'\\]"):
        fluxlab.register_backend("my_k", lambda *a, **k: None, lse=True)
    with pytest.raises(ValueError, match="built in and cannot be unregistered"):
        fluxlab.registry.unregister_backend("sdpa")


# -- generation limits and Ctrl-C (fluxlab.generate, the widgets' settings) ----------------------------------------

GENERATION_CASES = [  # (id, overrides of a valid request, error class name, message fragments)
    ("16384-square", dict(width=16384, height=16384), "LimitExceededError",
     ["16384x16384 is 1,048,576 image tokens", "bound of 16,384", "GiB of float32 scores", "force=True"]),
    ("text-100000", dict(max_sequence_length=100000), "LimitExceededError",
     ["max_sequence_length 100,000 is above fluxlab's bound of 512", "force=True"]),
    ("side-beyond", dict(width=8192, height=16), "LimitExceededError", ["width 8192 is above", "4096"]),
    ("steps-beyond", dict(steps=5000), "LimitExceededError", ["steps 5000 is above fluxlab's bound of 1000"]),
    ("height-40", dict(height=40), "InvalidSizeError", ["height 40 is not a multiple of 16", "shrink it to 32",
                                                         "use 32 or 48"]),
    ("width-0", dict(width=0), "InvalidSizeError", ["width must be between 16 and 4096"]),
    ("steps-0", dict(steps=0), "InvalidSettingError", ["steps must be a whole number >= 1, got 0"]),
    ("steps-1.5", dict(steps=1.5), "InvalidSettingError", ["got 1.5"]),
    ("seed-2**64", dict(seed=2**64), "InvalidSettingError", ["seed must be a whole number from 0 to 2**63 - 1"]),
    ("seed-negative", dict(seed=-1), "InvalidSettingError", ["got -1"]),
    ("text-0", dict(max_sequence_length=0), "InvalidSettingError", ["max_sequence_length must be"]),
    ("guidance-nan", dict(guidance_scale=float("nan")), "InvalidSettingError", ["guidance_scale must be a finite"]),
]


@pytest.fixture(scope="module")
def tiny_pipe():
    return fluxlab.load_flux2("tiny")


@pytest.mark.parametrize("case", GENERATION_CASES, ids=[c[0] for c in GENERATION_CASES])
def test_generate_refuses_before_any_step(case, tiny_pipe, tmp_path):
    from fluxlab import errors

    _, overrides, error, fragments = case
    request = dict(prompt="a red circle", steps=2, width=64, height=64, seed=0, max_sequence_length=16)
    request.update(overrides)
    with pytest.raises(getattr(errors, error)) as info:
        fluxlab.generate(tiny_pipe, ["sdpa"], out_dir=tmp_path / "out", progress=False,
                         on_step=lambda *_: pytest.fail("a step ran"), **request)
    for fragment in fragments:
        assert fragment in str(info.value), f"missing {fragment!r} in:\n{info.value}"
    assert isinstance(info.value, fluxlab.FluxlabError)
    assert not (tmp_path / "out").exists()


def test_force_lifts_only_the_bounds():
    from fluxlab.errors import InvalidSizeError
    from fluxlab.models.limits import BOUNDS, check_generation

    huge = dict(width=16384, height=16384, steps=5000, seed=0, max_sequence_length=100000)
    check_generation(**huge, force=True)  # beyond every forceable bound: allowed when forced
    with pytest.raises(InvalidSizeError):
        check_generation(**{**huge, "height": 16380}, force=True)  # malformed is never forced
    assert {name for name, bound in BOUNDS.items() if not bound.forceable} == {"seed"}


def test_size_multiple_follows_the_model(tiny_pipe):
    """The tiny model's 8x VAE needs multiples of 16; the embedded model's 4x VAE multiples of 8."""
    from fluxlab.models.limits import required_multiple, size_multiple_for

    assert required_multiple(tiny_pipe) == 16 == size_multiple_for("tiny")
    assert size_multiple_for("embedded") == 8


def test_widget_settings_share_the_bounds():
    from fluxlab.errors import InvalidSizeError, LimitExceededError
    from fluxlab.widgets import settings_for
    from fluxlab.widgets._common import check_seed, check_size, check_steps

    with pytest.raises(LimitExceededError, match="force=True"):
        settings_for("tiny", height=16384, width=16384)
    assert settings_for("tiny", height=16384, width=16384, force=True).height == 16384
    with pytest.raises(InvalidSizeError, match="use 32 or 48"):
        settings_for("tiny", height=40)
    assert settings_for("embedded", height=40, width=40).height == 40  # 8-pixel multiples on the embedded model
    assert "1,048,576 image tokens" in check_size(16384, 16384)
    assert "use 32 or 48" in check_size(40, 64)
    assert check_size(64, 64) is None
    assert "got 0" in check_steps(0) and "2**63 - 1" in check_seed(2**64)


def test_keyboard_interrupt_between_steps_leaves_a_marked_partial_output(tiny_pipe, tmp_path):
    import json

    from fluxlab.errors import GenerationInterrupted

    def interrupt_after_third_step(backend, index):
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(GenerationInterrupted) as info:
        fluxlab.generate(tiny_pipe, ["sdpa", "reference"], prompt="a red circle", steps=8, out_dir=tmp_path,
                         progress=False, max_sequence_length=16, on_step=interrupt_after_third_step)
    assert isinstance(info.value, KeyboardInterrupt)  # Ctrl-C semantics kept for callers
    assert (info.value.backend, info.value.completed_steps, info.value.steps) == ("sdpa", 3, 8)
    assert "not run: reference" in str(info.value)
    [result] = info.value.results
    manifest = json.loads((tmp_path / "sdpa" / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(result.manifest, default=str))
    assert manifest["interrupted"] is True and manifest["completed_steps"] == 3
    assert len(manifest["timings"]["steps_s"]) == 3
    assert sorted(p.name for p in (tmp_path / "sdpa").iterdir()) == ["image.partial.png", "manifest.json"]
    assert not (tmp_path / "reference").exists()
    complete = fluxlab.generate(tiny_pipe, ["sdpa"], prompt="a red circle", steps=2, progress=False,
                                max_sequence_length=16)
    assert complete[0].manifest["interrupted"] is False and complete[0].manifest["completed_steps"] == 2


def test_keyboard_interrupt_inside_a_step_writes_nothing_for_it(tiny_pipe, tmp_path):
    from fluxlab.errors import GenerationInterrupted

    calls = []
    original = tiny_pipe.transformer.forward

    def forward(*args, **kwargs):  # the second transformer call is interrupted mid-step
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    tiny_pipe.transformer.forward = forward
    try:
        with pytest.raises(GenerationInterrupted) as info:
            fluxlab.generate(tiny_pipe, ["sdpa"], prompt="a red circle", steps=4, out_dir=tmp_path / "out",
                             progress=False, max_sequence_length=16)
    finally:
        del tiny_pipe.transformer.forward
    assert info.value.completed_steps == 1 and info.value.results == []
    assert "nothing was written" in str(info.value)
    assert not (tmp_path / "out").exists()  # no partial file, no empty folder
