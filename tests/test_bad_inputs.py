"""Bad input gets a clear error that names the problem and the fix."""

import pytest
import torch

import fluxlab
from fluxlab import Platform
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
     ["'sageattention' (module sageattention) is not installed: pip install 'sageattention>=1.0.6'"]),
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
    assert torch.isnan(fluxlab.attention(q, t(*Q), t(*Q))).any()  # off by default: no sync per call
    monkeypatch.setenv("FLUXLAB_CHECK_FINITE", "1")
    with pytest.raises(InvalidInputError, match="q contains 1 NaN/inf values"):
        fluxlab.attention(q, t(*Q), t(*Q))


def test_broken_backend_output_is_caught():
    fluxlab.register_backend("wrong_layout", lambda q, k, v, *, scale, causal, return_lse: q.transpose(1, 2))
    try:
        with pytest.raises(fluxlab.BackendOutputError, match=r"returned shape \(1, 2, 16, 32\); the contract"):
            fluxlab.attention(t(*Q), t(*Q), t(*Q), backend="wrong_layout")
    finally:
        fluxlab.unregister_backend("wrong_layout")


def test_register_backend_rejects_bad_definitions():
    with pytest.raises(ValueError, match="already exists; pass replace=True"):
        fluxlab.register_backend("sdpa", lambda *a, **k: None)
    with pytest.raises(ValueError, match="must be lower-case"):
        fluxlab.register_backend("My Kernel", lambda *a, **k: None)
    with pytest.raises(TypeError, match="unknown capability \\['lse'\\]"):
        fluxlab.register_backend("my_k", lambda *a, **k: None, lse=True)
    with pytest.raises(ValueError, match="built in and cannot be unregistered"):
        fluxlab.unregister_backend("sdpa")
