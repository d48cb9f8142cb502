"""FlashAttention-3 (bf16 and FP8, PyPI's fa3-fwd) and SageAttention 2 (sm90) adapters, checked against stand-ins with
the real signatures (tests/standins, tests/standins_sage2: no kernel runs here), and their emulators
(fluxlab/backends/emulated_hopper.py) checked on the CPU against float64 and against independent one-block-at-a-time
loops. The real kernels are measured by benchmarks/hopper_quant.py on an H100/H200."""

import importlib
import math
import pathlib

import pytest
import torch

import fluxlab
from fluxlab import registry
from fluxlab.backends import emulated_hopper
from fluxlab.backends.flash_attn import FP8_MAX, fp8_descaled
from fluxlab.backends.reference import reference_attention
from fluxlab.compare.inputs import synthetic_qkv
from fluxlab.dispatch import run_backend
from fluxlab.platform import Platform
from fluxlab.registry import GROUPS, PRIORITY

from _benchmarks import load_benchmark
from _standins import forget as _forget_modules

HERE = pathlib.Path(__file__).parent
SCALE = 128 ** -0.5


def qkv(seq=256, heads=2, dist="normal", dtype=torch.bfloat16, seed=0, kv_heads=None, head_dim=128):
    q, k, v = synthetic_qkv(1, seq, heads, head_dim, dist, seed)
    if kv_heads:
        k, v = k[:, :, :kv_heads].contiguous(), v[:, :, :kv_heads].contiguous()
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_l2(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture
def libraries(monkeypatch):
    """Put stand-in folders on the path: ``use("standins_sage2")`` etc. (only fa3-fwd of tests/standins by default)."""
    _forget_modules()

    def use(*folders, only_fa3_fwd=True):
        for folder in folders:
            path = HERE / folder
            if only_fa3_fwd and folder == "standins":  # fa3-fwd without the official FA3 build beside it
                target = pathlib.Path(monkeypatch_tmp) / "fa3_only"
                target.mkdir(exist_ok=True)
                for name in ("fa3_fwd_interface", "_attention.py"):
                    link = target / name
                    if not link.exists():
                        link.symlink_to(path / name)
                path = target
            monkeypatch.syspath_prepend(str(path))
        importlib.invalidate_caches()
        fluxlab.clear_caches()

    import tempfile

    with tempfile.TemporaryDirectory() as monkeypatch_tmp:
        yield use
        _forget_modules()
        fluxlab.clear_caches()


# --- registration ----------------------------------------------------------------------------------------------------


def test_quantised_hopper_backends_are_declared_and_never_picked_automatically():
    for name in ("fa3_fp8", "sage2"):
        backend = registry.get_backend(name)
        assert backend.caps.quantised and backend.caps.returns_lse and backend.caps.arches == {"nvidia": ("sm_90",)}
        assert all(name not in order for order in PRIORITY.values())
        assert all(name not in members for members in GROUPS.values())
    for emulator, real in (("emu_fa3_fp8", "fa3_fp8"), ("emu_sage2", "sage2")):
        caps = registry.get_backend(emulator).caps
        assert caps.emulated and caps.emulates == real and caps.quantised and caps.returns_lse and caps.experimental
    from fluxlab.compare.specs import parse_backends

    cpu_sweep = {spec.name for spec in parse_backends(None, Platform.cpu())}
    assert "emu_sage" in cpu_sweep and not {"emu_fa3_fp8", "emu_sage2"} & cpu_sweep  # opt-in: named only
    assert fluxlab.dispatch.default_backend(platform=Platform.h100()) not in ("fa3_fp8", "sage2")
    assert registry.get_backend("sage2").option_values["qk_quant_gran"].keys() == {"per_thread", "per_warp"}


def test_missing_libraries_name_their_install():
    h100 = Platform.h100()
    _forget_modules()
    reasons = " ".join(registry.get_backend("fa3_fp8").platform_reasons(h100))
    assert "pip install 'fluxlab[fa3]'" in reasons and "hopper/" in reasons
    assert "SageAttention 2 from source" in " ".join(registry.get_backend("sage2").platform_reasons(h100))
    assert "needs arch sm_90" in " ".join(registry.get_backend("fa3_fp8").platform_reasons(Platform.a100()))


# --- adapters against stand-ins ----------------------------------------------------------------------------------------


def test_fa3_runs_on_fa3_fwd_when_the_official_build_is_absent(libraries):
    libraries("standins")
    lib = importlib.import_module("fa3_fwd_interface")
    backend = registry.get_backend("fa3")
    assert backend.missing_packages() == [] and backend.version is None  # a stand-in has no distribution metadata
    q, k, v = qkv(40, 4)
    out, lse = run_backend(backend, q, k, v, scale=0.07, return_lse=True)
    call = lib.CALLS[-1]
    assert call["softmax_scale"] == 0.07 and call["return_attn_probs"] is True
    assert call["shapes"] == [(1, 40, 4, 128)] * 3 and call["descales"] == [None, None, None]
    ref, ref_lse = reference_attention(q, k, v, scale=0.07, return_lse=True)
    assert rel_l2(out, ref) < 1e-2 and (lse - ref_lse).abs().max() < 1e-4
    # fa3-fwd has no fp16 kernels: refused up front, with the way out
    reasons = backend.input_reasons(q.half().to("meta"), k.half().to("meta"), Platform.h100(), causal=False,
                                    return_lse=False)
    assert reasons == ["fa3 from PyPI's fa3-fwd is built without fp16 kernels: use bf16, or the official build of "
                       "FlashAttention's hopper/ directory"]
    assert not backend.input_reasons(q.to("meta"), k.to("meta"), Platform.h100(), causal=False, return_lse=False)


def test_fa3_prefers_the_official_build(libraries):
    libraries("standins", only_fa3_fwd=False)
    official = importlib.import_module("flash_attn_interface")
    q, k, v = qkv(40, 4)
    run_backend(registry.get_backend("fa3"), q, k, v, scale=0.07)
    assert official.CALLS and official.CALLS[-1]["softmax_scale"] == 0.07
    assert not registry.get_backend("fa3").input_reasons(q.half().to("meta"), k.half().to("meta"), Platform.h100(),
                                                          causal=False, return_lse=False)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_fa3_fp8_hands_the_kernel_e4m3_tensors_and_per_kv_head_descales(libraries, kv_heads):
    libraries("standins")
    lib = importlib.import_module("fa3_fwd_interface")
    q, k, v = qkv(96, 4, kv_heads=kv_heads)
    out, lse = run_backend(registry.get_backend("fa3_fp8"), q, k, v, scale=SCALE, return_lse=True)
    call = lib.CALLS[-1]
    kv = kv_heads or 4
    assert call["dtypes"] == [torch.float8_e4m3fn] * 3 and call["softmax_scale"] == SCALE
    assert call["descales"] == [((1, kv), torch.float32)] * 3  # FA3 reads Q's descale at the KV head's index
    assert out.dtype == torch.bfloat16 and out.shape == q.shape and lse.shape == (1, 4, 96)
    ref, ref_lse = reference_attention(q, k, v, scale=SCALE, return_lse=True)
    assert 1e-3 < rel_l2(out, ref) < 0.1  # the stand-in attends over the e4m3 values the adapter made
    assert (lse - ref_lse).abs().max() < 0.1


def test_fp8_descales_are_per_batch_and_kv_head_amax():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 50, 4, 16, generator=gen) * torch.tensor([1.0, 10.0, 0.01, 3.0])[None, None, :, None]
    x[1, :, 3] = 0  # an all-zero group
    x8, descale = fp8_descaled(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (2, 4)
    torch.testing.assert_close(descale[0], x[0].abs().amax(dim=(0, 2)) / FP8_MAX)
    assert descale[1, 3] == 1 and (x8[1, :, 3].float() == 0).all()
    assert (x8[0].float().abs().amax(dim=(0, 2)) == FP8_MAX).all()  # each group's largest value lands on 448
    back = x8.float() * descale[:, None, :, None]
    assert ((back - x).abs() <= x.abs() * 2 ** -4 + 1e-6).all()  # e4m3: 3 mantissa bits
    grouped8, grouped = fp8_descaled(x, kv_heads=2)  # query heads 0-1 and 2-3 share a descale
    torch.testing.assert_close(grouped[0], torch.stack([x[0, :, :2].abs().max(), x[0, :, 2:].abs().max()]) / FP8_MAX)


def test_sage2_adapter_call_contract(libraries):
    libraries("standins_sage2")
    core = importlib.import_module("sageattention.core")
    q, k, v = qkv(64, 4, kv_heads=2)
    out = run_backend(registry.get_backend("sage2"), q, k, v, scale=0.05, qk_quant_gran="per_warp")
    call = core.CALLS[-1]
    assert call == {"tensor_layout": "NHD", "is_causal": False, "qk_quant_gran": "per_warp", "sm_scale": 0.05,
                    "pv_accum_dtype": "fp32+fp32", "smooth_k": True, "return_lse": False, "kwargs": {},
                    "shapes": [(1, 64, 4, 128), (1, 64, 2, 128), (1, 64, 2, 128)]}
    out, lse = run_backend(registry.get_backend("sage2"), q, k, v, scale=0.05, return_lse=True)
    ref, ref_lse = reference_attention(q, k, v, scale=0.05, return_lse=True)
    assert rel_l2(out, ref) < 1e-2 and (lse - ref_lse).abs().max() < 1e-4 and lse.dtype == torch.float32
    with pytest.raises(NotImplementedError, match="fp32\\+fp32"):  # the sm90 library's own refusal
        run_backend(registry.get_backend("sage2"), q, k, v, scale=0.05, pv_accum_dtype="fp32")


# --- emulators --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["emu_fa3_fp8", "emu_sage2"])
def test_emulators_error_is_quantised_and_their_lse_is_natural_log(name):
    fn = registry.get_backend(name).fn
    q, k, v = qkv(300, 2)  # 300 keys: a ragged last block for both
    ref, ref_lse = reference_attention(q, k, v, scale=SCALE, return_lse=True)
    out, lse = fn(q, k, v, scale=SCALE, return_lse=True)
    exact = emulated_hopper._finish(ref.transpose(1, 2).float(), torch.bfloat16)  # bf16-rounded float64 result
    assert out.dtype == torch.bfloat16 and out.shape == q.shape and lse.shape == (1, 2, 300)
    assert 5 * rel_l2(exact, ref) < rel_l2(out, ref) < 0.08  # far from exact, within a quantised kernel's error
    assert (lse - ref_lse).abs().max() < 0.05  # natural log: a base-2 LSE would be ~44 % off
    out32 = fn(q.float(), k.float(), v.float(), scale=SCALE)  # float32 in: the bf16 values, in float32
    assert out32.dtype == torch.float32 and torch.equal(out32, out.float())


def _fa3_fp8_loop(q, k, v, scale, block):
    """FA3's FP8 algorithm written out one key block at a time, last block first (independent of _flash)."""
    from fluxlab.backends.flash_attn import fp8_operands

    q8, k8, v8, dq, dk, dv = fp8_operands(q, k, v)
    qh, kh, vh = (t.float().transpose(1, 2) for t in (q8, k8, v8))
    sl2 = torch.tensor(scale * emulated_hopper.LOG2E_F32).item() * (dq * dk)[:, :, None, None]
    s = qh @ kh.transpose(-1, -2) * sl2
    n = s.shape[-1]
    starts = list(range(0, n, block))[::-1]
    m = torch.full(s.shape[:-1], -math.inf)
    l = torch.zeros(s.shape[:-1])
    acc = torch.zeros(*s.shape[:-1], vh.shape[-1])
    for start in starts:
        block_s = s[..., start:start + block]
        m_new = torch.maximum(m, block_s.amax(-1) - 8)
        alpha = torch.exp2(m - m_new)
        p = torch.exp2(block_s - m_new[..., None])
        l = l * alpha + p.sum(-1)
        p8 = p.to(torch.float8_e4m3fn).float()
        acc = acc * alpha[..., None] + p8 @ vh[:, :, start:start + block]
        m = m_new
    out = acc * dv[:, :, None, None] / l[..., None]
    return out.transpose(1, 2).to(torch.bfloat16)


def test_emu_fa3_fp8_walks_key_blocks_from_the_last(monkeypatch):
    q, k, v = qkv(200, 2, dist="peaky", seed=4)
    for block in (64, 224):
        expected = _fa3_fp8_loop(q, k, v, SCALE, block)
        got = emulated_hopper.emu_fa3_fp8(q, k, v, scale=SCALE, block_n=block)
        assert rel_l2(got, expected) < 1e-3  # the same algorithm (float32 sum order aside)
    forward = _fa3_fp8_loop(q.flip(1), k.flip(1), v.flip(1), SCALE, 64).flip(1)  # a different block order differs
    assert emulated_hopper.fa3_fp8_block_n(128) == 224 and emulated_hopper.fa3_fp8_block_n(64) == 160
    assert rel_l2(forward, _fa3_fp8_loop(q, k, v, SCALE, 64)) > 0


def test_emu_fa3_fp8_causal_and_grouped_query():
    q, k, v = qkv(130, 4, kv_heads=2)
    for causal in (False, True):
        ref = reference_attention(q, k, v, scale=SCALE, causal=causal)
        assert rel_l2(emulated_hopper.emu_fa3_fp8(q, k, v, scale=SCALE, causal=causal), ref) < 0.08


def test_sage2_scale_groups_follow_the_kernels_thread_layout():
    q_group, q_groups, k_group, k_groups = emulated_hopper._sage2_groups(256, "per_thread", torch.device("cpu"))
    assert q_groups == 16 * 8 and k_groups == 2 * 4
    assert q_group[0] == q_group[8] != q_group[1] and q_group[16] != q_group[0]  # rows r, r+8 of each 16
    assert k_group[0] == k_group[1] == k_group[8] == k_group[121] != k_group[2]  # (n % 8) // 2 within 128
    assert k_group[128] != k_group[0] and (torch.bincount(k_group) == 32).all()
    q_group, q_groups, k_group, k_groups = emulated_hopper._sage2_groups(256, "per_warp", torch.device("cpu"))
    assert (q_group == torch.arange(256) // 16).all() and (k_group == torch.arange(256) // 128).all()


def test_emu_sage2_quantises_q_per_thread_rows():
    q, k, v = qkv(64, 1, seed=2)
    q = q.clone()
    q[0, 3, 0, 0] = 200.0  # an outlier in row 3: only rows 3 and 11 share its scale
    _, q_ints, q_scale, *_ = emulated_hopper.sage2_operands(q, k, v)
    assert q_scale[0, 0, 3] == q_scale[0, 0, 11] and q_scale[0, 0, 3] > 10 * q_scale[0, 0, 4]
    assert q_ints.abs().max() == 127 and torch.equal(q_ints, q_ints.round())
    _, _, warp_scale, *_ = emulated_hopper.sage2_operands(q, k, v, qk_quant_gran="per_warp")
    assert (warp_scale[0, 0, :16] == warp_scale[0, 0, 3]).all() and warp_scale[0, 0, 16] < warp_scale[0, 0, 3]


def test_emu_sage2_smoothing_removes_a_common_key_offset():
    q, k, v = qkv(256, 2, seed=5)
    k = (k.float() + 40.0).to(torch.bfloat16)  # a large shared offset eats int8 range unless subtracted
    ref, ref_lse = reference_attention(q, k, v, scale=SCALE, return_lse=True)
    smooth, lse = emulated_hopper.emu_sage2(q, k, v, scale=SCALE, return_lse=True)
    raw = emulated_hopper.emu_sage2(q, k, v, scale=SCALE, smooth_k=False)
    assert rel_l2(smooth, ref) < 0.5 * rel_l2(raw, ref)
    assert (lse - ref_lse).abs().max() < 0.05  # the K mean's share of the scores is added back to the LSE
    per_warp = emulated_hopper.emu_sage2(q, k, v, scale=SCALE, qk_quant_gran="per_warp")
    assert rel_l2(per_warp, ref) < 0.08 and not torch.equal(per_warp, smooth)
    with pytest.raises(ValueError, match="pv_accum_dtype"):
        emulated_hopper.emu_sage2(q, k, v, scale=SCALE, pv_accum_dtype="fp32")
    with pytest.raises(ValueError, match="qk_quant_gran"):
        emulated_hopper.emu_sage2(q, k, v, scale=SCALE, qk_quant_gran="per_block")


# --- the benchmark script ----------------------------------------------------------------------------------------------


def test_hopper_quant_benchmark_dry_run(tmp_path):
    import json

    bench = load_benchmark("hopper_quant")
    assert bench.main(["--out", str(tmp_path), "--tiny", "--device", "cpu", "--reps", "1", "--warmup", "0",
                       "--rounds", "1"]) == 0
    data = json.loads((tmp_path / "hopper_quant.json").read_text())
    assert data["card"] == "cpu" and {r["kernel"] for r in data["speed"]} == set(bench.KERNELS)
    assert all("needs an NVIDIA GPU" in r["skipped"] for r in data["speed"])  # reported, never silently dropped
    assert [c["distribution"] for c in data["accuracy"]] == ["normal", "outliers", "peaky"]
    for case in data["accuracy"]:
        assert set(bench.EMULATORS) <= set(case["rel_l2_vs_fp64"]) and case["checks"] == []
        assert all(0 < case["rel_l2_vs_fp64"][name] < 0.5 for name in bench.EMULATORS)
    assert "skipped fa3_fp8" in (tmp_path / "hopper_quant.md").read_text()
