"""Writes the notebooks (outputs stripped): ``python notebooks/make_notebooks.py``.

Cells are thin: they call fluxlab's public API; anything worth testing lives in the package. The first code cell
of each notebook holds ``MODEL``: "embedded" (the small model trained in this repository: offline, CPU, real
pictures), "tiny" (random weights, fastest) or a local folder / hub id with real FLUX.2 weights (GPU). That one
line is the only edit needed to switch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The model every notebook opens with (the embedded model trained in this repository): edit here, rerun.
DEFAULT_MODEL = "embedded"

MODEL_CELL = '''\
# The FLUX.2 model: "tiny" (random weights, built offline in seconds, runs on the CPU), "embedded" (trained
# offline model, CPU) or a local folder / Hugging Face hub id with real weights (e.g.
# "black-forest-labs/FLUX.2-dev"), loaded in bfloat16 onto the GPU. This line is the only edit needed to switch.
MODEL = "%s"
VARIANT = "dev"  # for "tiny": "dev" (Flux2Pipeline) or "klein" (Flux2KleinPipeline); real weights say which''' % DEFAULT_MODEL

SETUP = '''\
import fluxlab
from fluxlab.widgets import {widgets}, settings_for

settings = settings_for(MODEL, variant=VARIANT)
print(fluxlab.current_platform().describe())
settings'''

LOAD = '''\
# Real weights load with offload="auto": everything on the GPU if it fits, else offloaded to host memory one
# component at a time (or one layer at a time); a model too large even then is refused before loading.
pipe = fluxlab.load_flux2(MODEL, **settings.load_kwargs())
print(pipe.fluxlab_offload)
type(pipe).__name__, pipe.device'''


def tour() -> list:
    return [
        new_markdown_cell(
            "# 01 · Backends tour\n\n"
            "What this machine can run, why the rest cannot, and a live FLUX.2 pipeline whose attention backend "
            "you switch with one click — no reload, same noise, new image and timing."),
        new_code_cell(MODEL_CELL),
        new_code_cell(SETUP.format(widgets="BackendPicker, BackendToggleDemo")),
        new_markdown_cell(
            "## The doctor table\n\n"
            "Every registered backend: `DEFAULT` is what fluxlab picks here for FLUX-shaped inputs; a `no` row says "
            "exactly why it cannot run (the same text as `fluxlab doctor` in a terminal)."),
        new_code_cell("print(fluxlab.doctor_text())"),
        new_markdown_cell(
            "The same table as buttons. Greyed-out backends cannot run here — hover one for its reasons; the star "
            "marks the default pick."),
        new_code_cell("BackendPicker()"),
        new_markdown_cell("## A live FLUX.2 pipeline\n\n`fluxlab.load_flux2` returns diffusers' own pipeline with "
                          "every attention call routed through fluxlab's dispatcher."),
        new_code_cell(LOAD),
        new_markdown_cell(
            "## Toggle the backend\n\n"
            "Click a backend: the pipeline generates again from the same seed. The label says which backend served "
            "how many attention calls (counted, not assumed) and how long the generation took. A backend that fails "
            "shows its error here; a bad size or an empty prompt is flagged next to its box."),
        new_code_cell("demo = BackendToggleDemo(pipe, **settings.generation())\ndemo"),
        new_markdown_cell("## The same from code\n\n`fluxlab.set_backend` switches the pipeline between two "
                          "generations without reloading anything."),
        new_code_cell(
            "import torch\n\n"
            "fluxlab.set_backend(pipe, fluxlab.dispatch.default_backend())\n"
            "image = pipe(**settings.pipe_kwargs(), generator=torch.Generator().manual_seed(0)).images[0]\n"
            "image.resize((192, 192))"),
    ]


def equivalence() -> list:
    return [
        new_markdown_cell(
            "# 02 · Attention equivalence\n\n"
            "Is a kernel numerically equivalent to the others? Every backend is compared with the exact float64 "
            "answer, and its error is judged against torch's own error in the same dtype (a kernel may be at most a "
            "small multiple worse). Quantised kernels are judged against their own budget."),
        new_code_cell(MODEL_CELL),
        new_code_cell("%matplotlib inline\n" + SETUP.format(widgets="ComparisonPanel")
                      + "\nfrom fluxlab.compare import RULE_TEXT, InputSpec, compare_attention, plot_error_maps"),
        new_markdown_cell(
            "## Synthetic FLUX-shaped inputs\n\n"
            "Three value distributions: `normal`, `outliers` (large shared q/k channels, as post-norm DiTs have) and "
            "`peaky` (near one-hot attention). On a GPU the real FLUX.2 shapes are used (S 4608 and 16896, 24/48 "
            "heads); on the CPU, smaller ones."),
        new_code_cell(
            "inputs = [InputSpec(512, 4, distribution=d) for d in (\"normal\", \"outliers\", \"peaky\")] "
            "if settings.small else None\n"
            "report = compare_attention(inputs, progress=False)\n"
            "report"),
        new_code_cell("print(RULE_TEXT)"),
        new_markdown_cell("## Where the error sits\n\nRelative error per head and query token (text tokens left of "
                          "the dashed line), for each backend's worst input."),
        new_code_cell("plot_error_maps(report)"),
        new_markdown_cell(
            "## Captured inputs\n\n"
            "`fluxlab.capture` records what the kernel received in a real generation (post-norm, post-RoPE q/k/v, "
            "text first), and what it returned. Comparing on those is comparing where it matters."),
        new_code_cell(LOAD),
        new_code_cell(
            "import torch\n\n"
            "with fluxlab.capture(pipe, layers=[\"transformer_blocks.0\", \"single_transformer_blocks.0\"], "
            "steps=[0, -1]) as cap:\n"
            "    pipe(**settings.pipe_kwargs(), generator=torch.Generator().manual_seed(0))\n"
            "captured = compare_attention(cap.records, progress=False)\n"
            "captured"),
        new_markdown_cell(
            "## A planted bug, caught live\n\n"
            "A backend registered through the public API with a softmax scale 10 % too large — the kind of bug a "
            "wrong default or a forgotten argument produces. Its images still look plausible; the verdict does "
            "not."),
        new_code_cell(
            "def planted_scale_bug(q, k, v, *, scale, causal=False, return_lse=False, **options):\n"
            "    return fluxlab.attention(q, k, v, backend=\"sdpa\", scale=scale * 1.1, causal=causal, "
            "return_lse=return_lse)\n\n"
            "fluxlab.register_backend(\"planted_scale_bug\", planted_scale_bug, replace=True,\n"
            "                         description=\"sdpa with the softmax scale 10% too large (a planted bug)\")\n"
            "caught = compare_attention(inputs, backends=[\"sdpa\", \"planted_scale_bug\"], "
            "progress=False)\n"
            "caught.verdicts"),
        new_markdown_cell(
            "## The comparison panel\n\n"
            "Pick backends and an input — a synthetic shape or one of the captured layers — and compare. Click "
            "`planted_scale_bug`, then *Compare*: it fails, with the heatmap showing where."),
        new_code_cell(
            "panel = ComparisonPanel(cap.records, backends=[\"sdpa\", \"flex\"], run_on_start=True)\n"
            "panel"),
    ]


def side_by_side() -> list:
    return [
        new_markdown_cell(
            "# 03 · FLUX.2 side by side\n\n"
            "The same prompt, seed and noise on every backend: the images, their differences to the reference, "
            "PSNR and SSIM (scikit-image), and how far the latents drift apart step by step."),
        new_code_cell(MODEL_CELL),
        new_code_cell(SETUP.format(widgets="ImageGallery, model_backends") + "\nfrom fluxlab.compare import compare_images"),
        new_code_cell(LOAD),
        new_code_cell(
            "SEED = 0\n"
            "# the exact kernels here; the emulated ones (emu_*) get their own section below\n"
            "backends = [settings.image_reference] + [b for b in model_backends(pipe, exclude=[settings.image_reference])\n"
            "                                         if not fluxlab.registry.get_backend(b).caps.emulated]\n"
            "backends"),
        new_code_cell(
            "comparison = compare_images(pipe, backends, seed=SEED, reference=settings.image_reference,\n"
            "                            **settings.generation())\n"
            "comparison"),
        new_markdown_cell(
            "## AMD and quantised kernels, emulated\n\n"
            "On a CPU every exact kernel agrees to float32 rounding, so the images above barely differ. The emulated "
            "backends (`emu_*`, see `fluxlab doctor`) reproduce real kernels' rounding and quantisation points in "
            "float32: `emu_sage` is SageAttention 1.0.6 (int8 Q/K), `emu_aiter_sage` AITER's Sage kernel (int8 Q/K, "
            "fp8 V); AITER's bf16 kernel and its quantised formats follow in the next section. They are labelled as "
            "emulated in every table; on a GPU compare the real kernels instead."),
        new_code_cell(
            "EMULATED = [\"sdpa\", \"emu_bf16\", \"emu_sage\", \"emu_aiter_sage\"]\n"
            "if settings.small:\n"
            "    emulation = compare_images(pipe, [settings.image_reference] + EMULATED, seed=SEED,\n"
            "                               reference=settings.image_reference, **settings.generation())\n"
            "    emulation.figure()\n"
            "else:\n"
            "    emulation = \"real weights on a GPU: compare the real kernels (sage, aiter) in the gallery\"\n"
            "emulation"),
        new_markdown_cell(
            "## AMD's quantised attention (aiter MHA v4) and the bf16 rounding axis\n\n"
            "aiter's MHA v4 runs attention on quantised Q/K/V in six formats, named as sglang's and vLLM-Omni's "
            "AITER_QUANT backends name them: `i8fp8` (INT8 Q/K, FP8 V), `fp8`, `mxfp6` and `mxfp4` (MX Q/K after a "
            "Walsh-Hadamard rotation, FP8 V), `f6f4` and `f4f4` (MXFP4 V). `emu_aiter_quant` emulates each on any "
            "machine (docs/amd_quant.md). MHA v4 takes head_dim 128 only; this model has 32, so here it runs on q/k/v "
            "zero-padded to 128 (`emu_aiter_quant_pad128`), which is what running the model on MHA v4 would take. "
            "Beside them, AITER's bf16 kernel (`emu_aiter`) under its three output roundings `how_v3_bf16_cvt`: "
            "0 nearest-even, 1 nearest-away (aiter's default, and what sglang gets: it passes none), 2 toward zero "
            "(xDiT's choice). Verdicts by the image rule, against float64 attention."),
        new_code_cell(
            "from fluxlab.backends.emu_aiter_quant import FORMATS\n"
            "from fluxlab.registry import register_padded\n\n"
            "QUANT = register_padded(\"emu_aiter_quant\", 128)  # the emulator on q/k/v zero-padded to head_dim 128\n"
            "AMD = [f\"emu_aiter:how_v3_bf16_cvt={mode}\" for mode in (0, 1, 2)] + [f\"{QUANT}:format={name}\" for name in FORMATS]\n"
            "# The small models' captions are byte-level (up to 129 tokens): 144 text tokens hold any of them, and the\n"
            "# emulators run far faster than with the default 512.\n"
            "TEXT = dict(max_sequence_length=144) if settings.small else {}\n"
            "if settings.small:\n"
            "    amd = compare_images(pipe, [settings.image_reference] + AMD, seed=SEED,\n"
            "                         reference=settings.image_reference, **TEXT, **settings.generation())\n"
            "    amd.figure()\n"
            "else:\n"
            "    amd = \"real weights on a GPU: on an MI355X compare aiter_mha_v4:format=... and aiter:how_v3_bf16_cvt=...\"\n"
            "amd"),
        new_code_cell("amd.verdicts if settings.small else amd"),
        new_markdown_cell(
            "## Exact first and last steps, per format\n\n"
            "`fluxlab.frontier` with the format as the candidate and AITER's bf16 kernel (default rounding) as the "
            "exact kernel: the format everywhere, then the exact kernel at the first and last k steps. Only the "
            "fidelity is shown: on a CPU every kernel here is an emulation, and its time is the emulator's, not "
            "aiter's kernel's. `benchmarks/amd_quant_frontier.py` runs all six formats."),
        new_code_cell(
            "if settings.small:\n"
            "    front = fluxlab.frontier(pipe, [f\"{QUANT}:format=mxfp4\"], exact=\"emu_aiter\", seeds=[SEED], repeats=1,\n"
            "                             locate=False, **TEXT, **settings.generation())\n"
            "    fidelity = {row.name: {\"final-latent rel-L2\": round(row.final_latent_rel_l2, 4), \"SSIM\": round(row.ssim, 4),\n"
            "                           \"verdict\": row.verdict} for row in front.rows}\n"
            "else:\n"
            "    fidelity = \"real weights on a GPU: benchmarks/amd_quant_dev.py measures the formats' latent drift\"\n"
            "fidelity"),
        new_markdown_cell(
            "## Determinism and invariance of a whole generation\n\n"
            "Is a rerun bitwise identical? Is a sample the same generated alone and inside a batch of 4 (diffusers' "
            "idiom: a list of prompts and a list of generators)? Does it matter where it sits in the batch? "
            "*Alone vs batch* is what a user sees: it includes the model's own layers, which run at batch 1 vs 4; "
            "*kernel's share* runs the same batch with the kernel called once per sample, so only the attention "
            "kernel differs. Each backend costs 17 generations: here one kernel, briefly; every backend: "
            "`benchmarks/results/cpu/invariance/generation.md` (`python benchmarks/invariance.py`)."),
        new_code_cell(
            "from fluxlab.compare import check_generation_invariance\n\n"
            "invariance = check_generation_invariance(pipe, [\"sdpa\"] if settings.small else backends,\n"
            "                                         steps=2 if settings.small else 4, height=settings.height,\n"
            "                                         width=settings.width,\n"
            "                                         **(dict(max_sequence_length=144) if settings.small else {}))\n"
            "invariance"),
        new_markdown_cell("## The gallery\n\nPick backends, change the prompt, seed or steps, and generate again. "
                          "Difference maps share one colour scale."),
        new_code_cell(
            "# It opens on the comparison above (no second generation); the button generates again with what is picked.\n"
            "gallery = ImageGallery(pipe, backends=backends, reference=settings.image_reference, seed=SEED,\n"
            "                       comparison=comparison, **settings.generation())\n"
            "gallery"),
    ]


def decide() -> list:
    return [
        new_markdown_cell(
            "# 04 · Decide\n\n"
            "Not only *how far* a fast kernel lands from the exact one, but *where* its image drift is born (which "
            "attention layers at which denoising steps), which schedule buys how much speed for how much fidelity, "
            "and a per-layer plan that is fastest while every layer still passes its verdict."),
        new_code_cell(MODEL_CELL),
        new_code_cell(
            "%matplotlib inline\n"
            "import fluxlab\n"
            "from fluxlab.compare import IMAGE_RULE_TEXT\n"
            "from fluxlab.widgets import DriftExplorer, settings_for\n\n"
            "settings = settings_for(MODEL, variant=VARIANT)\n"
            "print(fluxlab.current_platform().describe())"),
        new_markdown_cell(
            "## The candidates\n\n"
            "On a GPU the candidate is a real fast kernel (`sage`). On the CPU it is `emu_bf16`, fluxlab's float32 "
            "emulation of a bf16 kernel's rounding (the emulated Sage kernels need head_dim 64 or 128; the "
            "embedded model's is 32). Beside it, a planted bug registered through the public API: sdpa with the "
            "softmax scale 2 % too large — as fast as sdpa, and wrong."),
        new_code_cell(
            "def planted_scale_bug(q, k, v, *, scale, causal=False, return_lse=False, **options):\n"
            "    return fluxlab.attention(q, k, v, backend=\"sdpa\", scale=scale * 1.02, causal=causal, "
            "return_lse=return_lse)\n\n"
            "fluxlab.register_backend(\"planted_scale_bug\", planted_scale_bug, replace=True,\n"
            "                         description=\"sdpa with the softmax scale 2% too large (a planted bug)\")\n"
            "EXACT, CANDIDATE = \"sdpa\", (\"emu_bf16\" if settings.small else \"sage\")\n"
            "# Four steps keep every generation well under a second on the CPU. The small models' captions are\n"
            "# byte-level (up to 129 tokens): a text shorter than that cuts the caption, and the picture with it.\n"
            "RUN = dict(prompt=settings.prompt, steps=4, height=settings.height, width=settings.width,\n"
            "           max_sequence_length=144) if settings.small else \\\n"
            "    dict(prompt=settings.prompt, steps=settings.steps, height=settings.height, width=settings.width)\n"
            "pipe = fluxlab.load_flux2(MODEL, allowed=fluxlab.models.FLUX2_BACKENDS | {\"planted_scale_bug\"},\n"
            "                          **settings.load_kwargs())\n"
            "CANDIDATE, RUN"),
        new_markdown_cell(
            "## Where is the drift born?\n\n"
            "`locate_drift` switches regions of the (layer × step) grid from the exact kernel to the candidate, "
            "coarse to fine, and scores each by how far the final latents move. Only the strongest region is "
            "split (`beam=1`; the default 2 follows two), so the number of generations grows with log(layers × steps), not their product. Blank cells "
            "were never split."),
        new_code_cell(
            "drift = fluxlab.locate_drift(pipe, EXACT, CANDIDATE, beam=1, **RUN)\n"
            "drift.figure()\n"
            "drift"),
        new_markdown_cell(
            "## Click a cell\n\n"
            "The same map as buttons. A click generates the image with the candidate in that one attention layer at "
            "that one step and the exact kernel everywhere else (the run `locate_drift` scored), beside the "
            "all-exact and all-candidate images, with the cell's final-latent rel-L2 and PSNR. Nothing is generated "
            "until you click; a cell clicked again is shown from the cache. Blank cells were never scored: click "
            "one to measure it."),
        new_code_cell("explorer = DriftExplorer(pipe, drift)\nexplorer"),
        new_markdown_cell(
            "## Speed against fidelity\n\n"
            "Each schedule of the candidate — everywhere, exact first and last step, everywhere but the culprit "
            "cells found above — timed (the transformer only, median after a warm-up) and judged against the "
            "exact kernel. The dashed line is the Pareto set. On the CPU the emulation is slower than sdpa: "
            "this shows the method; the GPU run gives the real trade-off."),
        new_code_cell(
            "front = fluxlab.frontier(pipe, [CANDIDATE], exact=EXACT, repeats=2, drift_maps={CANDIDATE: drift}, **RUN)\n"
            "front.figure()\n"
            "front"),
        new_markdown_cell(
            "## Autotune, apply, judge\n\n"
            "Per attention layer, every candidate is timed on that layer's captured q/k/v and judged against "
            "float64; the fastest one that *passes* is chosen. The planted bug is as fast as sdpa and is never "
            "chosen; the table says why."),
        new_code_cell(
            "plan = fluxlab.autotune(pipe, candidates=[EXACT, \"sdpa_math\", \"planted_scale_bug\", CANDIDATE],\n"
            "                        allow_quantised=True, repeats=2, **RUN)\n"
            "plan"),
        new_code_cell(
            "fluxlab.set_schedule(pipe, plan.schedule)  # apply: from the next generation on\n"
            "print(\"image verdict of the plan:\", plan.verify(pipe, **RUN))\n"
            "print(plan.image_note)\n"
            "fluxlab.set_schedule(pipe, None)"),
        new_code_cell("print(IMAGE_RULE_TEXT)"),
    ]


NOTEBOOKS = {
    "01_backends_tour.ipynb": tour,
    "02_attention_equivalence.ipynb": equivalence,
    "03_flux2_side_by_side.ipynb": side_by_side,
    "04_decide.ipynb": decide,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{index:02d}"  # stable ids: regenerating changes nothing
    return nb


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else HERE
    for name in NOTEBOOKS:
        nbformat.write(build(name), out / name)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
