"""Every backend that runs on CPU agrees with the float64 reference, judged by the comparison engine's rule.

One yardstick for tests and engine (``compare.tolerances.judge_output``, via tests/_verdict.py): a kernel's
rel-L2 and max-abs error against float64 may be at most 2x / 4x those of torch's math kernel in the same dtype
(floored at the float64 answer rounded to the dtype). The bound follows the dtype and the inputs, instead of
a number tuned until green; tolerances.RULE_TEXT says where the multiples come from.
"""

import math

import pytest
import torch

import fluxlab
from fluxlab.backends.reference import reference_attention

from _verdict import verdict

CPU_BACKENDS = ["sdpa", "sdpa_math", "sdpa_flash", "flex", "reference"]

SHAPES = [  # (batch, seq_q, seq_k, q_heads, kv_heads, head_dim)
    (1, 37, 37, 4, 4, 64),
    (2, 129, 129, 3, 3, 128),
    (1, 65, 200, 4, 4, 128),  # cross-attention lengths, odd
    (2, 96, 96, 8, 2, 64),  # GQA, 4 query heads per kv head
    (1, 33, 33, 6, 3, 128),  # GQA, odd seq
]


def _inputs(shape, dtype, seed):
    batch, seq_q, seq_k, heads, kv_heads, head_dim = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_q, heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, seq_k, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, seq_k, kv_heads, head_dim, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_within_torch_error(backend, dtype, shape):
    q, k, v = _inputs(shape, dtype, seed=sum(shape))
    scale = 1 / math.sqrt(shape[-1])
    out = fluxlab.attention(q, k, v, backend=backend, scale=scale)
    assert out.shape == q.shape[:3] + (v.shape[-1],) and out.dtype == dtype
    result, note = verdict(out, q, k, v, scale=scale)
    assert result == "pass", f"{backend}: {note}"


@pytest.mark.parametrize("backend", ["sdpa_flash", "flex", "reference"])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
def test_lse_is_natural_log_float32_bhs(backend, shape):
    q, k, v = _inputs(shape, torch.float32, seed=1)
    scale = 0.3  # deliberately not head_dim**-0.5: the scale must reach the kernel
    out, lse = fluxlab.attention(q, k, v, backend=backend, scale=scale, return_lse=True)
    exact_out, exact_lse = reference_attention(q, k, v, scale=scale, return_lse=True)
    assert lse.shape == (shape[0], shape[3], shape[1]) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, exact_lse, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.double(), exact_out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_math", "sdpa_flash", "flex", "reference"])
def test_causal_matches_reference(backend):
    q, k, v = _inputs((1, 45, 45, 2, 2, 64), torch.float32, seed=3)
    exact = reference_attention(q, k, v, scale=0.125, causal=True)
    out = fluxlab.attention(q, k, v, backend=backend, scale=0.125, causal=True)
    torch.testing.assert_close(out.double(), exact, atol=2e-5, rtol=1e-4)
    # and causal really masks: the first query sees only the first key
    torch.testing.assert_close(out[:, 0].double(), v[:, 0].double(), atol=1e-6, rtol=0)


def test_scale_is_passed_through():
    q, k, v = _inputs((1, 50, 50, 2, 2, 64), torch.float32, seed=4)
    default = fluxlab.attention(q, k, v, backend="sdpa")
    explicit = fluxlab.attention(q, k, v, backend="sdpa", scale=1 / 8)
    sharper = fluxlab.attention(q, k, v, backend="sdpa", scale=1.0)
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    assert (sharper - default).abs().max() > 0.1


def test_reference_is_chunked_and_exact():
    q, k, v = _inputs((1, 300, 300, 2, 2, 32), torch.float64, seed=5)
    whole = reference_attention(q, k, v, scale=0.2)
    tiny_chunks = reference_attention(q, k, v, scale=0.2, budget_elements=2 * 300 * 7)  # 7 queries a chunk
    torch.testing.assert_close(whole, tiny_chunks, atol=1e-12, rtol=0)
    naive = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.2, -1)
    torch.testing.assert_close(whole, torch.einsum("bhqk,bkhd->bqhd", naive, v), atol=1e-12, rtol=0)


def test_sdpa_is_bit_identical_to_torch_default():
    """The dispatcher adds nothing: same bits as calling torch the way diffusers' `native` does."""
    q, k, v = _inputs((2, 77, 77, 4, 4, 64), torch.float32, seed=6)
    ours = fluxlab.attention(q, k, v, backend="sdpa")
    theirs = torch.nn.functional.scaled_dot_product_attention(
        q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
    assert torch.equal(ours, theirs)
