"""Every backend that can run on this GPU, against float64 (run on the device machine: `pytest -m gpu`).

Same rule as the CPU tests: max-abs error at most 2x torch's own low-precision error (+1e-5); quantised
kernels (sage, aiter_sage) within their documented budget (rel-L2 <= 0.05 vs float64). Results, with card
and versions, are appended to $FLUXLAB_GPU_RESULTS (JSON lines) when set, for benchmarks/results/.
"""

import json
import math
import os
import time

import pytest
import torch

import fluxlab
from fluxlab.backends.reference import reference_attention

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no GPU here: these tests run on the device machine (pytest -m gpu)", allow_module_level=True)

PLATFORM = fluxlab.current_platform()
GPU_BACKENDS = [s.name for s in fluxlab.backends() if s.available and s.name not in ("reference",)]
QUANTISED_REL_L2_BUDGET = 0.05
SHAPES = [  # (batch, seq, heads, kv_heads, head_dim)
    (1, 4608, 24, 24, 128),  # FLUX.2 [dev] at 1024^2, half the heads
    (2, 1029, 8, 8, 128),  # odd sequence
    (1, 777, 8, 2, 128),  # GQA
    (1, 512, 8, 8, 64),
]


def _record(row):
    path = os.environ.get("FLUXLAB_GPU_RESULTS")
    if path:
        row |= {"device": PLATFORM.device_name, "arch": PLATFORM.arch, "torch": torch.__version__,
                "cuda": PLATFORM.cuda_version, "cudnn": PLATFORM.cudnn_version,
                "version": fluxlab.get_backend(row["backend"]).version,
                "date": time.strftime("%Y-%m-%d")}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _inputs(shape, dtype, seed=0):
    batch, seq, heads, kv_heads, head_dim = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, seq, heads, head_dim, device="cuda", generator=gen, dtype=dtype)
    k = torch.randn(batch, seq, kv_heads, head_dim, device="cuda", generator=gen, dtype=dtype)
    v = torch.randn(batch, seq, kv_heads, head_dim, device="cuda", generator=gen, dtype=dtype)
    return q, k, v


def _lowp_error(q, k, v, scale, exact):
    groups = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    kh, vh = kh.repeat_interleave(groups, 1), vh.repeat_interleave(groups, 1)
    probs = torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * scale, dim=-1).to(q.dtype)
    return (torch.matmul(probs, vh).transpose(1, 2).double() - exact).abs().max().item()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_backend_matches_float64(backend, dtype, shape):
    q, k, v = _inputs(shape, dtype)
    reasons = fluxlab.get_backend(backend).not_supported_reasons(q, k, v, PLATFORM)
    if reasons:
        _record({"backend": backend, "dtype": str(dtype), "shape": shape, "status": "refused",
                 "reasons": reasons})
        pytest.skip("; ".join(reasons))  # a refusal with reasons is the correct behaviour, recorded
    scale = 1 / math.sqrt(shape[-1])
    exact = reference_attention(q, k, v, scale=scale)
    out = fluxlab.attention(q, k, v, backend=backend, scale=scale)
    error = (out.double() - exact).abs().max().item()
    rel_l2 = ((out.double() - exact).norm() / exact.norm()).item()
    torch_error = _lowp_error(q, k, v, scale, exact)
    quantised = fluxlab.get_backend(backend).caps.quantised
    _record({"backend": backend, "dtype": str(dtype), "shape": shape, "status": "ran", "max_abs": error,
             "rel_l2": rel_l2, "torch_lowp_max_abs": torch_error, "quantised": quantised})
    if quantised:
        assert rel_l2 <= QUANTISED_REL_L2_BUDGET, f"{backend}: rel-L2 {rel_l2:.3g}"
    else:
        assert error <= 2 * torch_error + 1e-5, f"{backend}: max-abs {error:.3g} vs torch {torch_error:.3g}"


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if fluxlab.get_backend(b).caps.returns_lse])
def test_gpu_lse_convention(backend):
    q, k, v = _inputs((2, 1029, 8, 8, 128), torch.bfloat16, seed=1)
    reasons = fluxlab.get_backend(backend).not_supported_reasons(q, k, v, PLATFORM, return_lse=True)
    if reasons:
        pytest.skip("; ".join(reasons))
    out, lse = fluxlab.attention(q, k, v, backend=backend, scale=0.1, return_lse=True)
    _, exact_lse = reference_attention(q, k, v, scale=0.1, return_lse=True)
    assert lse.shape == (2, 8, 1029) and lse.dtype == torch.float32
    lse_error = (lse - exact_lse).abs().max().item()
    _record({"backend": backend, "test": "lse", "lse_max_abs": lse_error})
    assert lse_error < 2e-2, f"{backend}: LSE off by {lse_error}"


def test_gpu_platform_detected_by_properties_not_device_type():
    assert PLATFORM.vendor == ("amd" if torch.version.hip else "nvidia")
    assert PLATFORM.arch and PLATFORM.arch.startswith("gfx" if torch.version.hip else "sm_")
    if PLATFORM.vendor == "nvidia":
        assert PLATFORM.cudnn_attention == (torch.backends.cudnn.version() >= 90000 and PLATFORM.sm >= 80)
    default = fluxlab.default_backend()
    _record({"backend": default or "none", "test": "default_pick", "platform": PLATFORM.as_dict()})
    assert default is not None
