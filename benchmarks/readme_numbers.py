"""README's measured numbers, rendered from the committed result files under benchmarks/results (never typed).

    python benchmarks/readme_numbers.py            # print every block
    python benchmarks/readme_numbers.py --check    # exit 1 and name the stale blocks
    python benchmarks/readme_numbers.py --write    # rewrite the generated blocks in place

In README.md and the docs/*.md pages a block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated -->``.
NAME is a function below registered with ``@block("NAME", "TARGET")``, TARGET the one document (README.md or a
docs/ page, relative to the repository root) that shows it: adding a number is one such function and one marker
pair in that document. ``--write`` and ``--check`` go through every target (DOCUMENTS);
tests/test_readme_numbers.py checks that each target's blocks equal this script's output.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Every document with generated blocks (filled in by @block: README first, then each docs page in order of first use);
# a block name is rendered in one place only, its TARGETS entry.
DOCUMENTS: tuple[Path, ...] = (README,)
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- generated:(?P<name>[\w-]+) -->\n(?P<body>.*?)\n?<!-- /generated -->", re.S)

BLOCKS: dict[str, Callable[[Path], str]] = {}
TARGETS: dict[str, Path] = {}


def block(name: str, target: str):
    """Register ``fn(results_dir) -> markdown`` as block ``name``, shown in ``target`` (README.md or docs/*.md)."""
    path = ROOT / target
    if not (path == README or (path.parent == ROOT / "docs" and path.suffix == ".md")):
        raise ValueError(f"block {name!r}: target {target!r} is neither README.md nor a docs/*.md page")

    def register(fn):
        global DOCUMENTS
        BLOCKS[name], TARGETS[name] = fn, path
        if path not in DOCUMENTS:
            DOCUMENTS = (*DOCUMENTS, path)
        return fn
    return register


def load(results: Path, relative: str) -> dict:
    path = results / relative
    if not path.is_file():
        raise FileNotFoundError(f"README needs benchmarks/results/{relative}, which is not there ({path}): "
                                "commit the benchmark's result file, or drop its block from README")
    return json.loads(path.read_text())


def span(values, fmt: str = "{:.2f}", sep: str = "–") -> str:
    """'0.98–1.08' (or one value when all format the same)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}{sep}{hi}"


def prose(text: str, width: int = 115) -> str:
    """Wrap a paragraph, or a '- ' bullet with its continuation indented, to README's line width."""
    indent = "  " if text.startswith("- ") else ""
    return textwrap.fill(text, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def cudnn_text(version: int | None) -> str:
    return f"cuDNN {version // 10000}.{version // 100 % 100}" if version else ""


def shape_label(shape) -> str:
    return f"S {shape[1]}, H {shape[2]}"


# --------------------------------------------------------------------------------- attention kernels (H100)

ATTENTION = "h100/attention.json"
# What a backend is, where the name alone does not say it (descriptions, not measurements).
BACKEND_NOTES = {"sdpa": "torch picks the kernel", "sage": "quantised", "aiter_triton": "experimental, on NVIDIA",
                 "sdpa_flash": "FA2"}


def _attention_rows(data: dict, dtype: str = "bf16", batch: int = 1) -> dict:
    """{backend: {shape tuple: row}} for the rows that ran at this dtype and batch."""
    table: dict = {}
    for row in data["rows"]:
        if row.get("status") == "ran" and row["dtype"] == dtype and row["shape"][0] == batch:
            table.setdefault(row["backend"], {})[tuple(row["shape"])] = row
    return table


def _default_configs(data: dict) -> list[dict]:
    """Per (shape, dtype): the default pick's row and the fastest row."""
    ran = [r for r in data["rows"] if r.get("status") == "ran"]
    configs = []
    for key in sorted({(tuple(r["shape"]), r["dtype"]) for r in ran}):
        group = [r for r in ran if (tuple(r["shape"]), r["dtype"]) == key]
        chosen = next((r for r in group if r["backend"] == data["default_pick"]), None)
        if chosen is not None:
            configs.append({"shape": key[0], "dtype": key[1], "chosen": chosen,
                            "fastest": max(group, key=lambda r: r["tflops"])})
    return configs


@block("attention-setup", "docs/results.md")
def attention_setup(results: Path) -> str:
    data = load(results, ATTENTION)
    machine, platform = data["machine"], data["machine"]["platform"]
    versions = machine["backend_versions"]
    parts = [platform["device_name"], f"torch {machine['torch']}", cudnn_text(platform.get("cudnn_version"))]
    parts += [f"{label} {versions[name]}" for name, label in (("fa4", "FA4"), ("sage", "SageAttention"))
              if versions.get(name)]
    dtypes = "/".join(sorted({r["dtype"] for r in data["rows"]}))
    batches = "/".join(str(b) for b in sorted({r["shape"][0] for r in data["rows"]}))
    folder = Path(ATTENTION).parent
    return prose(f"{', '.join(p for p in parts if p)}, {machine['date'][:10]}; `python3 benchmarks/attention.py` "
            "(= `fluxlab bench`), median of `triton.testing.do_bench`, fresh random inputs, bf16, batch 1, D 128, "
            f"non-causal; FLOPs = 4·B·H·S²·D. Full results ({dtypes}, batch {batches}): "
            f"`benchmarks/results/{folder}/attention.{{md,json,png}}`. Measured bf16 GEMM ceiling on this card: "
            f"{data['gemm_bf16_tflops']:.0f} TFLOP/s.")


@block("attention-table", "docs/results.md")
def attention_table(results: Path) -> str:
    data = load(results, ATTENTION)
    table = _attention_rows(data)
    shapes = sorted({shape for rows in table.values() for shape in rows}, key=lambda s: (s[1], s[2]))
    pick, arch = data["default_pick"], data["machine"]["platform"]["arch"]

    def mean_tflops(backend):
        return statistics.mean(row["tflops"] for row in table[backend].values())

    order = sorted(table, key=lambda b: (b != pick, -mean_tflops(b)))
    lines = ["| backend (TFLOP/s) | " + " | ".join(shape_label(s) for s in shapes)
             + f" | rel-L2 vs fp64 ({shape_label(shapes[0])}) |", "|---" * (len(shapes) + 2) + "|"]
    for backend in order:
        rows = table[backend]
        cells = [f"{rows[s]['tflops']:.0f}" if s in rows else "–" for s in shapes]
        error = rows.get(shapes[0], {}).get("rel_l2_vs_fp64")
        note = f"default on {arch}" if backend == pick else BACKEND_NOTES.get(backend)
        name = f"**{backend}**" if backend == pick else backend
        if backend == pick:
            cells = [f"**{c}**" for c in cells]
        label = f"{name} ({note})" if note else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {f'{error:.2e}' if error else '–'} |")
    return "\n".join(lines)


@block("attention-findings", "docs/results.md")
def attention_findings(results: Path) -> str:
    data = load(results, ATTENTION)
    pick, gemm = data["default_pick"], data["gemm_bf16_tflops"]
    configs = _default_configs(data)
    fastest = [c for c in configs if c["fastest"]["backend"] == pick]
    vs_fastest = [c["chosen"]["tflops"] / c["fastest"]["tflops"] for c in configs]
    dtypes = "/".join(sorted({c["dtype"] for c in configs}))
    batches = "/".join(str(b) for b in sorted({c["shape"][0] for c in configs}))
    long = [c for c in configs if c["shape"][1] >= 16384]
    long_b1 = [c for c in long if c["dtype"] == "bf16" and c["shape"][0] == 1]
    long_b1_percent = [f"{100 * c['chosen']['tflops'] / gemm:.0f}" for c in long_b1]
    taxes = [c["chosen"]["tflops"] / c["chosen"]["raw_tflops"] for c in configs if "raw_tflops" in c["chosen"]]
    bf16 = _attention_rows(data)
    flash = bf16.get("sdpa_flash", {})
    speedups = [bf16[b][s]["tflops"] / flash[s]["tflops"]
                for b in (pick, "sdpa_cudnn") if b in bf16 for s in bf16[b] if s in flash]
    lines = [
        f"- **Against SDPA's flash (FA2) kernel**, where older torch versions and frameworks that switch cuDNN off "
        f"land: `{pick}` and `sdpa_cudnn` run at {span(speedups, '{:.2f}')}× its throughput (bf16, batch 1).",
        f"- **Default pick vs fastest**: `{pick}` was the fastest at {len(fastest)} of {len(configs)} FLUX "
        f"configurations ({dtypes} × batch {batches} × {len({c['shape'][1:] for c in configs})} shapes); the default "
        f"reached {span(vs_fastest, '{:.3f}')}× the fastest. **At S ≥ 16k** it reaches "
        f"{span([100 * c['chosen']['tflops'] / gemm for c in long], '{:.0f}')} % of the measured GEMM rate (bf16 "
        f"batch 1: {' % / '.join(long_b1_percent)} %).",
        f"- **Dispatch tax at FLUX shapes**: `fluxlab.attention`'s throughput over the raw library call's, interleaved "
        f"medians, default pick: {span(taxes, '{:.3f}')}× over {len(taxes)} configurations (median "
        f"{statistics.median(taxes):.3f}); values above 1 mean the same kernel measured faster through fluxlab, "
        "which is run-to-run noise.",
    ]
    lines += _tiny_shape_tax(results, data)
    return "\n".join(prose(line) for line in lines)


def _tiny_shape_tax(results: Path, attention: dict) -> list[str]:
    """One bullet per card with a dispatch_overhead.json; backends it lacks come from the attention run."""
    lines = []
    for path in sorted(results.glob("*/dispatch_overhead.json")):
        data = json.loads(path.read_text())
        rows = [r for r in data["overhead"] if "added_us" in r]
        by_backend: dict = {}
        for row in rows:
            by_backend.setdefault(row["backend"], []).append(row["added_us"])
        shape = "×".join(str(n) for n in rows[0]["shape"])
        card = data["machine"]["platform"]["device_name"]
        plain = {b: v for b, v in by_backend.items() if not b.startswith("sdpa_")}
        forced = [x for b, v in by_backend.items() if b.startswith("sdpa_") for x in v]
        parts = [f"{span(v, '{:+.1f}')} µs for `{b}`" for b, v in plain.items()]
        text = (f"- **Dispatch tax at a tiny shape** ({shape}, {card}, "
                f"`{Path('benchmarks/results') / path.relative_to(results)}`, {data['machine']['date'][:10]}): " + ", ".join(parts))
        if forced:
            text += (f"; forced SDPA kernels ({', '.join(f'`{b}`' for b in by_backend if b.startswith('sdpa_'))}) "
                     f"{span(forced, '{:+.0f}', ' to ')} µs against the raw `with sdpa_kernel(...)` call, because "
                     "fluxlab calls the kernel's ATen op directly")
        older = [r for r in attention.get("overhead", []) if "added_us" in r and r["backend"] not in by_backend]
        if older and path.parent.name == Path(ATTENTION).parent.name:
            text += ("; not re-measured there: " + ", ".join(f"`{r['backend']}` {r['added_us']:+.1f} µs" for r in older)
                     + f" in the earlier `{Path('benchmarks/results') / ATTENTION}` run")
        lines.append(text + ". Decisions are cached per call signature; what remains is building the cache key.")
    return lines


# --------------------------------------------------------------------------------- FLUX.2 [dev] step (H100)

FLUX2_STEP = "h100/flux2_step/flux2_step.json"


@block("flux2-step", "docs/results.md")
def flux2_step(results: Path) -> str:
    data = load(results, FLUX2_STEP)
    sizes = data["sizes"]
    first = next(iter(sizes.values()))
    columns = [(r["via"], r["backend"]) for r in first["rows"]]
    auto = next(r for r in first["rows"] if r["backend"] == "auto")
    ran = "/".join(auto.get("ran", {})) or first.get("fluxlab_default", "?")

    def head(via, backend):
        if via == "diffusers":
            return f"diffusers `{backend}`"
        return f"fluxlab auto ({ran})" if backend == "auto" else f"fluxlab `{backend}`"

    model = data["model"]
    repeats = {key: sorted({len(r["ms"]) for r in size["rows"]}) for key, size in sizes.items()}
    runs = (f"{next(iter(repeats.values()))[0]} runs" if len({tuple(v) for v in repeats.values()}) == 1
            else ", ".join(f"{'/'.join(map(str, v))} runs at {key}²" for key, v in repeats.items()))
    lines = [f"**FLUX.2 [dev] step** ({model['params'] / 1e9:.1f} B random {model['dtype']} weights, one transformer "
             f"forward, batch 1, {data['environment']['card']}, median of {runs}; "
             f"`python3 benchmarks/flux2_step.py`; `{Path('benchmarks/results') / Path(FLUX2_STEP).parent}/`), "
             "ms per step, and fluxlab's automatic pick against diffusers' fastest:", "",
             "| | " + " | ".join(head(*c) for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    shares = []
    for key, size in sizes.items():
        rows = {(r["via"], r["backend"]): r for r in size["rows"]}
        cells = []
        for column in columns:
            row = rows.get(column)
            if row is None:
                cells.append("–")
            elif column[1] == "auto":
                cells.append(f"**{row['ms_median']:.1f}** ({size['target']['ratio']:.3f}×)")
            else:
                cells.append(f"{row['ms_median']:.1f}")
        lines.append(f"| {key}² (S {size['seq']}) | " + " | ".join(cells) + " |")
        auto_row = rows[("fluxlab", "auto")]
        estimates = [auto_row[k] * 100 for k in ("attention_share_vs_noop", "attention_share_kernel_alone") if k in auto_row]
        shares.append(f"{span(estimates, '{:.0f}')} % at {key}²")
    lines += ["", prose(f"In fluxlab's automatic step attention takes {' and '.join(shares)} (two estimates: the step "
                        "minus a step with a no-op kernel, and the kernel alone × calls per step); the rest is the "
                        f"{model['params'] / 1e9:.0f} B parameters' matrix products, so the kernel choice matters most "
                        "at high resolution.")]
    lines[0] = prose(lines[0])
    return "\n".join(lines)


# --------------------------------------------------------------------------------- sequence parallel (2x H200)

PARALLEL = "h200x2/parallel_flux2.json"


@block("parallel-speedup", "README.md")
def parallel_speedup(results: Path) -> str:
    data = load(results, PARALLEL)
    meta, rows = data["meta"], data["rows"]
    speedups = [r["time_single_ms"] / r["time_parallel_ms"] for r in rows]
    modes = " and ".join(dict.fromkeys(r["parallel"] for r in rows))
    backends = " and ".join(f"`{b}`" for b in dict.fromkeys(r["backend"] for r in rows))
    passed = sum(r["verdict"] == "pass" for r in rows)
    return prose(f"On {meta['world_size']}× {meta['device']} at {meta['height']}² ([{meta['size']}] size), {modes} run a "
            f"step {span(speedups)}× faster than one GPU with {backends}, and each mode's output lies within "
            f"{meta['factor']:g}× the distance between two exact kernels on one GPU ({passed} of {len(rows)} verdicts "
            f"pass; `{Path('benchmarks/results') / PARALLEL}`).")


AMD_QUANT = "cpu/amd_quant/amd_quant.json"


@block("amd-quant-images", "README.md")
def amd_quant_images(results: Path) -> str:
    """The image verdicts of the embedded model under each aiter MHA v4 format and bf16 rounding mode."""
    data = load(results, AMD_QUANT)
    images = data["images"]
    groups: dict[str, list[str]] = {}
    for name, row in images["rows"].items():
        if name == "reference":
            continue
        label = (f"`how_v3_bf16_cvt={name.rpartition('=')[2]}`" if name.startswith("emu_aiter:")
                 else f"`{name.rpartition('=')[2]}`")
        groups.setdefault(row["verdict"], []).append(label)
    verdicts = "; ".join(f"{verdict}: {', '.join(names)}" for verdict, names in groups.items())
    return prose(f"Image verdicts against float64 attention (embedded model, {images['steps']} steps, seeds "
                 f"{', '.join(map(str, images['seeds']))}; emulated on {data['provenance']['platform']['device_name']}):"
                 f" {verdicts} (`{Path('benchmarks/results') / AMD_QUANT}`).")


HOPPER_FRONTIERS = ("h100/frontier_fa3_fp8/frontier_1024.json", "h100/frontier_fa3_fp8/frontier_2048.json")
HOPPER_IMAGES = "h100/hopper_images/hopper_images.json"


@block("hopper-frontier", "docs/hopper.md")
def hopper_frontier(results: Path) -> str:
    """The compiled [dev]-size step under fa3_fp8 with exact FA4 ends, against FA4, and the embedded model's image
    verdicts under each Hopper kernel."""
    lines = []
    for relative in HOPPER_FRONTIERS:
        if not (results / relative).is_file():
            continue
        data = load(results, relative)
        dev, env = data["dev"], data["environment"]
        exact = dev["rows"][0]
        noise = max((max(r["runs_step_ms"]) - min(r["runs_step_ms"])) / r["step_ms"] for r in dev["rows"]
                    if len(r["runs_step_ms"]) > 1)
        lines += [prose(f"{dev['size']}² ({dev['image_tokens']} + {dev['text_tokens']} tokens), {dev['steps']} steps, "
                        f"regional torch.compile ({dev['compiled']}), {env['card']}, {env['date'][:10]} "
                        f"(`benchmarks/results/{relative}`; run-to-run spread of a row's rounds up to "
                        f"{100 * noise:.1f} %; two exact kernels, `{dev['spread']['kernel']}` against "
                        f"`{exact['name'].split()[0]}`, land {dev['spread']['final_latent_rel_l2']:.2g} apart):"), "",
                  "| schedule | step (ms) | × FA4 speed | final-latent rel-L2 vs FA4 | × exact spread |",
                  "|---|---:|---:|---:|---:|"]
        for row in dev["rows"]:
            lines.append(f"| {row['name']} | {row['step_ms']:.1f} | {row['speedup_vs_exact']:.3f} | "
                         f"{_cell(row.get('final_latent_rel_l2'), '{:.3g}')} | "
                         f"{_cell(row.get('drift_over_exact_spread'), '{:.2f}')} |")
        faster = [r for r in dev["rows"][1:] if r["speedup_vs_exact"] > 1 + noise]
        lines += ["", prose("Recommended: " + (", ".join(r["name"] for r in faster) if faster else
                            "none: no quantised schedule is faster per step than FA4 beyond the run-to-run spread, "
                            "so none is recommended whatever its verdict.")), ""]
    if (results / HOPPER_IMAGES).is_file():
        data = load(results, HOPPER_IMAGES)
        verdicts = "; ".join(f"`{r['backend']}` {r['verdict']}" + (" (cannot run here)" if r["error"] else "")
                             for r in data["rows"])
        lines.append(prose(f"The embedded model under each kernel (bf16, {data['steps']} steps, seeds "
                           f"{', '.join(map(str, data['seeds']))}, head_dim padded to {data['padded_to']}; "
                           f"`benchmarks/results/{HOPPER_IMAGES}`, images beside it): {verdicts}."))
    return "\n".join(lines).rstrip()


AMD_QUANT_DEV = "h100/amd_quant_dev/amd_quant_dev.json"


@block("amd-quant-dev", "docs/amd_quant.md")
def amd_quant_dev(results: Path) -> str:
    """Each MHA v4 format's (emulated) final-latent drift on the [dev]-size random-weight model, on a GPU."""
    data = load(results, AMD_QUANT_DEV)
    env = data["environment"]
    lines = [prose(f"{env['card']}, {env['date'][:10]}, {data['size']}², {data['steps']} steps, random bf16 weights "
                   f"(`benchmarks/results/{AMD_QUANT_DEV}`; a row the run's time budget left out says so):"), "",
             "| kernel | kind | final-latent rel-L2 vs the exact kernel | × exact spread |", "|---|---|---:|---:|"]
    for row in data["rows"]:
        measured = row.get("final_latent_rel_l2")
        lines.append(f"| `{row['name']}` | {row['kind']} | "
                     + (f"{measured:.3g} | {row['over_exact_spread']:.2f} |" if measured is not None
                        else f"not measured ({row.get('skipped') or row.get('error')}) | – |"))
    return "\n".join(lines)


@block("parallel-table", "docs/parallel.md")
def parallel_table(results: Path) -> str:
    data = load(results, PARALLEL)
    meta = data["meta"]
    lines = [f"| mode | backend | rel-L2 vs 1 rank | own error vs float64 | tolerance | 1 GPU ms | {meta['world_size']} "
             "GPUs ms | speed-up | verdict |", "|---" * 9 + "|"]
    for r in data["rows"]:
        lines.append(f"| {r['parallel']} | {r['backend']} | {r['rel_l2']:.2e} | {r['own_error']:.2e} | "
                     f"{r['tolerance']:.2e} | {r['time_single_ms']:.1f} | {r['time_parallel_ms']:.1f} | "
                     f"{r['time_single_ms'] / r['time_parallel_ms']:.2f}× | {r['verdict']} |")
    if "peak_memory_gib" in data:
        lines += ["", f"Peak memory {data['peak_memory_gib']:.1f} GiB per GPU (`{Path('benchmarks/results') / PARALLEL}`)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- equivalence on the H100

COMPARE = ("h100/compare/flux/results.json", "h100/compare/flux_seeds/results.json")


@block("compare-h100", "docs/compare.md")
def compare_h100(results: Path) -> str:
    rows = []
    for relative in COMPARE:
        for section in load(results, relative)["sections"].values():
            rows += [r for r in section["rows"] if isinstance(r.get("rel_l2_ratio"), float)]
    rounded = [r for r in rows if "lowp_reduction=1" in r["backend"]]
    exact = [r for r in rows if not r["quantised"] and r not in rounded]
    sage = [r for r in rows if r["backend"] == "sage" and r["dtype"] == "bfloat16"]

    def verdicts(group):
        counts = {v: sum(r["verdict"] == v for r in group) for v in ("pass", "warn", "fail")}
        return ", ".join(f"{n} {v}" for v, n in counts.items() if n)

    def sage_on(kind):
        return span([r["rel_l2"] for r in sage if r["input"].startswith(kind)], "{:.4f}")

    text = (f"On the H100 (`benchmarks/results/h100/compare/`), {len(exact)} cases of "
            f"{len({r['backend'] for r in exact})} exact kernels landed at {span([r['rel_l2_ratio'] for r in exact])}× "
            f"(rel-L2) and {span([r['max_abs_ratio'] for r in exact])}× (max-abs) the yardstick ({verdicts(exact)})")
    if rounded:
        text += (f"; torch's math kernel with scores rounded to the input dtype (`sdpa_math:lowp_reduction=1`) landed at "
                 f"{span([r['rel_l2_ratio'] for r in rounded], '{:.1f}')}× ({verdicts(rounded)}; the fails are the "
                 "outlier-channel inputs)" if all("outliers" in r["input"] for r in rounded if r["verdict"] == "fail")
                 else f"; `sdpa_math:lowp_reduction=1` landed at {span([r['rel_l2_ratio'] for r in rounded], '{:.1f}')}× "
                 f"({verdicts(rounded)})")
    if sage:
        text += (f". Sage (bf16): rel-L2 {sage_on('normal')} on normal inputs, {sage_on('outlier')} with outlier "
                 f"channels, {sage_on('peaky')} on peaky attention")
    return prose(text + ".")


# --------------------------------------------------------------------------------- the embedded model

TRAIN_LOG = ROOT / "training" / "embedded_train_log.txt"


def _log_match(text: str, pattern: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, text)
    if not found:
        raise ValueError(f"{TRAIN_LOG.relative_to(ROOT)} has no line matching {pattern!r}: was the log format changed?")
    return found


@block("embedded-quality", "docs/guide.md")
def embedded_quality(results: Path, log: Path = TRAIN_LOG) -> str:
    text = log.read_text()
    (captions, test_acc, test_shapes), = _log_match(
        text, r"the tests' (\d+) held-out captions.*?: ([\d.]+)% of (\d+) shapes")
    heldout = _log_match(text, r"held-out accuracy,\s+8 steps, text length \d+: ([\d.]+)% of (\d+) shapes in (\d+) scenes")
    (keys, uniform, trained, random_init), = _log_match(
        text, r"mean attention entropy \(nats, (\d+) keys, uniform = ([\d.]+)\): trained ([\d.]+), random init ([\d.]+)")
    shapes, scenes = heldout[0][1], heldout[0][2]
    lines = [
        f"Quality of the shipped run (`{log.relative_to(ROOT)}`; `tests/test_embedded_model.py` re-measures the "
        "tests' captions on the CPU against a floor):",
        f"- held-out captions — (colour, shape, position) combinations never seen in training — show the named colour "
        f"at the named position for **{float(test_acc):.1f} %** of {test_shapes} shapes in the tests' {captions} "
        f"captions (8 steps), **{span([float(h[0]) for h in heldout], '{:.1f}')} %** of {shapes} shapes in {scenes} "
        "held-out scenes (8 steps) measured after training;",
        f"- attention is peakier than random init: mean attention entropy **{float(trained):.2f} nats** trained vs "
        f"**{float(random_init):.2f}** for a random-init transformer of the same config ({keys} keys, uniform = "
        f"{float(uniform):.2f}).",
    ]
    return "\n".join(prose(line) for line in lines)


IMAGE_BANDS = "cpu/image_bands.json"  # benchmarks/image_bands.py


@block("image-bands", "docs/verdicts.md")
def image_bands(results: Path) -> str:
    """The image bands (fluxlab.compare.bands) and the kernels judged by them, from the committed band file."""
    from fluxlab.compare.bands import EXACT, LOW_PRECISION, METRIC_TEXT, METRICS, ImageBand

    data = load(results, IMAGE_BANDS)
    band = ImageBand.load(results / IMAGE_BANDS)
    s = data["setting"]
    made = f"{data['provenance']['date'][:10]}, commit {data['provenance']['git']['commit'][:12]}"
    lines = [prose(f"Measured by `{command_text(data['command'])}` ({made}) on `{s['model']}` "
                   f"({s['dtype']}, {s['device']}, {s['steps']} steps, {s['height']}x{s['width']}, "
                   f"{s['max_sequence_length']} text tokens), {len(data['prompts'])} prompts x {len(data['seeds'])} "
                   f"seeds; written to {results_path(IMAGE_BANDS)}:"), "",
             "| class | legitimate changes | " + " | ".join(METRIC_TEXT[m] for m in METRICS)
             + " | worst cell / median cell |", "|---|---|" + "---|" * len(METRICS) + "---|"]
    for kind in (EXACT, LOW_PRECISION):
        changes = "; ".join(f"`{spec.replace('#rerun', '')}`{' rerun' if '#rerun' in spec else ''}"
                            for spec in data["variants"][kind]) + ("; against the exact kernels"
                                                                   if kind == LOW_PRECISION else "")
        lines.append(f"| {kind.replace('_', ' ')} | {changes} | "
                     + " | ".join(f"{band.band(kind, m):.2g}" for m in METRICS)
                     + f" | {data['headroom'][kind]:.2f} |")
    rows = next(iter(data["judged"].values()))
    seeds = data["judge_seeds"]
    lines += ["", prose(f"Kernels that are not part of the band, judged by it (first prompt, "
                        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; "
                        f"`{command_text(data['judge_command'])}`):"), "",
              "| kernel | what | final-latent rel-L2 | SSIM | PSNR dB | verdict |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if row["what"] == "the reference":
            continue
        away = max(float(v) for v in re.findall(r"= ([0-9.e+-]+|inf) bands \(band", row["note"]))
        lines.append(f"| `{name}` | {row['what']} | {row['final_latent_rel_l2_worst']:.2e} | {row['ssim_worst']:.5f} "
                     f"| {row['psnr_worst']:.1f} | {row['verdict']} ({away:.3g} bands) |")
    return "\n".join(lines)


EMULATORS = "cpu/emulators.json"  # benchmarks/emulators.py


@block("gate-thresholds", "docs/compare.md")
def gate_thresholds(results: Path) -> str:
    """The gate's limits (fluxlab.compare.tolerances.GATE_RULE) with the measurement each came from."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gate_thresholds import GATE_FILES, GATE_MARGINS, derive_gate_rule, small_input_bias_z

    files = [name for name in GATE_FILES if (results / name).is_file()]
    data = [load(results, name) for name in files]
    rule = derive_gate_rule(data)
    worst = lambda key: max(d["exact_summary"][key] for d in data)  # noqa: E731
    sources = ", ".join(f"`benchmarks/results/{name}`" for name in files)
    runs = sum(d["exact_summary"]["runs"] for d in data)
    kernels = sorted({k for d in data for k in d["exact_summary"]["kernels"]})
    clear = sum(d["exact_summary"]["clear_rows_by_margin"][f"{rule.flip_margin_eps:g}"] for d in data)
    lines = [prose(f"The gate's limits, derived by `derive_gate_rule` of `benchmarks/gate_thresholds.py` from "
                   f"{sources} ({runs} runs of {len(kernels)} exact kernels and reduction orders; `python "
                   "benchmarks/gate_thresholds.py [--device cuda]`):"), "",
             "| rule | limit | worst exact kernel measured | margin |", "|---|---|---|---|",
             f"| bias: \\|mean error\\| / RMS (signed, and toward zero) | ≤ max({rule.bias_floor:g}, "
             f"{rule.bias_z:g} / √rows) | {worst('max_abs_bias_large'):.3f} on inputs of ≥ "
             f"{data[0]['large_rows']} rows; {max(map(small_input_bias_z, data)):.2f} / √rows on fewer | "
             f"× {GATE_MARGINS['bias']:g} |",
             f"| worst head / batch element / text-or-image segment | pass ≤ {rule.slice_pass:g}× its yardstick, "
             f"warn ≤ {rule.slice_warn:g}× | {worst('max_slice_ratio'):.2f}× | × {GATE_MARGINS['slice_pass']:g}, "
             f"warn × {GATE_MARGINS['slice_warn']:g} |",
             f"| one slice of a quantised kernel | pass ≤ rel-L2 {rule.quantised_slice_pass:g}, warn ≤ "
             f"{rule.quantised_slice_warn:g} | – | its budget × the exact slice limit / the exact whole-tensor limit |",
             f"| top-channel flips of clear rows (lead > {rule.flip_margin_eps:g} eps · max\\|row\\|) | pass ≤ "
             f"{rule.flip_pass:.2g}, warn ≤ {rule.flip_warn:.2g} | {worst('max_flip_rate'):.2g} "
             f"({sum(d['exact_summary']['flipped_rows_by_margin'][f'{rule.flip_margin_eps:g}'] for d in data)} of "
             f"{clear} clear rows) | × {GATE_MARGINS['flip_pass']:g} / × {GATE_MARGINS['flip_warn']:g} of "
             "max(rate, one row of the largest input) |"]
    return "\n".join(lines)


@block("emulators-cpu", "docs/emulators.md")
def emulators_cpu(results: Path) -> str:
    data = load(results, EMULATORS)
    cost, shape = data["cost"], data["cost"]["shape"]
    emulators = [name for name in cost["median_ms"] if name.startswith("emu_")]
    lines = [prose(f"Measured by `benchmarks/emulators.py` on this CPU (`benchmarks/results/{EMULATORS}`). Cost at S "
                   f"{shape['seq']}, {shape['heads']} heads, float32 inputs, median of {cost['rounds']} interleaved rounds "
                   f"on a shared 2-core machine, as a multiple of the float32 kernel each emulator wraps (its own loop "
                   "with no rounding point, `flash_float32` in benchmarks/emulators.py; target ≤ "
                   f"{cost['target_x_wrapped']:g}×), of "
                   "torch's float32 math kernel and of its float32 SDPA on the same inputs:"), "",
             "| emulator | wraps | × wrapped kernel | × float32 math | × float32 SDPA |", "|---|---|---|---|---|"]
    lines += [f"| `{name}` | `{cost['wraps'][name]}` | {cost['x_wrapped'][name]:.1f} ({met(cost['met'][name])}) | "
              f"{cost['x_math_float32'][name]:.1f} | {cost['x_sdpa_float32'][name]:.1f} |" for name in emulators]
    wrapped = list(dict.fromkeys(cost["wraps"].values()))
    lines += ["", prose("The wrapped kernels themselves: " + ", ".join(
        f"`{w}` {cost['x_math_float32'][w]:.1f}× float32 math" for w in wrapped) + ".")]
    rows = [r for r in data["attention"]["rows"] if r["cvt_probs"] == 1]
    dists = list(dict.fromkeys(r["distribution"] for r in rows))
    lines += ["", f"aiter's `how_v3_bf16_cvt`, emulated (`emu_aiter`, P and O converted by the mode), rel-L2 vs "
              f"float64 at S {shape['seq']}, bf16 inputs:", "",
              "| how_v3_bf16_cvt | " + " | ".join(dists) + " |", "|---|" + "---|" * len(dists)]
    for mode, label in ((0, "0 RTNE"), (1, "1 RTNA (aiter default)"), (2, "2 RTZ")):
        values = {r["distribution"]: r["rel_l2_vs_fp64"] for r in rows if r["how_v3_bf16_cvt"] == mode}
        lines.append(f"| {label} | " + " | ".join(f"{values[d]:.2e}" for d in dists) + " |")
    images = data.get("images")
    if images:
        settings = images["settings"]
        lines += ["", f"The embedded model ({settings.get('height')}x{settings.get('width')}, {settings.get('steps')} "
                  f"steps, seed {settings.get('seed')}) against float64 attention:", "",
                  "| backend | PSNR dB | SSIM | final latent rel-L2 |", "|---|---|---|---|"]
        lines += [f"| `{r['backend']}` | {r['psnr_db']:.1f} | {r['ssim']:.4f} | {r['final_latent_rel_l2']:.2e} |"
                  for r in images["rows"] if r["backend"] != images["reference"] and r["error"] is None]
    for part, source in data.get("sources", {}).items():  # parts the last run kept from an earlier one
        commit = source["provenance"]["git"]["commit"][:12]
        lines += ["", prose(f"The {part} numbers are from an earlier run (`{command_text(source['command'])}`, "
                            f"{source['provenance']['date'][:10]}, commit {commit}); the emulators were made faster "
                            "since, with outputs bit-identical to that version's on the tests' inputs "
                            "(`tests/test_emulators.py`).")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- H200 (issue 12, 13, 14 runs)

COMPILE = "h200/flux2_compile/flux2_compile.json"  # benchmarks/flux2_compile.py
OFFLOAD = "h200/flux2_offload/flux2_offload.json"  # benchmarks/flux2_offload.py
DECIDE = "h200/decide/decide_gpu.json"  # benchmarks/decide_gpu.py
DECIDE_MD = "h200/decide/decide_gpu.md"  # its tables: the step-level confirmation per size
EMULATORS_GPU = "h200/emulators_gpu.json"  # benchmarks/emulators_gpu.py
GIB = 2 ** 30


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def results_path(relative: str) -> str:
    return f"`{Path('benchmarks/results') / relative}`"


def command_text(command: str) -> str:
    """The benchmark's command line without its machine-specific ``--out`` folder."""
    return re.sub(r"\s+--out\s+\S+", "", command)


def environment_text(env: dict) -> str:
    """'NVIDIA H200, torch 2.11.0+cu130, diffusers 0.42.1, 2026-11-29; `command`' from a result's environment."""
    parts = [env["card"], f"torch {env['torch']}", f"diffusers {env['diffusers']}"]
    versions = env.get("backend_versions", {})
    if versions.get("fa4"):
        parts.append(f"FA4 {versions['fa4']}")
    return f"{', '.join(parts)}, {env['date'][:10]}; `{command_text(env['command'])}`"


def compile_timing(data: dict) -> str:
    if "rounds" in data:
        return (f"median of {data['rounds'] * data['calls_per_round']} calls timed in {data['rounds']} interleaved "
                f"rounds (every row once per round) after {data['warmup']} warm-up calls")
    return f"median of {data['repeats']} after {data['warmup']} warm-up calls"


@block("flux2-compile", "docs/compile.md")
def flux2_compile(results: Path) -> str:
    data = load(results, COMPILE)
    sizes, model = data["sizes"], data["model"]
    columns = [r["row"] for r in next(iter(sizes.values()))["rows"]]

    def head(row):
        via, backend, mode = row["via"], row["backend"], row["mode"]
        kernel = f" ({'/'.join(row['ran'])})" if backend == "auto" and row.get("ran") else ""
        name = f"diffusers `{backend}`" if via == "diffusers" else (
            f"fluxlab auto{kernel}" if backend == "auto" else f"fluxlab `{backend}`")
        return f"{name} {mode}"

    first_rows = {r["row"]: r for r in next(iter(sizes.values()))["rows"]}
    header = [head(first_rows[c]) for c in columns] + ["fluxlab / diffusers compiled", "fluxlab compiled / eager"]
    lines = [prose(f"[dev]-size step ({model['params'] / 1e9:.1f} B random {model['dtype']} weights, one transformer "
                   f"forward, batch 1), ms per step, {compile_timing(data)}; "
                   f"compiled = `{data['compile']['call']}`; {environment_text(data['environment'])} "
                   f"({results_path(Path(COMPILE).parent)}):"), "",
             "| | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for key, size in sizes.items():
        rows = {r["row"]: r for r in size["rows"]}
        t = size["targets"]
        cells = [f"{rows[c]['ms_median']:.1f}" if c in rows else "–" for c in columns]
        cells += [f"{t['fluxlab_compiled_vs_diffusers_compiled']:.3f}× (target ≤ {t['target_vs_diffusers']:.2f}: "
                  f"{met(t['met_vs_diffusers'])})",
                  f"{t['fluxlab_compiled_vs_fluxlab_eager']:.3f}× (target ≤ {t['target_vs_eager']:.2f}: "
                  f"{met(t['met_vs_eager'])})"]
        lines.append(f"| {key}² (S {size['seq']}) | " + " | ".join(cells) + " |")
    compiled = [r for size in sizes.values() for r in size["rows"] if r["mode"] == "compiled"]
    breaks = sorted({r["graph_breaks"] for r in compiled})
    graphs = sorted({r["graphs_compiled"] for r in compiled if r["graphs_compiled"]})
    reused = [head(r) for r in compiled if not r["graphs_compiled"]]
    text = (f"Graph breaks: {'/'.join(map(str, breaks))} in every compiled row; graphs compiled: "
            f"{'/'.join(map(str, graphs))} per compiled model")
    if reused:
        text += (f" ({', '.join(dict.fromkeys(reused))} reused the graphs already compiled: fluxlab's kernel is "
                 "chosen inside its op, so switching it does not recompile)")
    lines += ["", prose(text + "." + compile_profile_text(sizes))]
    return "\n".join(lines)


def _attention_ms(profile: dict) -> float:
    """GPU time of the attention kernel among a profile's heaviest kernels (flash / cuDNN SDPA, not inductor's)."""
    return sum(k["ms"] for k in profile["top"]
               if not k["kernel"].startswith("triton") and any(w in k["kernel"] for w in ("flash", "sdpa", "attention")))


def compile_profile_text(sizes: dict) -> str:
    """What one profiled step per compiled row says: how busy the GPU was, the op boundary's cost in GPU time
    (fluxlab `sdpa` runs diffusers' kernel), and attention's share of the step (the part compile leaves alone)."""
    parts = []
    for key, size in sizes.items():
        profiles = size.get("profiles") or {}
        native, routed = profiles.get("diffusers_native_compiled"), profiles.get("fluxlab_sdpa_compiled")
        auto = profiles.get("fluxlab_auto_compiled")
        if not (native and routed and auto):
            continue
        busy = [p["gpu_busy"] for p in profiles.values()]
        parts.append(f"at {key}² the GPU was busy {min(busy):.1%}–{max(busy):.1%} of each profiled compiled step; "
                     f"fluxlab `sdpa` compiled spent {routed['gpu_kernel_ms'] - native['gpu_kernel_ms']:+.1f} ms of "
                     f"GPU time against diffusers compiled ({routed['gpu_kernel_ms']:.1f} vs "
                     f"{native['gpu_kernel_ms']:.1f} ms, same attention kernel), and attention was "
                     f"{_attention_ms(auto) / auto['gpu_kernel_ms']:.0%} of fluxlab's compiled step")
    if not parts:
        return ""
    return " One profiled step per compiled row (`--profile`): " + "; ".join(parts) + "."


def made_on(data: dict) -> str:
    """', 2026-11-29' from a result's provenance; '' for a result written before the script recorded it."""
    date = (data.get("provenance") or {}).get("date")
    return f", {date[:10]}" if date else ""


BOUNDARY = "h200/compile_boundary/boundary.json"  # benchmarks/compile_boundary.py


@block("compile-boundary", "docs/compile.md")
def compile_boundary(results: Path) -> str:
    """One block of each kind compiled alone: alignment of fluxlab's op output, per-call ratio, CUDA graphs."""
    data = load(results, BOUNDARY)
    blocks, graphs = data["blocks"], data.get("cudagraphs") or {}
    unaligned = sorted({op for b in blocks.values() for v in ("diffusers_native", "fluxlab_sdpa")
                        for op in b[v]["unaligned_outputs"]})
    ratios = ", ".join(f"{name} {b['fluxlab_sdpa_vs_diffusers_native']:.3f}×" for name, b in blocks.items())
    text = (f"One block of each kind compiled alone (`{data['compile']}`, {data['size']}², "
            f"{environment_text(data['environment'])}; {results_path(Path(BOUNDARY).parent)}): inductor's code "
            f"{'treats no op output as unaligned' if not unaligned else 'treats as unaligned: ' + ', '.join(unaligned)}"
            f"; per synchronised block call, fluxlab `sdpa` / diffusers `native` = {ratios} (the op's host-side "
            "cost, which a whole step hides while the GPU is busy).")
    if "switch_changed_output" in graphs:
        text += (f" `mode=\"reduce-overhead\"` on one block: {graphs['cudagraph_skips']} CUDA-graph skips, and a "
                 f"backend switch after capture {'changed' if graphs['switch_changed_output'] else 'did NOT change'} "
                 f"the output ({graphs['reduce_overhead_ms_median']:.2f} vs {graphs['default_ms_median']:.2f} ms "
                 "per call without CUDA graphs).")
    return prose(text)


@block("flux2-offload", "docs/guide.md")
def flux2_offload(results: Path) -> str:
    data = load(results, OFFLOAD)
    card, refused, auto, gen = data["card"], data["without_offload"], data["auto"], data["generation"]
    components = auto["estimate"]["components"]
    encoder = data["text_encoder"]
    versions = data["versions"]
    script = data["command"].split()[0]
    steps = gen["timings"]["steps_s"]
    lines = [
        f"- **Setup**: FLUX.2 [dev]'s full config, random {auto['estimate']['dtype']} weights: a "
        f"{components['transformer']['elements'] / 1e9:.1f} B transformer and a "
        f"{components['text_encoder']['elements'] / 1e9:.1f} B text encoder ({encoder['layers']} of {encoder['of']} "
        f"layers), {data['size']['height']}x{data['size']['width']}, {data['steps']} steps, on an {card['name']} capped to "
        f"{card['cap_bytes'] / GIB:.2f} GiB (`set_per_process_memory_fraction({card['fraction']:.3f})`); torch "
        f"{versions['torch']}, diffusers {versions['diffusers']}, transformers {versions['transformers']}"
        f"{made_on(data)}; `python3 benchmarks/{script}` ({results_path(Path(OFFLOAD).parent)}).",
        f"- **`offload=None`**: {'refused before loading' if refused['refused'] else '**not refused**'} in "
        f"{refused['seconds']:.1f} s with {refused['gpu_bytes_allocated_by_the_call']} bytes allocated on the GPU: "
        f"estimate {refused['plan']['peak_estimate_bytes'] / GIB:.2f} GiB against "
        f"{refused['plan']['budget_bytes'] / GIB:.2f} GiB free.",
        f"- **`offload=\"{auto['requested']}\"`** chose `\"{auto['mode']}\"` (estimate "
        f"{auto['peak_estimate_bytes'] / GIB:.2f} GiB); the generation's peak was {gen['peak_gpu_bytes'] / GIB:.2f} GiB "
        f"(`{gen['memory']['measured_by'].split(',')[0]}`), {gen['peak_over_estimate']:.3f}× the estimate, "
        f"{'within' if gen['within_cap'] else '**over**'} the cap; {gen['timings']['generate_s']:.1f} s for the "
        f"pipeline call (prompt encoding and VAE decode included; denoising steps {', '.join(f'{s:.1f}' for s in steps)} s).",
    ]
    return "\n".join(prose(line) for line in lines)


SAME_KERNELS = " (the same kernel on every layer as the automatic pick)"


@block("decide-gpu", "docs/decide.md")
def decide_gpu(results: Path) -> str:
    data = load(results, DECIDE)
    sweep = data["sweep"]
    lines = [f"Measured on {environment_text(data['environment'])} ({results_path(DECIDE)}, plan in "
             f"`autotune_plan_<size>.json` beside it):"]
    for tune in data["autotune"]:
        choices = ", ".join(f"`{k}` ×{n}" for k, n in sorted(tune["choices"].items(), key=lambda kv: -kv[1]))
        reasons = sorted(set(tune["reasons"].values()))
        others = ", ".join(f"`{k}`" for k in tune["reasons"])
        if "kept" not in tune:  # results from before autotune's step-level confirmation
            lines.append(f"- **Autotune** among exact kernels ({', '.join(f'`{c}`' for c in tune['candidates'])}) on "
                         f"the [dev]-size transformer at {tune['size']}², tuned in {tune['tune_s']:.1f} s: layers got "
                         f"{choices}; {others}: {'; '.join(reasons)}. A step with the plan takes "
                         f"{tune['plan_median_ms']:.1f} ms against {tune['automatic_median_ms']:.1f} ms for the "
                         f"automatic pick (`{'/'.join(tune['automatic_pick'])}`): {tune['plan_over_automatic']:.3f}×.")
            continue
        isolated = ", ".join(f"`{k}` ×{n}" for k, n in sorted(tune["per_layer_choices"].items(),
                                                                key=lambda kv: -kv[1]))
        low, high = tune["paired_ratio_spread"]
        lines.append(f"- **Autotune** among exact kernels ({', '.join(f'`{c}`' for c in tune['candidates'])}) on the "
                     f"[dev]-size transformer at {tune['size']}², tuned in {tune['tune_s']:.1f} s + "
                     f"{tune['confirm_s']:.1f} s of step-level check: per layer in isolation {isolated}; on the whole "
                     f"step the **{tune['kept']}** was kept ({choices}; table in {results_path(DECIDE_MD)}). "
                     f"Measured afresh against the automatic pick (`{'/'.join(tune['automatic_pick'])}`) in "
                     f"{tune['rounds']} rounds timing both, order alternating: {tune['plan_median_ms']:.1f} ms against "
                     f"{tune['automatic_median_ms']:.1f} ms (medians), {tune['plan_over_automatic']:.4f}× (target "
                     f"≤ 1.00×: {met(tune['plan_over_automatic'] <= 1.0)}); per-round "
                     f"ratio median {tune['paired_ratio_median']:.4f}× [{low:.4f}, {high:.4f}]"
                     f"{SAME_KERNELS if tune['plan_runs_the_automatic_kernels'] else ''}.")
    parts = sweep["parts_s"]
    share = 100 * parts[sweep["dominant"]] / sweep["wall_s"]
    verdicts = {v: sum(x == v for x in sweep["verdicts"].values()) for v in dict.fromkeys(sweep["verdicts"].values())}
    lines.append(f"- **Full attention sweep** (`compare_attention` defaults, {len(sweep['backends'])} backends × "
                 f"{len(sweep['inputs'])} inputs = {sweep['rows']} rows): {sweep['wall_s']:.1f} s wall, target < "
                 f"{sweep['target_s']} s: {met(sweep['wall_s'] < sweep['target_s'])}; {sweep['dominant']} dominate "
                 f"({share:.0f} %); verdicts: {', '.join(f'{n} {v}' for v, n in verdicts.items())}.")
    return "\n".join(prose(line) for line in lines)


FRONTIER = "h200/frontier/frontier_gpu.json"  # benchmarks/frontier_gpu.py


def _cell(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _params(count: int) -> str:
    return f"{count / 1e9:.1f} B" if count >= 1e9 else f"{count / 1e6:.2f} M"


@block("decide-frontier", "docs/decide.md")
def decide_frontier(results: Path) -> str:
    """sage with exact fa4 ends: [dev]-size step time, fidelity from both models; 'not yet measured' until run."""
    if not (results / FRONTIER).is_file():
        return prose(f"**Frontier on a GPU: not yet measured.** `python3 benchmarks/frontier_gpu.py` writes "
                     f"{results_path(FRONTIER)}, from which this block is generated: step time from the [dev]-size "
                     "transformer at 1024², fidelity from the embedded model's images and from the [dev]-size "
                     "model's final latents, Pareto set marked.")
    data = load(results, FRONTIER)
    dev, env, kernels = data["dev"], data["environment"], data["kernels"]
    embedded = {r["k"]: r for r in data.get("embedded_vs_dev_time", [])}
    spread = dev.get("spread") or {}
    check = dev.get("timing_model_check") or {}
    head = ("**DRY RUN** (CPU, tiny config, stand-in kernels; not a measurement): " if data["dry_run"] else "")
    head += "" if data["complete"] else "**incomplete run**: "
    model = dev["model"]
    fast = data["embedded"].get("fast")
    padding = (f"; `{fast}`: the embedded model's head_dim 32 zero-padded for a kernel that does not take it"
               if fast and fast != kernels["fast"] else "")
    lines = [prose(f"{head}Frontier of `{kernels['fast']}` with exact `{kernels['exact']}` ends "
                   f"(`Schedule.exact_ends`, k first and last steps), measured on "
                   f"{environment_text({**env, 'card': env.get('card', 'CPU')})} "
                   f"({results_path(FRONTIER)}). **Step time**: the [dev]-size transformer ({_params(model['params'])} "
                   f"random bf16 weights) at {dev['size']}² ({dev['text_tokens']} + {dev['image_tokens']} tokens), the "
                   f"real sequence of {dev['steps']} transformer calls per schedule, mean per call, median of "
                   f"{dev['rounds_done']} interleaved round(s); the per-kernel times predict every schedule's mean "
                   f"within {_cell(check.get('max_abs_prediction_error'), '{:.1%}')}. **Fidelity ([dev])**: final "
                   f"latents of that Euler loop against `{kernels['exact']}` everywhere — random weights, no "
                   f"picture; two exact kernels (`{spread.get('kernel')}` vs `{kernels['exact']}`) already differ by "
                   f"{_cell(spread.get('final_latent_rel_l2'), '{:.3g}')}. **Fidelity (embedded)**: the trained "
                   f"embedded model's images on the same machine through `fluxlab.frontier` (worst of seeds "
                   f"{data['embedded'].get('seeds')}, {data['embedded'].get('steps')} steps{padding}). **P**: Pareto "
                   "set of [dev] step time against that column's rel-L2."),
             "",
             "| schedule | [dev] step (ms) | speed-up vs exact | [dev] final-latent rel-L2 | P | embedded final-latent "
             "rel-L2 | SSIM | PSNR (dB) | verdict | P |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in dev["rows"]:
        emb = embedded.get(row["k"], {})
        lines.append(f"| {row['name']} | {_cell(row.get('step_ms'), '{:.1f}')} | "
                     f"{_cell(row.get('speedup_vs_exact'), '{:.3f}×')} | {_cell(row.get('final_latent_rel_l2'), '{:.3g}')} "
                     f"| {'P' if row.get('pareto') else ''} | {_cell(emb.get('final_latent_rel_l2'), '{:.3g}')} | "
                     f"{_cell(emb.get('ssim'), '{:.4f}')} | {_cell(emb.get('psnr'), '{:.1f}')} | "
                     f"{emb.get('verdict', '–')} | {'P' if emb.get('pareto') else ''} |")
    if "frontier" not in data.get("embedded", {}):
        lines += ["", prose(f"Embedded model not measured: {data.get('embedded', {}).get('error', 'run cut short')}.")]
    figure = (results / FRONTIER).with_suffix(".png")
    if figure.is_file():
        lines += ["", f"![frontier: step time vs fidelity]({Path('benchmarks/results') / FRONTIER[:-len('json')]}png)"]
    return "\n".join(lines)


_CHECK = re.compile(r"rel_l2\((?P<emu>[^,]+), (?P<other>[^)]+)\)")


def _emulator_checks(case: dict) -> dict:
    """The case's checks sorted into: sage, own error (emu_bf16 vs fp64), distance, stretch; each (emu, value, ok, bound)."""
    groups: dict = {"sage": [], "own": [], "distance": [], "stretch": []}
    for check in case["checks"]:
        m = _CHECK.match(check["check"])
        bound = float(re.sub(r"[^\d.e+-]", "", check["target"].split("+-")[-1]))
        kind = ("stretch" if "(stretch)" in check["check"] else "distance" if "pair distance" in check["check"]
                else "sage" if m["other"] == "sage" else "own")
        groups[kind].append((m["emu"], check["value"], check["ok"], bound))
    return groups


def _listed(items, fmt="{:.3f}") -> str:
    """'0.132, `pv_chunk=64` 0.142 (not met)': the default emulator first, then its variants by option."""
    parts = []
    for emu, value, ok, _ in items:
        option = emu.partition(":")[2]
        parts.append((f"`{option}` " if option else "") + fmt.format(value) + ("" if ok else " (not met)"))
    return ", ".join(parts)


@block("emulators-gpu", "docs/emulators.md")
def emulators_gpu(results: Path) -> str:
    data = load(results, EMULATORS_GPU)
    versions, provenance, targets = data["versions"], data["provenance"], data["targets"]
    cases = data["cases"]
    sizes = list(dict.fromkeys((case["seq"], case["heads"]) for case in cases))
    lines = [prose(f"Measured by `{command_text(data['command'])}` on an {data['card']} (torch "
                   f"{versions['torch']}, SageAttention {versions['sageattention']}, {cudnn_text(versions['cudnn'])}, "
                   f"{provenance['date'][:10]}; {results_path(EMULATORS_GPU)}), bf16 inputs at "
                   f"{' and '.join(f'S {seq}, {heads} heads' for seq, heads in sizes)}, D 128. Columns: rel-L2(emu_sage, sage) ÷ sage's own error vs float64 "
                   f"(target ≤ {targets['quantised']}); emu_bf16's error vs float64 ÷ each real kernel's (cuDNN, FA2, "
                   f"mem-efficient; target 1 ± {targets['exact_band']}); its distance to each real kernel ÷ the "
                   f"largest distance between two real kernels (target ≤ 1); stretch: tiled `block_n` variants' "
                   f"distance to a real kernel ÷ that kernel's own error (target ≤ {targets['tiled']}):"), "",
             "| inputs | sage error | emu_sage vs sage | emu_bf16 error ratio | emu_bf16 distance | tiled, stretch |",
             "|---|---|---|---|---|---|"]
    for case in cases:
        g = _emulator_checks(case)
        default_own = [c for c in g["own"] if ":" not in c[0]]
        tiled_own = [c for c in g["own"] if ":" in c[0]]
        default_distance = [c for c in g["distance"] if ":" not in c[0]]
        tiled_distance = [c for c in g["distance"] if ":" in c[0]]

        def summary(items, ratio=False):
            values = [v / b for _, v, _, b in items] if ratio else [v for _, v, _, _ in items]
            passed = sum(ok for _, _, ok, _ in items)
            text = span(values, "{:.3f}" if ratio else "{:.2f}")
            return f"{text} ({passed}/{len(items)} met)" if passed < len(items) else text

        own = f"{summary(default_own)}; tiled {summary(tiled_own)}"
        distance = f"{summary(default_distance, ratio=True)}; tiled {summary(tiled_distance, ratio=True)}"
        stretch = f"{span([v for _, v, _, _ in g['stretch']])} ({sum(c[2] for c in g['stretch'])}/{len(g['stretch'])} met)"
        label = case["distribution"] + (f", S {case['seq']} H {case['heads']}" if len(sizes) > 1 else "")
        lines.append(f"| {label} | {case['rel_l2_vs_fp64']['sage']:.2e} | {_listed(g['sage'])} | "
                     f"{own} | {distance} | {stretch} |")
    lines += ["", prose("`emu_aiter` and `emu_aiter_sage` have no real kernel on this card: they are validated against "
                        "their documented algorithm only.")]
    return "\n".join(lines)

# --------------------------------------------------------------------------------- README plumbing

def render(name: str, results: Path = RESULTS) -> str:
    if name not in BLOCKS:
        raise KeyError(f"README has a block 'generated:{name}' that {Path(__file__).name} does not know; "
                       f"known: {', '.join(sorted(BLOCKS))}")
    return BLOCKS[name](results)


LINK = re.compile(r"\]\((?!https?:|#|/)(?P<path>[^)\s]+)\)")


def shown(name: str, results: Path = RESULTS) -> str:
    """The block as its target document shows it: links (written from the repository root) made relative to it."""
    body = render(name, results)
    folder = TARGETS[name].parent if name in TARGETS else ROOT
    if folder == ROOT:
        return body
    up = Path(*[".."] * len(folder.relative_to(ROOT).parts))
    return LINK.sub(lambda m: f"]({(up / m['path']).as_posix()})", body)


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block's body replaced by this script's rendering."""
    return MARKER.sub(lambda m: f"<!-- generated:{m['name']} -->\n{shown(m['name'], results)}\n<!-- /generated -->",
                      text)


def stale_blocks(text: str, results: Path = RESULTS) -> list[str]:
    return [m["name"] for m in MARKER.finditer(text) if m["body"] != shown(m["name"], results)]


def placement_problems(documents=None) -> list[str]:
    """Blocks missing from their target document, or shown in another one (each block sits once, in its target)."""
    documents = DOCUMENTS if documents is None else documents
    problems = []
    for document in documents:
        found = [m["name"] for m in MARKER.finditer(document.read_text())]
        where = document.relative_to(ROOT) if document.is_relative_to(ROOT) else document
        problems += [f"{where} shows '{name}' more than once" for name in sorted(set(found)) if found.count(name) > 1]
        problems += [f"{where} shows '{name}', whose target is {TARGETS[name].relative_to(ROOT)}"
                     for name in found if name in TARGETS and TARGETS[name] != document]
        problems += [f"{where} lacks its block '{name}'" for name, target in TARGETS.items()
                     if target == document and name not in found]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the documents' generated blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if a document's blocks differ from the results")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for name in BLOCKS:
            print(f"<!-- generated:{name} -->\n{render(name)}\n<!-- /generated -->\n")
        return 0
    stale_anywhere = False
    for document in DOCUMENTS:
        text = document.read_text()
        where = document.relative_to(ROOT) if document.is_relative_to(ROOT) else document
        if args.write:
            new = rewrite(text)
            if new != text:
                document.write_text(new)
            print(f"{where}: {len(MARKER.findall(new))} generated blocks, "
                  f"{'rewritten' if new != text else 'already up to date'}")
        else:
            stale = stale_blocks(text)
            stale_anywhere = stale_anywhere or bool(stale)
            print(f"{where}: up to date" if not stale else f"{where} has stale blocks: {', '.join(stale)} "
                  f"(python {Path(__file__).relative_to(ROOT)} --write)")
    if args.check:
        misplaced = placement_problems([d for d in DOCUMENTS if d in TARGETS.values()])
        for problem in misplaced:
            print(problem)
        stale_anywhere = stale_anywhere or bool(misplaced)
    return 1 if stale_anywhere else 0


if __name__ == "__main__":
    sys.exit(main())
