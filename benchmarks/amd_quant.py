"""What aiter MHA v4's quantised formats do, on the CPU, through the emulator ``emu_aiter_quant``:

    python benchmarks/amd_quant.py --out benchmarks/results/cpu/amd_quant            # kernel + image level
    python benchmarks/amd_quant.py --out /tmp/amd_quant --tiny                      # a dry run (seconds)

1. Kernel level, beside the figures aiter publishes: attention on "transformer-like" inputs (generated as aiter's
   ``bench_sage.py --input transformer`` describes them: RMS-normalised rows, log-normal per-channel scales, a
   shared low-rank Q/K component, V outlier channels and tokens; written here from that description) and on plain
   normal inputs, head_dim 128. Per format: rel-L2 against float64 attention, and cosine / MAE against the bf16
   kernel (``emu_aiter``, aiter's bf16 assembly kernel with its default rounding), as aiter's benchmark measures
   them (flattened output). Published: ROCm/aiter pull request 3495 (``bench_sage --kernel=all``, b=1, hq=5,
   sq=sk=75600, d=128, input=transformer, MI355X): cosine 0.996718 (fp8), 0.997669 (i8fp8), 0.968871 (mxfp4)
   against aiter's bf16 kernel. The shape here is smaller (CPU); the ordering is what is compared.
2. Image level: the embedded FLUX.2 model (head_dim 32, zero-padded to 128 for the kernel: what running it on
   MHA v4 would take) under each format and under ``emu_aiter:how_v3_bf16_cvt=0/1/2`` (the bf16 kernel's rounding
   axis: xDiT hard-codes 2, aiter's default is 1), against the float64 ``reference``: the image verdicts.

Writes amd_quant.json, amd_quant.md (provenance inside) and amd_quant_images.png (the first seed's pictures);
docs/amd_quant.md shows the table (``--docs`` rewrites it from the JSON; a test checks it).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import fluxlab
from fluxlab.backends import emu_aiter_quant
from fluxlab.util import provenance, rel_l2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulators import write_results  # noqa: E402

FORMATS = ["i8fp8", "fp8", "mxfp6", "mxfp4", "f6f4", "f4f4"]
PUBLISHED = {  # ROCm/aiter PR 3495: cosine against aiter_bf16, b=1 hq=5 sq=sk=75600 d=128 input=transformer
    "source": "https://github.com/ROCm/aiter/pull/3495 (bench_sage --kernel=all, b=1 hq=5 sq=sk=75600 d=128, "
              "input=transformer, gfx950)",
    "cosine_vs_bf16": {"fp8": 0.996718, "i8fp8": 0.997669, "mxfp4": 0.968871},
    "mae_vs_bf16": {"fp8": 8.275e-04, "i8fp8": 7.299e-04, "mxfp4": 2.528e-03},
}
BF16_MODES = {0: "RTNE", 1: "RTNA (aiter's default)", 2: "RTZ (xDiT's choice)"}
PADDED = "emu_aiter_quant_pad128"  # emu_aiter_quant on q/k/v zero-padded to head_dim 128 (registry.register_padded)


def transformer_like(seq: int, heads: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[1, seq, heads, 128] float32 q, k, v shaped like transformer activations (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    d = 128

    def rms_rows(x):
        return x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    q, k, v = (rms_rows(torch.randn(1, heads, seq, d, generator=gen)) for _ in range(3))
    def channel(spread, lo, hi):  # one log-normal scale per channel
        return torch.exp(spread * torch.randn(1, heads, 1, d, generator=gen)).clamp(lo, hi)

    q, k, v = q * channel(0.35, 0.35, 2.5), k * channel(0.35, 0.35, 2.5), v * channel(0.45, 0.25, 3.5)
    shared = torch.randn(1, heads, seq, d, generator=gen)
    q, k = q + 0.35 * shared, k + 0.35 * shared
    v[..., torch.randperm(d, generator=gen)[:d // 16]] *= 4.0
    v[:, :, torch.randperm(seq, generator=gen)[:max(1, seq // 128)]] *= 2.5
    return tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))


def normal(seq: int, heads: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, seq, heads, 128, generator=gen) for _ in range(3))


def exact_attention(q, k, v, scale):
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v.double())


def cosine(a, b) -> float:
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def kernel_level(seq: int, heads: int, seed: int) -> dict:
    scale = 128**-0.5
    rows = {}
    for name, make in (("transformer", transformer_like), ("normal", normal)):
        q, k, v = (t.to(torch.bfloat16) for t in make(seq, heads, seed))
        exact = exact_attention(q, k, v, scale)
        bf16 = fluxlab.attention(q, k, v, backend="emu_aiter", scale=scale).float()
        per_input = {"emu_aiter (bf16)": {"rel_l2_vs_fp64": rel_l2(bf16, exact), "cosine_vs_bf16": 1.0,
                                          "mae_vs_bf16": 0.0}}
        for fmt in FORMATS:
            out = emu_aiter_quant.emu_aiter_quant(q, k, v, scale=scale, format=fmt).float()
            per_input[fmt] = {"rel_l2_vs_fp64": rel_l2(out, exact), "cosine_vs_bf16": cosine(out, bf16),
                              "mae_vs_bf16": (out - bf16).abs().mean().item()}
        rows[name] = per_input
    return {"shape": [1, seq, heads, 128], "seed": seed, "rows": rows}


def image_level(steps: int, seeds: list[int], figure: Path | None = None) -> dict:
    from fluxlab.compare import compare_images

    fluxlab.registry.register_padded("emu_aiter_quant", 128)
    quant = [f"{PADDED}:format={fmt}" for fmt in FORMATS]
    rounding = [f"emu_aiter:how_v3_bf16_cvt={mode}" for mode in BF16_MODES]
    backends = ["reference", *rounding, *quant]
    pipe = fluxlab.load_flux2("embedded", allowed={"reference", "sdpa", "sdpa_math", "emu_aiter", PADDED})
    prompt = "a red circle at the top left on a blue background"
    result = compare_images(pipe, backends, prompt=prompt, steps=steps, seeds=seeds, reference="reference",
                            max_sequence_length=64)
    if figure is not None:
        result.figure(figure)
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    rows = {r.backend: {"final_latent_rel_l2_worst": clean(r.final_latent_rel_l2_worst),
                        "ssim_worst": clean(r.ssim_worst), "psnr_worst": clean(r.psnr_worst),
                        "verdict": r.verdict, "note": r.verdict_note} for r in result.rows}
    return {"model": "embedded (CPU, fp32)", "prompt": prompt, "steps": steps, "seeds": seeds,
            "spread": result.spread, "rows": rows, "markdown": result.to_markdown()}


def table(data: dict) -> str:
    k = data["kernel"]["rows"]
    lines = [f"Kernel level, shape {data['kernel']['shape']} (emulated; published: {PUBLISHED['source']})", "",
             "| format | rel-L2 vs fp64 (transformer) | cosine vs bf16 (transformer) | published cosine | "
             "rel-L2 vs fp64 (normal) | image verdict |", "|---|---:|---:|---:|---:|---|"]
    images = data.get("images", {}).get("rows", {})
    for fmt in ["emu_aiter (bf16)", *FORMATS]:
        t, n = k["transformer"][fmt], k["normal"][fmt]
        published = PUBLISHED["cosine_vs_bf16"].get(fmt)
        image = images.get(f"{PADDED}:format={fmt}", {}).get("verdict", "")
        lines.append(f"| {fmt} | {t['rel_l2_vs_fp64']:.4f} | {t['cosine_vs_bf16']:.6f} | "
                     f"{'' if published is None else f'{published:.6f}'} | {n['rel_l2_vs_fp64']:.4f} | {image} |")
    published = PUBLISHED["cosine_vs_bf16"]
    emulated = {fmt: k["transformer"][fmt]["cosine_vs_bf16"] for fmt in published}
    same = sorted(published, key=published.get) == sorted(emulated, key=emulated.get)
    lines += ["", f"Cosine vs bf16, emulated beside published: {'the same' if same else 'a different'} ordering; "
              "emulated minus published: " + ", ".join(f"{emulated[f] - published[f]:+.4f} ({f})" for f in published)
              + "."]
    if images:
        verdicts = {}
        for fmt in FORMATS:
            verdicts.setdefault(images.get(f"{PADDED}:format={fmt}", {}).get("verdict"), []).append(fmt)
        lines.append("Image verdicts on the embedded model: " + "; ".join(
            f"{verdict}: {', '.join(fmts)}" for verdict, fmts in verdicts.items()) + ".")
        lines += ["", f"Images: embedded model, {data['images']['steps']} steps, seeds {data['images']['seeds']}, "
                  "against `reference` (float64)", "", "| backend | final-latent rel-L2 (worst) | SSIM (worst) | "
                  "verdict |", "|---|---:|---:|---|"]
        for name, row in images.items():
            latent = row["final_latent_rel_l2_worst"]
            ssim = row["ssim_worst"]
            lines.append(f"| {name} | {'' if latent is None else f'{latent:.4g}'} | "
                         f"{'' if ssim is None else f'{ssim:.4f}'} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "amd_quant.md"
RESULT = ROOT / "benchmarks" / "results" / "cpu" / "amd_quant" / "amd_quant.json"
BEGIN, END = "<!-- amd_quant table: generated by benchmarks/amd_quant.py --docs -->", "<!-- /amd_quant table -->"


def docs_section(data: dict) -> str:
    """The generated part of docs/amd_quant.md: the tables, and where they came from."""
    made = data["provenance"]
    return (f"{BEGIN}\n{table(data)}\nFrom `{RESULT.relative_to(ROOT)}` ({made['date']}, "
            f"{made['platform'].get('device_name', 'cpu')}, torch {made['versions'].get('torch')}): "
            f"`{data['command']}`.\n{END}")


def update_docs(result: Path = RESULT, docs: Path = DOCS) -> None:
    """Rewrite the generated section of docs/amd_quant.md from the committed result file."""
    import json

    text = docs.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    docs.write_text(head + docs_section(json.loads(result.read_text())) + tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", action="store_true", help="only rewrite docs/amd_quant.md's table from the result")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--tiny", action="store_true", help="seq 256, 1 head, no images: a dry run")
    parser.add_argument("--no-images", action="store_true")
    args = parser.parse_args(argv)
    if args.docs:
        update_docs()
        return 0
    if not args.out:
        parser.error("--out is required (or --docs)")
    seq, heads = (256, 1) if args.tiny else (args.seq, args.heads)
    data = {"provenance": provenance(),
            "command": " ".join(["python", "benchmarks/amd_quant.py", *(sys.argv[1:] if argv is None else argv)]),
            "published": PUBLISHED, "bf16_modes": BF16_MODES, "kernel": kernel_level(seq, heads, seed=0)}
    if not (args.tiny or args.no_images):
        Path(args.out).mkdir(parents=True, exist_ok=True)
        data["images"] = image_level(args.steps, [int(s) for s in args.seeds.split(",")],
                                     figure=Path(args.out) / "amd_quant_images.png")
    write_results(Path(args.out), "amd_quant", data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
