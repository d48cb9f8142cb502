"""Bit-compare fluxlab.mx's emulated aiter quantisers with aiter's own Triton quantisers, run through Triton on an
NVIDIA GPU (the aiter Triton subtree of ROCm/aiter at the commit fluxlab.mx cites, carried as a folder).

    python benchmarks/amd_quant_gpu.py --aiter-root .aiter_quant --out "$OUT/amd_quant"      # on the GPU
    python benchmarks/amd_quant_gpu.py --tiny --out /tmp/amd_quant                           # CPU dry run

What runs where. aiter's MHA v4 quantisers are partly HIP, partly Triton:
- compared here (pure Triton, so they run on NVIDIA): the per-tensor FP8 quantiser of the ``fp8`` / ``i8fp8`` formats
  (``mha_v4_per_tensor_amax/scale/quant_kernel`` with ``IS_INT8=False``), the per-channel FP8 V quantiser of the
  ``mxfp6`` / ``mxfp4`` formats (``sage_quant_v_amax_partial/finalize_kernel`` + ``sage_quant_v_kernel``), the MXFP4
  V packer's scale function (``_mxfp4_scale_from_amax``), aiter's ties-low E2M1 encoder (``_e2m1_code``) and the
  MXFP4 Sage kernel's Q/K quantiser ``downcast_to_mxfp`` (the same amax/6 round-up scale as MHA v4's MXFP4 Q/K,
  elements rounded half away);
- not runnable on NVIDIA, hence validated against their source only (tests/test_mx.py): the INT8 quantiser (AMD
  inline assembly ``v_rndne_f32``), the MXFP4 V packer's element conversion (``v_cvt_scalef32_pk_fp4_f32``) and the
  fused rotate + MXFP4/MXFP6 Q/K quantisers (HIP, gfx950 conversion instructions).

Each comparison reports how many values match bit for bit; every mismatch is classified: "division" when the
emulator's float32 quotient lies within a few ulps of a rounding boundary (NVIDIA's Triton may lower a float32
division differently from AMD's correctly rounded one), "follows scale" for elements of a block whose scale
differed, "sign of zero" for a -0 encoded as +0, "interpreter fp8 cast" (CPU interpreter only, see
``interpreter_carry``), else "unexplained". ``verdict`` is "bit-identical", "identical up to <causes>" or
"differs".
Without Triton (or a GPU, unless TRITON_INTERPRET=1) only the emulator side runs and the aiter side says why not.
Writes ``amd_quant_gpu.json`` and ``.md`` (card, versions, command, aiter commit inside).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import math
import os
import sys
import types
from pathlib import Path

import torch

from fluxlab import mx, numerics
from fluxlab.util import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulators import write_results  # noqa: E402

QUANT_KERNELS = "aiter.ops.triton._triton_kernels.quant.sage_attention_quant"
DOWNCAST = "aiter.ops.triton.moe.quant_moe"
ARCH_INFO = "aiter.ops.triton.utils._triton.arch_info"
NOT_ON_NVIDIA = {
    "int8_per_tensor": "the kernel rounds with AMD inline assembly (v_rndne_f32)",
    "mxfp4_v_elements": "the packer converts with AMD inline assembly (v_cvt_scalef32_pk_fp4_f32)",
    "mxfp4_mxfp6_qk": "fused HIP kernels (csrc/kernels/mha_v4_quant.cu) with gfx950 conversion instructions",
}
PER_TENSOR_BLOCK = 8192  # aiter mha_v4.py MHA_V4_PER_TENSOR_BLOCK_SIZE
V_AMAX_BLOCK, V_QUANT_BLOCK = 256, 64  # aiter mha_v4.py quantize_v_fp8's scale_block_k and block_k


# -- inputs ---------------------------------------------------------------------------------------------------------


def make_inputs(seq: int, heads: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """bf16 [1, seq, heads, 128] tensors: plain normal, outlier channels and tokens, and values on E2M1 midpoints."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(1, seq, heads, 128, generator=gen)
    outliers = normal.clone()
    outliers[..., :4] *= 8
    outliers[:, ::max(1, seq // 8)] *= 20
    # every 32-block holds a 6.0 (amax 6: scale 1 for the amax/6 recipes) and exact E2M1 midpoints elsewhere
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    pick = torch.randint(0, len(mids), (1, seq, heads, 128), generator=gen)
    ties = mids[pick] * torch.where(torch.rand(pick.shape, generator=gen) < 0.5, -1.0, 1.0)
    ties[..., ::32] = 6.0
    return {name: x.to(torch.bfloat16).to(device) for name, x in
            (("normal", normal), ("outliers", outliers), ("ties", ties))}


# -- loading aiter's Triton subtree ---------------------------------------------------------------------------------


def load_aiter(root: Path):
    """Import aiter's Triton quantiser modules from ``root`` (a folder holding ``aiter/ops/triton``) without running
    aiter's package ``__init__`` files (they probe ROCm): the parent packages become bare namespace modules. Returns
    (quant kernels module, downcast module) or raises ImportError with the reason."""
    import triton  # noqa: F401  (the reason when missing)

    base = root / "aiter"
    if not (base / "ops" / "triton").is_dir():
        raise ImportError(f"{root} holds no aiter/ops/triton (prepare the carry folder: docs/amd_quant.md)")
    for name in [m for m in sys.modules if m == "aiter" or m.startswith("aiter.")]:
        del sys.modules[name]
    for name, path in (("aiter", base), ("aiter.ops", base / "ops"), ("aiter.ops.triton", base / "ops" / "triton")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__spec__.submodule_search_locations = [str(path)]
        sys.modules[name] = module
    try:
        importlib.import_module(ARCH_INFO)
    except Exception:  # no active GPU driver (CPU interpreter): the downcast module only imports get_arch
        stub = types.ModuleType(ARCH_INFO)
        stub.get_arch = lambda: "gfx950"
        sys.modules[ARCH_INFO] = stub
    return importlib.import_module(QUANT_KERNELS), importlib.import_module(DOWNCAST)


def aiter_commit(root: Path) -> str | None:
    path = root / "AITER_COMMIT"
    return path.read_text().strip() if path.exists() else None


# -- aiter's quantisers, launched as aiter's Python wrappers launch them ------------------------------------------


def aiter_fp8_per_tensor(kernels, x):
    """aiter mha_v4.quantize_fp8: the three per-tensor kernels, e4m3fn (gfx950's native fp8)."""
    import triton

    numel = x.numel()
    blocks = triton.cdiv(numel, PER_TENSOR_BLOCK)
    partial = torch.empty(blocks, dtype=torch.float32, device=x.device)
    scale = torch.empty(1, dtype=torch.float32, device=x.device)
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    kernels.mha_v4_per_tensor_amax_kernel[(blocks,)](x, partial, numel, BLOCK_SIZE=PER_TENSOR_BLOCK, num_warps=8)
    kernels.mha_v4_per_tensor_scale_kernel[(1,)](partial, scale, blocks, dtype_max=448.0,
                                                  BLOCK_SIZE=triton.next_power_of_2(blocks), num_warps=8)
    kernels.mha_v4_per_tensor_quant_kernel[(blocks,)](x, out, scale, numel, IS_INT8=False,
                                                      BLOCK_SIZE=PER_TENSOR_BLOCK, num_warps=8)
    return out.float(), scale[0]


def aiter_fp8_v_per_channel(kernels, v):
    """aiter mha_v4.quantize_v_fp8: per-channel amax in 256-token partials, finalise, quantise in 64-token blocks."""
    import triton

    batch, seq, heads, dim = v.shape
    partial_blocks = triton.cdiv(seq, V_AMAX_BLOCK)
    partial = torch.empty(batch * heads, partial_blocks, dim, dtype=torch.float32, device=v.device)
    scale = torch.empty(batch, heads, dim, dtype=torch.float32, device=v.device)
    kernels.sage_quant_v_amax_partial_kernel[(batch * heads * partial_blocks,)](
        v, partial, *v.stride(), seq, heads, partial_blocks, D=dim, BLOCK_K=V_AMAX_BLOCK, num_warps=8)
    kernels.sage_quant_v_amax_finalize_kernel[(triton.cdiv(dim, 32), batch * heads)](
        partial, scale, partial_blocks, D=dim, FP8_MAX=448.0, BLOCK_N=triton.next_power_of_2(partial_blocks),
        BLOCK_D=32, num_warps=4)
    blocks = triton.cdiv(seq, V_QUANT_BLOCK)
    out = torch.empty(v.shape, dtype=torch.float8_e4m3fn, device=v.device)
    kernels.sage_quant_v_kernel[(batch * heads * blocks,)](
        v, out, scale, v.stride(0), v.stride(2), v.stride(1), v.stride(3), scale.stride(0), scale.stride(1),
        batch, heads, blocks, seq, D=dim, BLK_K=V_QUANT_BLOCK, num_stages=3, num_warps=8)
    return out.float(), scale


def aiter_downcast_mxfp4(downcast, x):
    """aiter downcast_to_mxfp(x, uint8, axis=-1): packed E2M1 nibbles (even index low) and E8M0 bytes -> values."""
    packed, scales = downcast.downcast_to_mxfp(x, torch.uint8, axis=-1)
    codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)
    values = mx.decode_element(codes.cpu(), "e2m1").to(x.device)
    blocks = values.unflatten(-1, (-1, mx.MX_BLOCK)) * mx.e8m0_to_float(scales)[..., None]
    return blocks.flatten(-2), scales


_PROBE = None


def aiter_mxfp4_v_helpers(kernels, amax, y):
    """aiter's ``_mxfp4_scale_from_amax`` and ``_e2m1_code`` (Triton device functions) on vectors, through a
    one-line wrapper kernel of ours."""
    global _PROBE, _AITER_SCALE_FROM_AMAX, _AITER_E2M1_CODE
    import triton
    import triton.language as tl

    if _PROBE is None:
        _AITER_SCALE_FROM_AMAX, _AITER_E2M1_CODE = kernels._mxfp4_scale_from_amax, kernels._e2m1_code

        @triton.jit
        def probe(amax_ptr, scale_ptr, y_ptr, code_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            encoded, _reciprocal = _AITER_SCALE_FROM_AMAX(tl.load(amax_ptr + offs, mask=mask, other=1.0))
            tl.store(scale_ptr + offs, encoded, mask=mask)
            tl.store(code_ptr + offs, _AITER_E2M1_CODE(tl.load(y_ptr + offs, mask=mask, other=0.0)).to(tl.uint8),
                     mask=mask)
        _PROBE = probe
    n = amax.numel()
    scales = torch.empty(n, dtype=torch.uint8, device=amax.device)
    codes = torch.empty(n, dtype=torch.uint8, device=amax.device)
    _PROBE[(triton.cdiv(n, 1024),)](amax, scales, y, codes, n, BLOCK=1024)
    return scales, codes


_AITER_SCALE_FROM_AMAX = _AITER_E2M1_CODE = None


# -- comparing -----------------------------------------------------------------------------------------------------


def near_fp8_boundary(ratio: torch.Tensor, ulps: int = 4) -> torch.Tensor:
    """Whether a float32 quotient lies within ``ulps`` float32 ulps of a point where its e4m3fn rounding changes."""
    r = ratio.float()
    step = torch.finfo(torch.float32).eps * r.abs().clamp(min=torch.finfo(torch.float32).tiny) * ulps
    low = numerics.round_fp8(r - step, "e4m3fn")
    high = numerics.round_fp8(r + step, "e4m3fn")
    return (low != high) & ~(torch.isnan(low) | torch.isnan(high))


def near_power_of_two(x: torch.Tensor, ulps: int = 4) -> torch.Tensor:
    """Whether ``x`` (float32, positive) is within ``ulps`` ulps of a power of two (where a ceiling flips)."""
    bits = x.float().contiguous().view(torch.int32)
    mantissa = bits & 0x7FFFFF
    return (mantissa <= ulps) | (mantissa >= 0x800000 - ulps)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise bit equality of float32 values, NaN equal to NaN, +0 and -0 distinct."""
    a, b = a.float().contiguous(), b.float().contiguous()
    both_nan = torch.isnan(a) & torch.isnan(b)
    return (a.view(torch.int32) == b.view(torch.int32)) | both_nan


def summarise(match: torch.Tensor, causes: dict[str, torch.Tensor], examples: list) -> dict:
    """Counts: compared, mismatched, and each mismatch assigned to the first cause that explains it."""
    mismatch = ~match
    left = mismatch.clone()
    counts = {}
    for name, mask in causes.items():
        counts[name] = int((left & mask).sum())
        left &= ~mask
    counts["unexplained"] = int(left.sum())
    return {"compared": int(match.numel()), "mismatched": int(mismatch.sum()), "causes": counts,
            "examples": examples[:5]}


def verdict(row: dict) -> str:
    if row["mismatched"] == 0:
        return "bit-identical"
    if row["causes"]["unexplained"]:
        return "differs"
    return "identical up to " + ", ".join(name for name, count in row["causes"].items() if count)


def interpreter_carry(emu: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Triton's CPU interpreter (TRITON_INTERPRET=1) casts float32 -> fp8 by its own bit arithmetic, which (seen in
    a dry run) drops a mantissa carry into the exponent (31.9 becomes 16, not 32) and truncates toward zero among
    fp8 subnormals (0.0109 becomes 0.0098, not 0.0117). Only in interpreter runs is a mismatch where aiter's value is
    smaller in magnitude with the same sign put down to it; on a GPU this cause is always empty."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return torch.zeros_like(emu, dtype=torch.bool)
    same_sign = torch.signbit(emu) == torch.signbit(got)
    return same_sign & (got.abs() < emu.abs())


def compare_fp8_per_tensor(x, aiter_side):
    emu_values, emu_scale = mx.quantise_fp8_per_tensor(x.cpu())
    got_values, got_scale = aiter_side
    got_values, got_scale = got_values.cpu(), got_scale.cpu()
    scale_same = bool(same_bits(emu_scale.reshape(1), got_scale.reshape(1)).all())
    match = same_bits(emu_values, got_values)
    ratio = x.cpu().float() * (1.0 / emu_scale)
    causes = {"follows scale": torch.full_like(match, not scale_same),
              "interpreter fp8 cast": interpreter_carry(emu_values, got_values), "division": near_fp8_boundary(ratio)}
    row = summarise(match, causes, _examples(match, x, emu_values, got_values))
    row["scale_identical"] = scale_same
    return row


def compare_fp8_v(v, aiter_side):
    emu_values, emu_scales = mx.quantise_fp8_v_per_channel(v.cpu())
    got_values, got_scales = (t.cpu() for t in aiter_side)
    scale_match = same_bits(emu_scales, got_scales)
    match = same_bits(emu_values, got_values)
    ratio = v.cpu().float() / emu_scales[:, None]
    causes = {"follows scale": ~scale_match[:, None].expand_as(match),
              "interpreter fp8 cast": interpreter_carry(emu_values, got_values), "division": near_fp8_boundary(ratio)}
    row = summarise(match, causes, _examples(match, v, emu_values, got_values))
    row["scales_mismatched"] = int((~scale_match).sum())
    return row


def compare_downcast(x, aiter_side):
    emu_values, emu_codes = mx.quantise_mxfp4_downcast(x.cpu())
    got_values, got_codes = (t.cpu() for t in aiter_side)
    code_match = emu_codes == got_codes
    amax = x.cpu().float().unflatten(-1, (-1, mx.MX_BLOCK)).abs().amax(-1)
    scale_row = summarise(code_match, {"division": near_power_of_two(amax / 6.0)}, [])
    match = same_bits(emu_values, got_values)
    follows = (~code_match).repeat_interleave(mx.MX_BLOCK, dim=-1)
    row = summarise(match, {"follows scale": follows}, _examples(match, x, emu_values, got_values))
    row["scales"] = scale_row
    return row


def compare_v_helpers(amax, y, aiter_side):
    got_scales, got_codes = (t.cpu() for t in aiter_side)
    emu_scales = mx.scale_code_aiter_mxfp4_v(amax.cpu())
    emu_codes = mx.encode_element(y.cpu(), "e2m1", ties="down")
    scales = summarise(emu_scales == got_scales, {}, [])
    # aiter's encoder sets the sign bit for y < 0 only, so -0.0 becomes +0 (code 0): the same value
    zero = (emu_codes & 0x7) == 0
    codes = summarise(emu_codes == got_codes, {"sign of zero": zero & ((got_codes & 0x7) == 0)}, [])
    causes = {name: scales["causes"].get(name, 0) + codes["causes"].get(name, 0)
              for name in ("sign of zero", "unexplained")}
    return {"scale_from_amax": scales, "e2m1_code": codes, "compared": scales["compared"] + codes["compared"],
            "mismatched": scales["mismatched"] + codes["mismatched"], "causes": causes}


def _examples(match, x, emu, got):
    idx = (~match).flatten().nonzero().flatten()[:5].tolist()
    flat_x, flat_e, flat_g = x.flatten().cpu().float(), emu.flatten(), got.flatten()
    return [{"index": i, "input": float(flat_x[i]), "emulated": float(flat_e[i]), "aiter": float(flat_g[i])}
            for i in idx]


def helper_probes(device) -> tuple[torch.Tensor, torch.Tensor]:
    """Block maxima and E2M1 inputs that exercise every branch: zero, the 1.5 mantissa edge and one ulp past it,
    powers of two, each midpoint and one ulp either side, saturation, random bf16 values."""
    gen = torch.Generator().manual_seed(1)
    edges = [0.0, 1e-13, 1e-12, 6.0, 1.5, 3.0, 0.75, 2.0**-100, 2.0**100, 448.0]
    edges += [torch.nextafter(torch.tensor(1.5 * 2.0**k), torch.tensor(math.inf)).item() for k in range(-8, 9)]
    amax = torch.cat([torch.tensor(edges), torch.randn(4096, generator=gen).abs().to(torch.bfloat16).float()])
    mids = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 6.5, 100.0])
    around = torch.cat([mids, torch.nextafter(mids, torch.tensor(math.inf)), torch.nextafter(mids, torch.tensor(-1.0))])
    y = torch.cat([around, -around, (torch.randn(4096, generator=gen) * 3).to(torch.bfloat16).float()])
    n = max(len(amax), len(y))
    amax = torch.nn.functional.pad(amax, (0, n - len(amax)), value=1.0)
    y = torch.nn.functional.pad(y, (0, n - len(y)))
    return amax.to(device), y.to(device)


# -- the run --------------------------------------------------------------------------------------------------------


def run(args) -> dict:
    device = torch.device(args.device)
    seq, heads = (64, 2) if args.tiny else (args.seq, args.heads)
    inputs = make_inputs(seq, heads, device)
    rotated = {name: mx.rotate_for_mx(x.cpu(), mx.q_multiplier(128**-0.5)).to(torch.bfloat16).to(device)
               for name, x in inputs.items()}
    amax, y = helper_probes(device)
    root = Path(args.aiter_root)
    data = {"shape": [1, seq, heads, 128], "aiter_root": str(root), "aiter_commit": aiter_commit(root),
            "not_runnable_on_nvidia": NOT_ON_NVIDIA, "comparisons": {},
            "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    try:
        kernels, downcast = load_aiter(root)
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ImportError(f"Triton kernels need a GPU (or TRITON_INTERPRET=1); device is {device.type}")
        import triton

        data["aiter"] = {"available": True, "triton": triton.__version__}
    except ImportError as exc:
        data["aiter"] = {"available": False, "reason": str(exc)}
        kernels = downcast = None
    # the emulator side always runs: its values are summarised so a dry run checks the whole path
    data["emulator"] = {name: {"fp8_scale": float(mx.quantise_fp8_per_tensor(x.cpu())[1]),
                               "mxfp4_downcast_scale_codes": sorted(set(
                                   mx.quantise_mxfp4_downcast(rotated[name].cpu())[1].flatten().tolist()))}
                        for name, x in inputs.items()}
    if kernels is None:
        data["verdict"] = "not run: " + data["aiter"]["reason"]
        return data
    rows = data["comparisons"]
    for name, x in inputs.items():
        rows[f"fp8_per_tensor/{name}"] = compare_fp8_per_tensor(x, aiter_fp8_per_tensor(kernels, x))
        rows[f"fp8_v_per_channel/{name}"] = compare_fp8_v(x, aiter_fp8_v_per_channel(kernels, x))
        rows[f"mxfp4_downcast/{name}"] = compare_downcast(rotated[name], aiter_downcast_mxfp4(downcast, rotated[name]))
    rows["mxfp4_v_helpers"] = compare_v_helpers(amax, y, aiter_mxfp4_v_helpers(kernels, amax, y))
    for row in rows.values():
        row["verdict"] = verdict(row)
    verdicts = {row["verdict"] for row in rows.values()}
    data["verdict"] = ("differs" if "differs" in verdicts else "bit-identical" if verdicts == {"bit-identical"}
                       else "identical up to the explained causes in each row")
    return data


def table(data: dict) -> str:
    lines = [f"# aiter quantisers vs fluxlab.mx (aiter {data.get('aiter_commit')}, shape {data['shape']})", "",
             f"Overall: **{data['verdict']}**", ""]
    if data["comparisons"]:
        lines += ["| quantiser / input | compared | mismatched | unexplained | verdict |", "|---|---:|---:|---:|---|"]
        for name, row in data["comparisons"].items():
            lines.append(f"| {name} | {row['compared']} | {row['mismatched']} | {row['causes']['unexplained']} "
                         f"| {row['verdict']} |")
    lines += ["", "Not runnable on NVIDIA (validated against their source only):"]
    lines += [f"- {name}: {why}" for name, why in data["not_runnable_on_nvidia"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aiter-root", default=".aiter_quant",
                        help="folder holding aiter/ops/triton (and AITER_COMMIT) from ROCm/aiter")
    parser.add_argument("--out", default="benchmarks/results/amd_quant", help="output folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="64 tokens, 2 heads: a dry run of the whole script")
    args = parser.parse_args(argv)
    data = run(args)
    data["command"] = "python " + " ".join([sys.argv[0] if argv is None else "benchmarks/amd_quant_gpu.py",
                                            *(sys.argv[1:] if argv is None else argv)])
    data["provenance"] = provenance()
    write_results(Path(args.out), "amd_quant_gpu", data, table(data))
    return 0 if not data["verdict"].startswith("differs") else 1


if __name__ == "__main__":
    raise SystemExit(main())
