"""fluxlab.capture sees every FLUX.2 attention call, with what the kernel received and returned."""

from __future__ import annotations

import pytest
import torch

import diffusers  # noqa: E402,F401

import fluxlab  # noqa: E402
from fluxlab.errors import AttachError, CaptureError, CaptureLimitError  # noqa: E402
from fluxlab.models.tiny import build_tiny_pipeline  # noqa: E402
from fluxlab.record import AttentionRecord  # noqa: E402

from _flux2 import attached, generate  # noqa: E402

STEPS = 2
TEXT, IMAGE, HEADS, HEAD_DIM = 64, 16, 2, 16  # max_sequence_length 64; 64x64 image -> 16 tokens; tiny heads


@pytest.fixture(scope="module", params=("dev", "klein"))
def pipe(request):
    pipe = build_tiny_pipeline(request.param)
    fluxlab.attach(pipe, backend="sdpa")
    yield pipe
    fluxlab.detach(pipe)


def _branches(pipe) -> int:
    return 1 if pipe.transformer.config.guidance_embeds else 2  # klein: true CFG, two passes per step


def _layers(pipe) -> int:
    config = pipe.transformer.config
    return config.num_layers + config.num_single_layers


@pytest.fixture(scope="module")
def records(pipe):
    with fluxlab.capture(pipe) as cap:
        generate(pipe, steps=STEPS)
    return cap


def test_count_is_layers_x_steps_x_branches(pipe, records):
    assert len(records) == _layers(pipe) * STEPS * _branches(pipe) == len(records.records)
    assert all(isinstance(r, AttentionRecord) for r in records)
    names = {r.layer for r in records}
    assert names == {"transformer_blocks.0.attn", "transformer_blocks.1.attn", "single_transformer_blocks.0.attn",
                     "single_transformer_blocks.1.attn"}
    assert {r.step for r in records} == set(range(STEPS))


def test_records_hold_bshd_tensors_as_the_kernel_got_them(records):
    for r in records:
        assert r.q.shape == r.k.shape == r.v.shape == r.out.shape == (1, TEXT + IMAGE, HEADS, HEAD_DIM)
        assert r.q.device.type == "cpu" and r.q.dtype == torch.float32
        assert r.text_tokens == TEXT
        assert r.backend == "sdpa" and r.lse is None  # sdpa does not return the LSE: none is asked for
        assert r.scale == pytest.approx(HEAD_DIM ** -0.5)
        assert r.causal is False


def test_reference_on_captured_qkv_reproduces_the_output(records):
    """float32 SDPA vs float64 attention rounded to float32: within a few float32 ulps of O(1) outputs."""
    for r in records:
        again = fluxlab.attention(r.q, r.k, r.v, backend="reference", scale=r.scale)
        torch.testing.assert_close(again, r.out, rtol=1e-5, atol=1e-6)


def test_lse_is_kept_where_the_backend_returns_it(pipe):
    fluxlab.set_backend(pipe, "reference")
    try:
        with fluxlab.capture(pipe, layers="single_transformer_blocks.1.attn", steps=[0]) as cap:
            generate(pipe, steps=1)
    finally:
        fluxlab.set_backend(pipe, "sdpa")
    for r in cap:
        assert r.backend == "reference"
        assert r.lse.shape == (1, HEADS, TEXT + IMAGE) and r.lse.dtype == torch.float32
        scores = torch.einsum("bqhd,bkhd->bhqk", r.q.double(), r.k.double()) * r.scale
        torch.testing.assert_close(r.lse.double(), torch.logsumexp(scores, dim=-1), rtol=1e-6, atol=1e-6)


def test_select_layers_by_pattern_and_steps_from_the_end(pipe):
    with fluxlab.capture(pipe, layers=["single_transformer_blocks.*", "transformer_blocks.0"], steps=[-1]) as cap:
        generate(pipe, steps=3)
    assert {r.layer for r in cap} == {"single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn",
                                      "transformer_blocks.0.attn"}
    assert {r.step for r in cap} == {2}
    assert len(cap) == 3 * _branches(pipe)


def test_branches_are_labelled(pipe, records):
    expected = {None} if _branches(pipe) == 1 else {"cond", "uncond"}
    assert {r.branch for r in records} == expected


def test_meta_keeps_shapes_without_memory(pipe):
    with fluxlab.capture(pipe, to="meta", max_bytes=1) as cap:
        generate(pipe, steps=1)
    assert cap.nbytes == 0 and len(cap) == _layers(pipe) * _branches(pipe)
    assert all(r.q.device.type == "meta" and r.q.shape == (1, TEXT + IMAGE, HEADS, HEAD_DIM) for r in cap)


def test_max_bytes_stops_before_exceeding(pipe):
    one_call = 4 * (TEXT + IMAGE) * HEADS * HEAD_DIM * 4  # q, k, v, out in float32
    with pytest.raises(CaptureLimitError, match="max_bytes") as info:
        with fluxlab.capture(pipe, max_bytes=3 * one_call) as cap:
            generate(pipe, steps=1)
    assert len(cap) == 3 and cap.nbytes == 3 * one_call  # the 4th record would have gone past the bound
    assert "layers=" in str(info.value) and "steps=" in str(info.value)


def test_nothing_selected_lists_the_layers(pipe):
    with pytest.raises(CaptureError, match="single_transformer_blocks.1.attn") as info:
        fluxlab.capture(pipe, layers=["decoder.mid_block.*"])
    assert "transformer_blocks.0.attn" in str(info.value)
    with pytest.raises(CaptureError, match="steps"):
        fluxlab.capture(pipe, steps=[])


def test_capture_needs_fluxlab_attached():
    with pytest.raises(AttachError, match="fluxlab.attach"):
        fluxlab.capture(build_tiny_pipeline("dev"))


def test_captures_do_not_nest_and_block_detach(pipe):
    with fluxlab.capture(pipe, to="meta"):
        with pytest.raises(AttachError, match="already recording"):
            with fluxlab.capture(pipe, to="meta"):
                pass
        with pytest.raises(AttachError, match="still recording"):
            fluxlab.detach(pipe)


def test_a_bare_transformer_call_has_no_step():
    """Outside a pipeline's loop there is no denoising step: step None, kept only when steps=None."""
    with attached(build_tiny_pipeline("dev").transformer) as transformer:
        config = transformer.config
        with fluxlab.capture(transformer) as cap:
            transformer(hidden_states=torch.randn(1, IMAGE, config.in_channels),
                        encoder_hidden_states=torch.randn(1, 8, config.joint_attention_dim),
                        timestep=torch.tensor([0.5]), guidance=torch.tensor([4.0]),
                        img_ids=torch.zeros(IMAGE, 4), txt_ids=torch.zeros(8, 4))
    assert len(cap) == 4 and {(r.step, r.branch, r.text_tokens) for r in cap} == {(None, None, 8)}
