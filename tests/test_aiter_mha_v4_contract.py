"""Call contracts of aiter_mha_v4 and aiter_sage_mxfp4 against STAND-INS (tests/standins: aiter's signatures, checks
and manifest rows, attention in plain torch). Passing shows fluxlab calls aiter's MHA v4 correctly; it is no
evidence that the kernels run (they need ROCm gfx950/gfx942)."""

import json

import pytest
import torch

import fluxlab
from fluxlab.platform import Platform
from fluxlab.backends import aiter as aiter_mha_v4
from fluxlab.cli import main
from fluxlab.dispatch import plan, run_backend


def inputs(seq=40, heads=2, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, seq, heads, 128, generator=gen).to(dtype) for _ in range(3))


@pytest.mark.parametrize("fmt", sorted(aiter_mha_v4.MHA_V4_FORMATS))
def test_mha_v4_gets_the_formats_and_the_scale(standins, fmt):
    from aiter.ops import mha_v4

    q, k, v = inputs()
    out = run_backend(fluxlab.registry.get_backend("aiter_mha_v4"), q, k, v, scale=0.07, format=fmt)
    call = mha_v4.CALLS[-1]
    assert call["shapes"] == [(1, 40, 2, 128)] * 3 and call["softmax_scale"] == 0.07
    names = [f.name for f in call["formats"]]
    expected = [("FP8_E4M3" if n == "FP8" else {"MXFP6": "FP6_E2M3", "MXFP4": "FP4_E2M1"}.get(n, n))
                for n in aiter_mha_v4.MHA_V4_FORMATS[fmt]]
    assert names == expected
    assert out.dtype == torch.bfloat16 and out.shape == q.shape


def test_gfx942_gets_fnuz_v_and_only_i8fp8(standins, monkeypatch):
    from aiter.ops import mha_v4

    monkeypatch.setattr(mha_v4, "GFX", "gfx942")
    q, k, v = inputs()
    run_backend(fluxlab.registry.get_backend("aiter_mha_v4"), q, k, v, scale=0.07, format="i8fp8")
    assert mha_v4.CALLS[-1]["formats"][2].name == "FP8_E4M3_FNUZ"  # native_fp8_format() on gfx942
    with pytest.raises(RuntimeError, match="no MHA v4 kernel"):  # the library itself refuses: no manifest row
        run_backend(fluxlab.registry.get_backend("aiter_mha_v4"), q, k, v, scale=0.07, format="mxfp4")


def test_format_reasons_per_arch():
    assert aiter_mha_v4.format_reasons("f4f4", "gfx950") == []
    assert "no gfx942 kernel for format=f4f4" in aiter_mha_v4.format_reasons("f4f4", "gfx942")[0]
    assert aiter_mha_v4.format_reasons("i8fp8", "gfx942") == []
    assert "gfx942 and gfx950 only, not gfx90a" in aiter_mha_v4.format_reasons("i8fp8", "gfx90a")[0]


def test_what_runs_on_mi355x_mi300x_and_elsewhere(standins):
    q, k, v = (t.to("meta") for t in inputs())  # judged as if on the profile's GPU
    assert plan(q, k, v, backend="aiter_mha_v4:format=f4f4", platform=Platform.mi355x()).backend == "aiter_mha_v4"
    assert plan(q, k, v, backend="aiter_sage_mxfp4", platform=Platform.mi355x()).backend == "aiter_sage_mxfp4"
    assert plan(q, k, v, backend="aiter_mha_v4", platform=Platform.mi300x()).backend == "aiter_mha_v4"
    with pytest.raises(fluxlab.errors.FluxlabError, match="gfx950"):
        plan(q, k, v, backend="aiter_sage_mxfp4", platform=Platform.mi300x())
    with pytest.raises(fluxlab.errors.FluxlabError, match="amd"):
        plan(q, k, v, backend="aiter_mha_v4", platform=Platform.h100())
    with pytest.raises(fluxlab.errors.FluxlabError, match="head_dim 64"):
        plan(*(t[..., :64] for t in (q, k, v)), backend="aiter_mha_v4", platform=Platform.mi355x())
    with pytest.raises(fluxlab.errors.FluxlabError, match="float16"):
        plan(*(t.half() for t in (q, k, v)), backend="aiter_mha_v4", platform=Platform.mi355x())
    # never picked automatically: the default on MI355X stays the bf16 kernel
    assert plan(q, k, v, platform=Platform.mi355x()).backend not in ("aiter_mha_v4", "aiter_sage_mxfp4")


def test_doctor_profile_mi355x_lists_the_quantised_kernels(standins, capsys):
    assert main(["doctor", "--json", "--profile", "mi355x"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["platform"]["arch"] == "gfx950"
    rows = {r["name"]: r for r in report["backends"]}
    assert rows["aiter_mha_v4"]["available"] and rows["aiter_sage_mxfp4"]["available"]
    assert rows["emu_aiter_quant"]["available"]


def test_sage_mxfp4_passes_rotation_and_refuses_another_scale(standins):
    from aiter.ops.triton.attention import fav3_sage_attention_mxfp4_wrapper as wrapper

    q, k, v = inputs()
    backend = fluxlab.registry.get_backend("aiter_sage_mxfp4")
    out, lse = run_backend(backend, q, k, v, scale=128**-0.5, return_lse=True)
    call = wrapper.CALLS[-1]
    assert call["hadamard_rotation"] is True and call["layout"] == "bshd" and call["causal"] is False
    assert lse.shape == (1, 2, 40) and out.shape == q.shape
    with pytest.raises(fluxlab.errors.BackendUnavailableError, match="takes no softmax scale"):
        run_backend(backend, q, k, v, scale=0.05)
