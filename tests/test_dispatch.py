"""Selection order, platform decisions and refusal messages, for H100, MI300X and CPU profiles.

Profiles are judged with ``meta`` tensors (shapes without data), as a user asks "what would run there?".
Packages that are not installed here are given to the profile through a registered user backend or by
checking the exact reason text.
"""

import warnings

import pytest
import torch

import fluxlab
from fluxlab import plan
from fluxlab.platform import Platform
from fluxlab.errors import BackendNotAllowedError, BackendUnavailableError, NoBackendError


def meta(shape=(1, 4608, 24, 128), dtype=torch.bfloat16):
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t, t, t


def cpu_inputs(shape=(1, 16, 2, 32), dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    monkeypatch.delenv("FLUXLAB_ATTENTION_BACKEND", raising=False)
    yield
    fluxlab.dispatch.reset_backend_choice()


@pytest.fixture
def exact_user_backend():
    calls = []

    def kernel(q, k, v, *, scale, causal=False, return_lse=False):
        calls.append(scale)
        return fluxlab.attention(q, k, v, backend="sdpa", scale=scale, causal=causal)

    fluxlab.register_backend("my_kernel", kernel, description="test kernel")
    yield calls
    fluxlab.registry.unregister_backend("my_kernel")


# --- platform decisions -----------------------------------------------------------------------------

def test_h100_default_is_fastest_installed_exact_kernel():
    # FA4 is not installed here, so on an H100 profile the next measured-fastest, cuDNN, is picked.
    assert plan(*meta(), platform=Platform.h100()).backend == "sdpa_cudnn"


def test_mi300x_never_picks_cudnn_although_device_type_is_cuda():
    mi300x = Platform.mi300x()
    assert mi300x.torch_device_type == "cuda"  # ROCm says "cuda" ...
    choice = plan(*meta(), platform=mi300x).backend
    assert choice == "sdpa_flash"  # ... but aiter is missing and cuDNN does not exist there
    with pytest.raises(BackendUnavailableError) as info:
        plan(*meta(), backend="sdpa_cudnn", platform=mi300x)
    assert "ROCm has no cuDNN" in str(info.value)


def test_cpu_default_is_torch_sdpa():
    assert plan(*cpu_inputs()).backend == "sdpa"
    assert fluxlab.dispatch.default_backend() == "sdpa"


def test_aiter_on_nvidia_explains_platform_and_package():
    with pytest.raises(BackendUnavailableError) as info:
        plan(*meta(), backend="aiter", platform=Platform.h100())
    message = str(info.value)
    assert "aiter runs on amd, not on nvidia" in message
    assert "amd-aiter" in message and "ROCm's aiter repository" in message
    assert "q 1x4608x24x128" in message and "bfloat16" in message


def test_fa_on_fp32_says_dtype():
    with pytest.raises(BackendUnavailableError) as info:
        plan(*meta(dtype=torch.float32), backend="fa4", platform=Platform.h100())
    assert "dtype float32 is not supported by fa4 (supports bfloat16, float16)" in str(info.value)


def test_fa3_needs_hopper():
    with pytest.raises(BackendUnavailableError) as info:
        plan(*meta(), backend="fa3", platform=Platform.a100())
    assert "fa3 needs arch sm_90 on nvidia; this device is sm_80" in str(info.value)


@pytest.mark.parametrize("name", ["fa3", "fa3_fp8", "sage2"])
def test_hopper_kernels_refuse_head_dims_below_their_builds(name):
    # FA3's Hopper builds and SageAttention 2's sm90 kernel have no head_dim below 64: the embedded model's 32 is
    # refused up front, with the padding that runs it, instead of failing inside the kernel.
    with pytest.raises(BackendUnavailableError) as info:
        plan(*meta((1, 256, 4, 32)), backend=name, platform=Platform.h100())
    assert f"head_dim 32 is below {name}'s minimum of 64" in str(info.value)
    assert f"register_padded('{name}', 64)" in str(info.value)
    padded = fluxlab.registry.get_backend(fluxlab.registry.register_padded(name, 64, name="padded_for_test"))
    try:  # the padded backend takes the small head_dim (only its package is missing here)
        assert not [r for r in padded.input_reasons(*meta((1, 256, 4, 32))[:2], Platform.h100(), causal=False,
                                                    return_lse=False) if "head_dim" in r]
    finally:
        fluxlab.registry.unregister_backend("padded_for_test")


# --- selection order --------------------------------------------------------------------------------

def test_order_explicit_beats_context_beats_env_beats_priority(monkeypatch, exact_user_backend):
    q, k, v = cpu_inputs()
    assert plan(q, k, v).backend == "sdpa"  # priority list
    monkeypatch.setenv("FLUXLAB_ATTENTION_BACKEND", "sdpa_math")
    assert plan(q, k, v).backend == "sdpa_math"  # environment
    with fluxlab.use_backend("my_kernel"):
        assert plan(q, k, v).backend == "my_kernel"  # use_backend beats env
        assert plan(q, k, v, backend="reference").backend == "reference"  # explicit wins
    assert plan(q, k, v).backend == "sdpa_math"  # context restored


def test_use_backend_as_plain_setter_and_nested():
    q, k, v = cpu_inputs()
    fluxlab.use_backend("sdpa_flash")
    assert plan(q, k, v).backend == "sdpa_flash"
    with fluxlab.use_backend("reference"):
        with fluxlab.use_backend(None):  # back to automatic inside
            assert plan(q, k, v).backend == "sdpa"
        assert plan(q, k, v).backend == "reference"
    assert plan(q, k, v).backend == "sdpa_flash"


def test_user_backend_is_called_with_explicit_scale(exact_user_backend):
    q, k, v = cpu_inputs()
    out = fluxlab.attention(q, k, v, backend="my_kernel")
    assert exact_user_backend == [pytest.approx(32 ** -0.5)]
    torch.testing.assert_close(out, fluxlab.attention(q, k, v, backend="sdpa"))
    assert any(s.name == "my_kernel" and s.available and not s.builtin for s in fluxlab.backends())


def test_aliases_from_serving_frameworks():
    assert fluxlab.registry.get_backend("torch_sdpa").name == "sdpa"
    assert fluxlab.registry.get_backend("sage_attn").name == "sage"
    assert fluxlab.registry.get_backend("_native_cudnn").name == "sdpa_cudnn"


def test_backend_options_parse_and_validate():
    choice = fluxlab.choice.BackendChoice.parse("aiter:how_v3_bf16_cvt=2")
    assert choice.name == "aiter" and dict(choice.options) == {"how_v3_bf16_cvt": 2}
    with pytest.raises(ValueError, match="has no option \\['rounding'\\]; its options: how_v3_bf16_cvt"):
        fluxlab.choice.BackendChoice.parse("aiter:rounding=2")


# --- model restriction and fallback -----------------------------------------------------------------

def test_model_set_refuses_outside_choice_instead_of_replacing():
    q, k, v = cpu_inputs()
    with pytest.raises(BackendNotAllowedError) as info:
        fluxlab.attention(q, k, v, backend="sdpa_math", allowed={"sdpa", "fa", "aiter"})
    # the group 'fa' allows its members (fa4 > fa3 > fa2): they are named in the set
    assert "outside this model's allowed set (aiter, fa, fa2, fa3, fa4, sdpa)" in str(info.value)
    assert "refuses instead of falling back" in str(info.value)


def test_model_set_narrows_automatic_choice():
    q, k, v = cpu_inputs()
    assert plan(q, k, v, allowed={"sdpa_flash", "reference"}).backend == "sdpa_flash"


def test_nothing_qualifies_lists_every_backend_with_reasons():
    q, k, v = cpu_inputs()
    with pytest.raises(NoBackendError) as info:
        plan(q, k, v, allowed={"fa4", "sage"})
    message = str(info.value)
    for name in ("sdpa", "fa4", "aiter", "sage", "reference"):
        assert f"\n  {name}: " in message
    assert "outside the model's allowed set (fa4, sage)" in message
    assert "Inputs: q 1x16x2x32" in message and "device cpu" in message
    assert set(info.value.reasons) >= {"fa4", "sage", "sdpa"}


def test_fallback_only_when_opted_in_and_reported():
    q, k, v = cpu_inputs()
    with pytest.raises(BackendUnavailableError, match="fa4 runs on nvidia, not on cpu"):
        fluxlab.attention(q, k, v, backend="fa4")
    with pytest.warns(fluxlab.errors.FallbackWarning, match="'fa4' cannot run .*using 'sdpa' instead"):
        out = fluxlab.attention(q, k, v, backend="fa4", fallback=True)
    torch.testing.assert_close(out, fluxlab.attention(q, k, v, backend="sdpa"))
    with fluxlab.use_backend("fa4", fallback=True), pytest.warns(fluxlab.errors.FallbackWarning):
        fluxlab.attention(q, k, v)


def test_no_warning_when_request_runs():
    q, k, v = cpu_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fluxlab.attention(q, k, v, backend="sdpa_flash", fallback=True)


def test_doctor_lists_every_backend_with_honest_reasons():
    rows = {r.name: r for r in fluxlab.backends()}
    expected = {"sdpa", "sdpa_math", "sdpa_efficient", "sdpa_flash", "sdpa_cudnn", "fa", "fa2", "fa3", "fa4",
                "aiter", "aiter_sage", "aiter_triton", "sage", "flex", "reference"}
    assert expected <= set(rows)
    assert [r.name for r in rows.values() if r.default] == ["sdpa"]
    assert rows["sdpa"].available and rows["reference"].available
    assert not rows["sdpa_cudnn"].available and "not on cpu" in rows["sdpa_cudnn"].reasons[0]
    assert any("pip install 'flash-attn-4==4.0.0b36'" in r for r in rows["fa4"].reasons)
    assert rows["sdpa"].version == torch.__version__.split("+")[0]
    # every backend that could run but was not picked says why not
    assert "ranked below sdpa" in rows["sdpa_flash"].not_default_because
    assert "never picked automatically" in rows["flex"].not_default_because
    assert rows["sdpa"].not_default_because is None and rows["fa4"].not_default_because is None
    text = fluxlab.doctor_text()
    assert "DEFAULT" in text and "aiter" in text


def test_doctor_cli_for_a_profile(capsys):
    from fluxlab.cli import main

    assert main(["doctor", "--profile", "mi300x"]) == 0
    out = capsys.readouterr().out
    assert "amd AMD Instinct MI300X (gfx942)" in out
    assert "sdpa_cudnn needs cuDNN attention: ROCm has no cuDNN" in out
