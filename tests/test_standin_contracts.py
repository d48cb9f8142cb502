"""Call contracts of the adapters whose libraries cannot run here (AITER: ROCm only; FA2/FA3: no build).

The modules under tests/standins are STAND-INS with the real libraries' signatures and return rules
(see tests/standins/README.md). Passing here shows fluxlab calls them correctly — argument names,
[B, S, H, D] layout, explicit softmax_scale, tuple unpacking — not that the kernels run.
"""

import importlib

import pytest
import torch

import fluxlab
from fluxlab.platform import Platform
from fluxlab.backends.reference import reference_attention
from fluxlab.dispatch import plan, run_backend

from _standins import standins_on_path


def _inputs(heads=4, kv_heads=4, dtype=torch.bfloat16, seq=40, head_dim=128):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, seq, heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(2, seq, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(2, seq, kv_heads, head_dim, generator=gen).to(dtype)
    return q, k, v


def _exact(q, k, v, scale):
    return reference_attention(q, k, v, scale=scale, return_lse=True)


@pytest.mark.parametrize("rounding", [0, 1, 2])
def test_aiter_contract(standins, rounding):
    import aiter

    q, k, v = _inputs(heads=8, kv_heads=2)
    out, lse = run_backend(fluxlab.registry.get_backend("aiter"), q, k, v, scale=0.05, return_lse=True,
                           how_v3_bf16_cvt=rounding)
    call = aiter.CALLS[-1]
    assert call["shapes"] == [(2, 40, 8, 128), (2, 40, 2, 128), (2, 40, 2, 128)]  # [B,S,H,D], GQA as is
    assert call["softmax_scale"] == 0.05  # passed, not left to aiter's D**-0.5 default
    assert call["return_lse"] is True and call["return_attn_probs"] is False and call["dropout_p"] == 0.0
    assert call["how_v3_bf16_cvt"] == rounding
    exact_out, exact_lse = _exact(q, k, v, 0.05)
    torch.testing.assert_close(lse, exact_lse, atol=1e-4, rtol=1e-4)
    assert lse.shape == (2, 8, 40) and lse.dtype == torch.float32
    assert (out.double() - exact_out).abs().max() < 2e-2


def test_aiter_without_lse_returns_tensor(standins):
    import aiter

    q, k, v = _inputs()
    out = run_backend(fluxlab.registry.get_backend("aiter"), q, k, v, scale=0.1)
    assert isinstance(out, torch.Tensor) and aiter.CALLS[-1]["return_lse"] is False


def test_aiter_rounding_mode_validated(standins):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="how_v3_bf16_cvt must be one of \\[0, 1, 2\\]"):
        run_backend(fluxlab.registry.get_backend("aiter"), q, k, v, scale=0.1, how_v3_bf16_cvt=3)


def test_aiter_rounding_mode_through_backend_spec(standins):
    import aiter

    q, k, v = (t.to("meta") for t in _inputs())
    planned = plan(q, k, v, backend="aiter:how_v3_bf16_cvt=2", platform=Platform.mi300x())
    assert planned.backend == "aiter" and planned.options == {"how_v3_bf16_cvt": 2}
    real = _inputs()
    run_backend(planned.backend, *real, scale=0.1, **planned.options)
    assert aiter.CALLS[-1]["how_v3_bf16_cvt"] == 2


def test_mi300x_picks_aiter_when_installed(standins):
    q, k, v = (t.to("meta") for t in _inputs())
    assert plan(q, k, v, platform=Platform.mi300x()).backend == "aiter"
    # ... and on an H100 the same installed package is refused for the platform, with the reason
    with pytest.raises(fluxlab.errors.BackendUnavailableError, match="aiter runs on amd, not on nvidia"):
        plan(q, k, v, backend="aiter", platform=Platform.h100())


def test_aiter_sage_current_entry_point(standins):
    from aiter.ops.triton.attention import fav3_sage

    q, k, v = _inputs()
    out = run_backend(fluxlab.registry.get_backend("aiter_sage"), q, k, v, scale=0.07)
    call = fav3_sage.CALLS[-1]
    assert call["layout"] == "bshd" and call["softmax_scale"] == 0.07
    assert call["shapes"][0] == (2, 40, 4, 128)
    assert (out.double() - _exact(q, k, v, 0.07)[0]).abs().max() < 2e-2


def test_aiter_sage_older_entry_point_refuses_a_scale_it_would_ignore():
    with standins_on_path("standins_old_sage"):
        q, k, v = _inputs()
        backend = fluxlab.registry.get_backend("aiter_sage")
        out = run_backend(backend, q, k, v, scale=128 ** -0.5)  # the default scale: fine
        assert (out.double() - _exact(q, k, v, 128 ** -0.5)[0]).abs().max() < 2e-2
        with pytest.raises(fluxlab.errors.BackendUnavailableError, match="ignores softmax_scale"):
            run_backend(backend, q, k, v, scale=0.05)


def test_aiter_triton_contract(standins):
    from aiter.ops.triton import mha

    q, k, v = _inputs()
    out, lse = run_backend(fluxlab.registry.get_backend("aiter_triton"), q, k, v, scale=0.09, return_lse=True)
    call = mha.CALLS[-1]
    assert call["softmax_scale"] == 0.09 and call["return_lse"] is True
    assert call["shapes"][0] == (2, 40, 4, 128)
    torch.testing.assert_close(lse, _exact(q, k, v, 0.09)[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, module", [("fa2", "flash_attn"), ("fa3", "flash_attn_interface")])
@pytest.mark.parametrize("return_lse", [False, True])
def test_flash_attention_contract(standins, name, module, return_lse):
    lib = importlib.import_module(module)
    q, k, v = _inputs(heads=6, kv_heads=3)
    result = run_backend(fluxlab.registry.get_backend(name), q, k, v, scale=0.06, return_lse=return_lse)
    call = lib.CALLS[-1]
    assert call["softmax_scale"] == 0.06 and call["return_attn_probs"] is return_lse
    assert call["shapes"] == [(2, 40, 6, 128), (2, 40, 3, 128), (2, 40, 3, 128)]
    exact_out, exact_lse = _exact(q, k, v, 0.06)
    out = result[0] if return_lse else result
    assert (out.double() - exact_out).abs().max() < 2e-2
    if return_lse:
        torch.testing.assert_close(result[1], exact_lse, atol=1e-4, rtol=1e-4)


def test_fa_resolves_to_best_installed_generation(standins):
    q, k, v = (t.to("meta") for t in _inputs())
    fa = fluxlab.registry.get_backend("fa")
    assert fa.resolve(q, k, Platform.h100()).name == "fa3"  # fa4 not installed here, fa3 (stand-in) is
    assert fa.resolve(q, k, Platform.a100()).name == "fa2"  # fa3 is Hopper-only
    assert fa.resolve(q.float(), k.float(), Platform.h100()) is None  # no generation runs fp32


def test_namespace_folder_is_not_flash_attention_2(tmp_path):
    """FA4 installs flash_attn/cute without flash_attn/__init__.py; importing it must not make fa2 'installed'."""
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")
    with standins_on_path(tmp_path):  # a folder of our own in place of the stand-ins
        importlib.import_module("flash_attn.cute")  # as fa4's availability check or first call does
        reasons = fluxlab.registry.get_backend("fa2").platform_reasons(Platform.h100())
        assert any("only a namespace folder 'flash_attn' exists" in r for r in reasons)
        assert not [r for r in fluxlab.registry.get_backend("fa4").platform_reasons(Platform.h100()) if "flash-attn-4" in r]
