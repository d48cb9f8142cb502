"""Each aiter MHA v4 format with exact first/last steps: how much of the picture's drift the exact ends buy back.

    python benchmarks/amd_quant_frontier.py --out benchmarks/results/cpu/amd_quant           # CPU, minutes
    python benchmarks/amd_quant_frontier.py --out /tmp/amd_quant_frontier --tiny             # a dry run
    python benchmarks/amd_quant_frontier.py --docs        # rewrite docs/amd_quant.md's table from the result

``fluxlab.frontier`` on the embedded FLUX.2 model, once per format: the candidate is the format's emulated kernel
(``emu_aiter_quant_pad128:format=F``: ``emu_aiter_quant`` on q/k/v zero-padded to head_dim 128, what running this
head_dim-32 model on MHA v4 takes), the exact kernel is aiter's bf16 kernel with its default rounding, emulated
(``emu_aiter``, ``how_v3_bf16_cvt=1``): the kernel an MI355X user would otherwise run, and the one the exact ends
of a schedule would use there. Schedules: the format everywhere and ``Schedule.exact_ends(exact, format, first=k,
last=k)`` for k = 1..3. Fidelity: final-latent rel-L2, SSIM and PSNR against the exact kernel everywhere (worst
seed), and the frontier's fidelity verdict.

**Speed is not measured here.** On a CPU every kernel is an emulation: its wall time says how fast the emulator is,
not how fast aiter's kernel is on an MI355X. The frontier's step times are therefore left out of the result; the
speed axis of the table and figure is the share of denoising steps that run the quantised kernel ((T - 2k) / T),
which orders the schedules by speed for any kernel faster than the exact one but is not a speed-up. The Pareto
set is marked on that share against the final-latent rel-L2 (``fluxlab.decide.frontier.mark_pareto`` on those two
numbers).

Writes amd_quant_frontier.json, .md and .png (provenance and command inside).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import fluxlab
from fluxlab.backends import emu_aiter_quant
from fluxlab.util import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulators import write_results  # noqa: E402

FORMATS = list(emu_aiter_quant.FORMATS)  # i8fp8, fp8, mxfp6, mxfp4, f6f4, f4f4
EXACT = "emu_aiter"  # aiter's bf16 kernel, emulated, how_v3_bf16_cvt=1 (aiter's default)
PROMPT = "a red circle at the top left on a blue background"
TEXT_TOKENS = 64  # the caption fits (byte-level tokens); the default 512 only makes the CPU run slower
SPEED_NOTE = ("Speed not measured: on a CPU the kernels are emulations and their wall time is the emulator's, not "
              "aiter's kernel's. The speed axis is the share of denoising steps on the quantised kernel.")


PADDED = "emu_aiter_quant_pad128"  # registry.register_padded("emu_aiter_quant", 128)


def candidate(fmt: str) -> str:
    return f"{PADDED}:format={fmt}"


def quantised_share(name: str, cand: str, steps: int) -> float:
    """The share of steps on the quantised kernel for a frontier row name (exact_ends_label's wording)."""
    from fluxlab.decide.frontier import exact_ends_label

    for k in range(steps):
        if name == exact_ends_label(EXACT, cand, k):
            return (steps - 2 * k) / steps
    return 0.0


def run(steps: int, seeds: list[int], formats: list[str]) -> dict:
    from fluxlab.decide.frontier import FrontierRow, mark_pareto

    fluxlab.registry.register_padded("emu_aiter_quant", 128)
    pipe = fluxlab.load_flux2("embedded", allowed={"reference", "sdpa", EXACT, PADDED})
    per_format = {}
    for fmt in formats:
        cand = candidate(fmt)
        front = fluxlab.frontier(pipe, [cand], exact=EXACT, prompt=PROMPT, seeds=seeds, steps=steps, repeats=1,
                                 locate=False, max_sequence_length=TEXT_TOKENS)
        rows = []
        for r in front.rows:
            rows.append({"name": r.name, "schedule": r.schedule,
                         "quantised_share": quantised_share(r.name, cand, steps),
                         "final_latent_rel_l2": _clean(r.final_latent_rel_l2), "ssim": _clean(r.ssim),
                         "psnr": _clean(r.psnr), "verdict": r.verdict, "error": r.error})
        # Pareto on (share of quantised steps: higher is faster, final-latent rel-L2: lower is better)
        marks = [FrontierRow(r["name"], None, r["schedule"], step_ms=1.0 - r["quantised_share"],
                             final_latent_rel_l2=_num(r["final_latent_rel_l2"]), error=r["error"]) for r in rows]
        mark_pareto(marks)
        for row, mark in zip(rows, marks):
            row["pareto"] = mark.pareto
        per_format[fmt] = {"candidate": cand, "rows": rows, "generations": front.settings["generations"]}
    return {"model": "embedded (CPU, fp32)", "prompt": PROMPT, "steps": steps, "seeds": seeds, "exact": EXACT,
            "text_tokens": TEXT_TOKENS, "formats": per_format}


def table(data: dict) -> str:
    lines = [f"Frontier per MHA v4 format: embedded model, {data['steps']} steps, seeds {data['seeds']}, exact kernel "
             f"`{data['exact']}` (aiter's bf16 kernel, how_v3_bf16_cvt=1, emulated); candidate "
             f"`{PADDED}:format=F` (emulated, zero-padded to head_dim 128). {SPEED_NOTE} "
             "**P**: Pareto set on (share, final-latent rel-L2).", "",
             "| format | schedule | quantised steps | final-latent rel-L2 | SSIM | PSNR (dB) | verdict | Pareto |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for fmt, entry in data["formats"].items():
        for r in entry["rows"]:
            if r["quantised_share"] == 0.0:
                continue  # the exact row: drift 0 by definition, the same for every format
            k = _k(r["quantised_share"], data["steps"])
            label = "everywhere" if k == 0 else f"exact {k} first + {k} last"
            lines.append(f"| {fmt} | {label} | {r['quantised_share']:.0%} | {_f(r['final_latent_rel_l2'], '.3g')} | "
                         f"{_f(r['ssim'], '.4f')} | {_f(r['psnr'], '.1f')} | {r['verdict']} | "
                         f"{'P' if r['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def figure(data: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for fmt, entry in data["formats"].items():
        rows = sorted((r for r in entry["rows"] if r["quantised_share"] > 0 and r["final_latent_rel_l2"]),
                      key=lambda r: r["quantised_share"])
        ax.plot([r["quantised_share"] for r in rows], [r["final_latent_rel_l2"] for r in rows], marker="o",
                label=fmt)
    ax.set_yscale("log")
    ax.set_xlabel("share of denoising steps on the quantised kernel (not a speed measurement)")
    ax.set_ylabel(f"final-latent rel-L2 vs {data['exact']} (worst seed)")
    ax.set_title("aiter MHA v4 formats with exact first/last steps (embedded model, emulated)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _k(share: float, steps: int) -> int:
    return round((1 - share) * steps / 2)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _f(value, spec) -> str:
    return "" if value is None else format(value, spec)


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "amd_quant.md"
RESULT = ROOT / "benchmarks" / "results" / "cpu" / "amd_quant" / "amd_quant_frontier.json"
BEGIN, END = "<!-- amd_quant_frontier table: generated by benchmarks/amd_quant_frontier.py --docs -->", \
    "<!-- /amd_quant_frontier table -->"


def update_docs(result: Path = RESULT, docs: Path = DOCS) -> None:
    """Rewrite docs/amd_quant.md's frontier table from the committed result file."""
    import json

    data = json.loads(result.read_text())
    made = data["provenance"]
    section = (f"{BEGIN}\n{table(data)}\nFrom `{result.relative_to(ROOT)}` ({made['date']}, "
               f"{made['platform'].get('device_name', 'cpu')}, torch {made['versions'].get('torch')}): "
               f"`{data['command']}`.\n{END}")
    text = docs.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    docs.write_text(head + section + tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--docs", action="store_true", help="only rewrite docs/amd_quant.md's table from the result")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--tiny", action="store_true", help="a dry run: 3 steps, one seed, formats i8fp8 and mxfp4")
    args = parser.parse_args(argv)
    if args.docs:
        update_docs()
        return 0
    if not args.out:
        parser.error("--out is required (or --docs)")
    steps, seeds = (3, [0]) if args.tiny else (args.steps, [int(s) for s in args.seeds.split(",")])
    formats = ["i8fp8", "mxfp4"] if args.tiny else args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown format(s) {unknown}; choose from {FORMATS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"provenance": provenance(), "dry_run": args.tiny,
            "command": " ".join(["python", "benchmarks/amd_quant_frontier.py",
                                 *(sys.argv[1:] if argv is None else argv)]),
            "speed": SPEED_NOTE, **run(steps, seeds, formats)}
    write_results(out, "amd_quant_frontier", data, table(data))
    figure(data, out / "amd_quant_frontier.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
