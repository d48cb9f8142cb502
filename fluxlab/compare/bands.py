"""Image verdicts in bands: how far apart legitimate changes put two generations (the band, per class and metric),
and a kernel judged by how many bands it lies from the reference. docs/verdicts.md, "Image bands", explains both.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np

from ..errors import InvalidFileError
from ..util import jsonable, provenance, rel_l2, write_result_file
from .tolerances import FAIL, PASS, WARN

BAND_FORMAT = "fluxlab-image-band/1"
EXACT, LOW_PRECISION = "exact", "low_precision"
CLASSES = (EXACT, LOW_PRECISION)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# The committed bands the default verdicts look in (benchmarks/image_bands.py writes them): one file per setting and
# card, named image_bands*.json; ``default_band`` takes those of the generation's setting (several cards merged).
BAND_GLOB = "*/image_bands*.json"

# The legitimate changes a band is measured from: class -> spec -> what it changes. Each class is measured against
# the exact kernels and among its own members; "sdpa#rerun" is a rerun of sdpa. aiter's how_v3_bf16_cvt=2 rounds
# toward zero: biased, so it is judged by the band, never part of it.
VARIANTS = {
    EXACT: {"reference": "float64 attention", "sdpa": "torch SDPA", "sdpa_math": "torch's math kernel",
            "sdpa#rerun": "a rerun of sdpa"},
    LOW_PRECISION: {
        "emu_aiter:how_v3_bf16_cvt=0": "aiter's bf16 conversions rounding to nearest, ties to even (RTNE)",
        "emu_aiter:how_v3_bf16_cvt=1": "aiter's bf16 conversions rounding to nearest, ties away from zero (RTNA)",
        "emu_bf16:probs=fp32": "attention inputs and output rounded to bf16, softmax and P.V in float32",
        "emu_bf16:block_n=64": "a bf16 flash kernel with online softmax over 64-key blocks (another reduction order)",
    },
}
# How a verdict note names the changes behind a band: (variant names, words), in this order.
_EXACT_KERNELS = (("sdpa", "sdpa_math", "reference"), "exact kernels")
SHORT_NAMES = {
    EXACT: [(("sdpa#rerun",), "rerun"), _EXACT_KERNELS],
    LOW_PRECISION: [(("emu_aiter:how_v3_bf16_cvt=0", "emu_aiter:how_v3_bf16_cvt=1"), "RTNE vs RTNA"),
                    (("emu_bf16:probs=fp32",), "bf16 inputs/output"), (("emu_bf16:block_n=64",), "64-key blocks"),
                    _EXACT_KERNELS],
}
DEFAULT_BAND_PROMPTS = ("a red circle at the top left on a blue background",
                        "a yellow square at the bottom right on a green background",
                        "two white stripes across a black background")

# Verdict limits in bands (docs/verdicts.md, "Image bands", says why these).
PASS_BANDS = 2.0
WARN_BANDS = 4.0
# Floors of a band: a band of 0 (bit-identical variants) would make any difference a failure. The latent floor is
# about 16 float32 roundings; the image floors are below what one 8-bit pixel step moves.
FLOORS = {"final_latent_rel_l2": 1e-6, "one_minus_ssim": 1e-9, "pixel_rmse": 1e-7}
METRICS = ("final_latent_rel_l2", "one_minus_ssim", "pixel_rmse")
METRIC_TEXT = {"final_latent_rel_l2": "final-latent rel-L2", "one_minus_ssim": "1 - SSIM", "pixel_rmse": "pixel RMSE"}
# The exact kernels whose spread is the exact band on the fly (same machine, model, dtype, prompt and seed): they run
# on every platform, and none can be a user's kernel, so a broken kernel cannot widen its own band.
YARDSTICK_BACKENDS = ("sdpa", "sdpa_math", "reference")

IMAGE_RULE_TEXT = f"""\
Image verdicts (per backend; with several seeds the worst seed decides), counted in bands of legitimate variation:

| kernel | band (the spread legitimate changes produce) | pass | warn | fail |
|---|---|---|---|---|
| exact | final-latent rel-L2 between the exact kernels {', '.join(YARDSTICK_BACKENDS)}, measured here at the same \
prompt and seeds | <= {PASS_BANDS:g} bands | <= {WARN_BANDS:g} bands | beyond |
| quantised / emulated (caps.quantised, caps.emulated) | final-latent rel-L2, 1 - SSIM and pixel RMSE (PSNR) \
between correct bf16 kernels (aiter RTNE vs RTNA, bf16 inputs/output, 64-key blocks) and the exact kernels, over \
several prompts and seeds | <= {PASS_BANDS:g} bands in all three | <= {WARN_BANDS:g} | beyond |
| any kernel | - | - | - | generation raised, or NaN/inf in the image or latents |

bands = distance from the reference / the band. The low-precision band comes from the committed file of the
pipeline's setting (benchmarks/results/<card>/image_bands*.json, written by benchmarks/image_bands.py: model,
dtype, device, steps, size and text length must match) or, where none matches, is measured on the fly for this
pipeline at the same prompt and seeds (fluxlab.compare.measure_image_band; pass band= to reuse a saved one).
Why {PASS_BANDS:g} and {WARN_BANDS:g}: a band is the largest distance between two legitimate variants, \
so a kernel within one
band of a legitimate variant lies within {PASS_BANDS:g} bands of the reference (triangle inequality); warn allows twice
that for prompts and seeds the band was not measured on. Every verdict note says how many bands away, and where
the band came from (docs/verdicts.md, "Image bands").
"""

# A band file that cannot be read, or a band that does not fit the pipeline it is asked to judge.
ImageBandError = InvalidFileError


# -- distances -----------------------------------------------------------------------------------------------------


def distances(image, final_latent, ref_image, ref_final_latent) -> dict:
    """The band metrics of one generation against another: final-latent rel-L2, 1 - SSIM and the pixel RMSE
    (PSNR = -20 log10 RMSE); NaN where an image is missing, inf where it is not finite."""
    out = {"final_latent_rel_l2": rel_l2(final_latent, ref_final_latent), "one_minus_ssim": math.nan,
           "pixel_rmse": math.nan}
    if image is None or ref_image is None:
        return out
    image, ref_image = np.asarray(image, dtype=np.float64), np.asarray(ref_image, dtype=np.float64)
    if not np.isfinite(image).all():
        return dict.fromkeys(out, math.inf)
    from skimage.metrics import structural_similarity

    ssim = float(structural_similarity(ref_image, image, channel_axis=-1, data_range=1.0))
    rmse = float(np.sqrt(np.mean((image - ref_image) ** 2)))
    return out | {"one_minus_ssim": max(0.0, 1.0 - ssim), "pixel_rmse": rmse}


def from_image_metrics(ssim: float, psnr: float, final_latent_rel_l2: float) -> dict:
    """The band metrics from what ``compare_images`` reports (SSIM, PSNR in dB, final-latent rel-L2)."""
    rmse = 0.0 if psnr == math.inf else 10 ** (-psnr / 20) if math.isfinite(psnr) else math.nan
    return {"final_latent_rel_l2": final_latent_rel_l2, "one_minus_ssim": 1.0 - ssim if math.isfinite(ssim)
            else math.nan, "pixel_rmse": rmse}


def derive_bands(cells) -> dict:
    """class -> metric -> the largest finite distance over every cell's pairs of that class (before floors)."""
    bands = {c: dict.fromkeys(METRICS, 0.0) for c in CLASSES}
    for pair in (pair for cell in cells for pair in cell["pairs"]):
        for metric in METRICS:
            value = pair.get(metric)
            if value is not None and math.isfinite(value):
                bands[pair["class"]][metric] = max(bands[pair["class"]][metric], value)
    return bands


def exact_spread(finals) -> float:
    """The largest final-latent rel-L2 between two of ``finals`` (NaN with fewer than two)."""
    finals = list(finals)
    return max((rel_l2(a, b) for i, a in enumerate(finals) for b in finals[i + 1:]), default=math.nan)


# -- the band --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImageBand:
    """Bands per class and metric, the setting they were measured in, every measured pair (``cells``), and where
    they came from (``source``: the file, or "measured here")."""

    setting: dict  # model, dtype, device, steps, height, width, max_sequence_length
    prompts: list[str]
    seeds: list[int]
    variants: dict  # class -> {spec: what it changes}
    cells: list[dict]  # {"prompt", "seed", "card", "pairs": [{"a", "b", "class", metric...}]}
    bands: dict = dataclasses.field(default_factory=dict)  # class -> metric -> value (derive_bands(cells))
    provenance: dict = dataclasses.field(default_factory=dict)
    command: str = ""
    cards: list[str] = dataclasses.field(default_factory=list)
    source: str = "measured here"
    outputs: dict = dataclasses.field(default_factory=dict)  # "prompt|seed" -> reference final latent (cross-card)

    def __post_init__(self):
        self.bands = self.bands or derive_bands(self.cells)

    def band(self, kind: str, metric: str) -> float:
        return max(self.bands[kind][metric], FLOORS[metric])

    def source_text(self, kind: str) -> str:
        """Where the band of ``kind`` came from: the file, the legitimate changes that ran, prompts x seeds."""
        ran = {name for cell in self.cells for p in cell["pairs"] if p["class"] == kind for name in (p["a"], p["b"])}
        what = [text for names, text in SHORT_NAMES[kind] if any(n in ran for n in names)]
        if len(self.cards) > 1:
            what.append(" vs ".join(self.cards))
        return (f"{self.source}: {', '.join(what) or 'no legitimate change ran'}, {len(self.prompts)} "
                f"prompt{'s' if len(self.prompts) != 1 else ''} x {len(self.seeds)} "
                f"seed{'s' if len(self.seeds) != 1 else ''}")

    def mismatches(self, setting: dict) -> list[str]:
        """What differs between this band's setting and ``setting`` (empty: the band applies)."""
        return [f"{key} {self.setting.get(key)!r} in the band, {setting.get(key)!r} here"
                for key in sorted(set(self.setting) | set(setting)) if self.setting.get(key) != setting.get(key)]

    def as_dict(self) -> dict:
        return jsonable({"format": BAND_FORMAT, "provenance": self.provenance, "command": self.command,
                         "setting": self.setting, "cards": self.cards, "prompts": self.prompts, "seeds": self.seeds,
                         "variants": self.variants,
                         "limits": {"pass_bands": PASS_BANDS, "warn_bands": WARN_BANDS, "floors": FLOORS},
                         "bands": self.bands, "headroom": self.headroom(), "cells": self.cells})

    def headroom(self) -> dict:
        """class -> the band over the median of the per-cell largest final-latent rel-L2: how much the worst
        prompt x seed exceeds a typical one (what a prompt that was not measured may add)."""
        found = {}
        for kind in CLASSES:
            per_cell = [max((p["final_latent_rel_l2"] for p in c["pairs"] if p["class"] == kind), default=0.0)
                        for c in self.cells]
            per_cell = [v for v in per_cell if v and math.isfinite(v)]
            found[kind] = max(per_cell) / float(np.median(per_cell)) if per_cell else math.nan
        return found

    def save(self, path) -> Path:
        """Write the band as JSON (the format ``load`` reads; reference latents for merging go beside as .npz)."""
        path = Path(path).expanduser()
        if self.outputs:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in self.outputs.items()})
            write_result_file(path.with_suffix(".npz"), buffer.getvalue())
        return write_result_file(path, json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path) -> ImageBand:
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ImageBandError(f"no image band at {path}; measure one with fluxlab.compare.measure_image_band(pipe)"
                                 " and save it, or run benchmarks/image_bands.py") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ImageBandError(f"{path} is not a readable image band ({exc}); write it again with "
                                 "ImageBand.save") from None
        if not isinstance(data, dict) or data.get("format") != BAND_FORMAT:
            raise ImageBandError(f"{path} is not a {BAND_FORMAT} file; write it with ImageBand.save")
        outputs = {}
        if path.with_suffix(".npz").is_file():
            with np.load(path.with_suffix(".npz")) as stored:
                outputs = {k: stored[k] for k in stored.files}
        try:
            return cls(data["setting"], data["prompts"], data["seeds"], data["variants"], data["cells"],
                       data["bands"], data.get("provenance", {}), data.get("command", ""), data.get("cards", []),
                       _display(path), outputs)
        except KeyError as exc:
            raise ImageBandError(f"{path} lacks the field {exc.args[0]!r}; write it again with ImageBand.save") \
                from None


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(RESULTS.parents[1]))
    except ValueError:
        return str(path)


def merge_bands(bands, source: str | None = None) -> ImageBand:
    """One band from several measured in the same setting on different cards: every cell of each, plus, where both
    kept their reference latents (``keep_outputs``), the reference on one card against the other's at each
    prompt x seed (a card change is legitimate for both classes)."""
    bands = list(bands)
    if not bands:
        raise ImageBandError("merge_bands needs at least one band")
    first = bands[0]
    for other in bands[1:]:
        differ = first.mismatches(other.setting)
        if differ:
            raise ImageBandError(f"bands of different settings cannot be merged ({'; '.join(differ)}); merge only "
                                 "files measured with the same model, dtype, steps, size and text length")
    cells = [cell for band in bands for cell in band.cells]
    for i, a in enumerate(bands):
        for b in bands[i + 1:]:
            for key in sorted(set(a.outputs) & set(b.outputs)):
                prompt, seed = key.rsplit("|", 1)
                rel = rel_l2(a.outputs[key], b.outputs[key])
                pairs = [{"a": f"reference@{'+'.join(a.cards)}", "b": f"reference@{'+'.join(b.cards)}", "class": kind,
                          "final_latent_rel_l2": rel, "one_minus_ssim": None, "pixel_rmse": None} for kind in CLASSES]
                cells.append({"prompt": prompt, "seed": int(seed), "card": "cross-card", "pairs": pairs})
    cards = list(dict.fromkeys(card for band in bands for card in band.cards))
    outputs = {f"{card}:{k}": v for band in bands for card in band.cards[:1] for k, v in band.outputs.items()}
    return ImageBand(dict(first.setting), list(dict.fromkeys(p for b in bands for p in b.prompts)),
                     sorted({s for b in bands for s in b.seeds}), first.variants, cells, {}, first.provenance,
                     first.command, cards, source or " + ".join(b.source for b in bands), outputs)


# -- where the band comes from ------------------------------------------------------------------------------------


def setting_of(pipe, *, steps: int, height, width, pipe_kwargs: dict | None = None) -> dict:
    """What a band must share with a generation to apply to it."""
    from ..models.offload import execution_device
    from ..results import model_of

    model = model_of(pipe) or {}
    source = model.get("source")
    package = Path(__file__).resolve().parents[1]
    if source and Path(source).resolve().is_relative_to(package):
        source = "fluxlab/" + Path(source).resolve().relative_to(package).as_posix()
    kwargs = pipe_kwargs or {}
    return {"model": source, "pipeline": model.get("pipeline"), "dtype": model.get("dtype"),
            "device": execution_device(pipe).type, "steps": int(steps), "height": _size(height, pipe),
            "width": _size(width, pipe), "max_sequence_length": int(kwargs.get("max_sequence_length", 512)),
            "guidance_scale": kwargs.get("guidance_scale")}


def _size(value, pipe):
    """``value``, or the pipeline's default side (diffusers: default_sample_size x vae_scale_factor)."""
    if value is not None:
        return int(value)
    sample, factor = getattr(pipe, "default_sample_size", None), getattr(pipe, "vae_scale_factor", None)
    return int(sample * factor) if isinstance(sample, int) and isinstance(factor, int) else None


def default_band(setting: dict, results: Path = RESULTS) -> ImageBand | None:
    """The committed band for ``setting`` (files of one setting from several cards merged), or None."""
    found = [ImageBand.load(path) for path in sorted(results.glob(BAND_GLOB))]
    matching = [band for band in found if not band.mismatches(setting)]
    if not matching:
        return None
    return matching[0] if len(matching) == 1 else merge_bands(matching)


def resolve_band(band, setting: dict) -> ImageBand | None:
    """``band`` as given (an ImageBand or a path; checked against ``setting``), else the committed one, else None."""
    if band is None:
        return default_band(setting)
    if not isinstance(band, ImageBand):
        band = ImageBand.load(band)
    differ = band.mismatches(setting)
    if differ:
        raise ImageBandError(f"the image band from {band.source} was measured in another setting: "
                             f"{'; '.join(differ)}. Measure one for this pipeline with "
                             "fluxlab.compare.measure_image_band(pipe, steps=..., height=..., width=...), or pass "
                             "band=None to measure it here")
    return band


# -- verdicts ------------------------------------------------------------------------------------------------------


def is_approximate(backend) -> bool:
    """Judged against the low-precision band rather than the exact-kernel spread (quantised or emulated)."""
    return bool(backend.caps.quantised or getattr(backend.caps, "emulated", False))


def judge_in_bands(numbers: dict, band_values: dict, source: str, *, metrics=METRICS) -> tuple[str, str, float]:
    """(verdict, note, bands away): the worst of ``metrics``' distance / band; pass <= PASS_BANDS, warn <=
    WARN_BANDS. ``numbers`` and ``band_values``: metric -> value (``distances`` / ``from_image_metrics``)."""
    parts, ratios = [], []
    for metric in metrics:
        value = numbers.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value) and metric != "final_latent_rel_l2"):
            continue
        band = max(band_values[metric], FLOORS[metric])
        ratio = value / band if math.isfinite(value) else math.inf
        if metric == "one_minus_ssim" and math.isfinite(ratio):
            ratio = math.sqrt(max(ratio, 0.0))  # 1 - SSIM grows with the square of a small change: same units
        ratios.append(math.inf if math.isnan(ratio) else ratio)
        parts.append(f"{METRIC_TEXT[metric]} {value:.3g} = {ratio:.3g} bands (band {band:.3g})")
    away = max(ratios) if ratios else math.nan
    verdict = FAIL if not math.isfinite(away) else PASS if away <= PASS_BANDS else WARN if away <= WARN_BANDS \
        else FAIL
    note = (f"{'; '.join(parts)} from {source}; pass <= {PASS_BANDS:g} bands, warn <= {WARN_BANDS:g}")
    return verdict, note, away


def judge_with_band(numbers: dict, band: ImageBand, kind: str) -> tuple[str, str]:
    """A kernel of class ``kind`` judged by ``band``'s band of that class (every metric it has)."""
    if kind not in band.variants:
        raise ImageBandError(f"the image band from {band.source} has no {kind} class (measured: "
                             f"{', '.join(band.variants)}); measure it with measure_image_band(pipe, classes=CLASSES)")
    verdict, note, _ = judge_in_bands(numbers, {m: band.band(kind, m) for m in METRICS}, band.source_text(kind))
    return verdict, note


def judge_exact_image(latent_rel_l2: float, spread: float, source: str | None = None) -> tuple[str, str]:
    """An exact kernel's final-latent rel-L2 in bands of the exact-kernel ``spread`` measured at the same prompt and
    seeds (``source``: where it came from)."""
    metric = "final_latent_rel_l2"
    verdict, note, _ = judge_in_bands(
        {metric: latent_rel_l2}, {metric: spread if math.isfinite(spread) else 0.0},
        source or f"the exact kernels {', '.join(YARDSTICK_BACKENDS)} measured here", metrics=(metric,))
    return verdict, note


# -- measuring -----------------------------------------------------------------------------------------------------


def check_classes(classes) -> tuple:
    classes = (classes,) if isinstance(classes, str) else tuple(classes)
    if not classes or set(classes) - set(CLASSES):
        raise ImageBandError(f"classes={classes!r}: choose from {', '.join(CLASSES)}")
    return classes


def band_from_outputs(outputs_of, *, setting: dict, prompts, seeds, classes=CLASSES, keep_outputs: bool = False,
                      card: str | None = None, progress=None) -> ImageBand:
    """The band from generations: ``outputs_of(prompt, seed, names)`` returns, per variant name (keys of
    ``VARIANTS``), ``(image, final latent)`` or an error text. Every pair within a class is measured; a variant
    that did not run is listed in the cell's ``missing``, and too few of them is an ``ImageBandError``."""
    classes = check_classes(classes)
    exact = list(VARIANTS[EXACT])
    low = list(VARIANTS[LOW_PRECISION]) if LOW_PRECISION in classes else []
    names = exact + low
    cells, kept = [], {}
    for prompt in prompts:
        for seed in seeds:
            got = outputs_of(prompt, seed, names)
            ran = {name: value for name, value in got.items() if isinstance(value, tuple)}
            missing = [name for name in names if name not in ran]
            if (low and all(name in missing for name in low)) or len([n for n in exact if n in ran]) < 2:
                errors = "; ".join(f"{name}: {got.get(name)}" for name in missing if got.get(name))
                raise ImageBandError(
                    f"the band's legitimate variants did not run on this pipeline ({errors or 'not generated'}); "
                    f"allow {', '.join(sorted({n.split(':')[0].split('#')[0] for n in names}))} on the model "
                    "(fluxlab.load_flux2(..., allowed=...)), or pass a band measured elsewhere with band=")
            pairs = []
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    kind = EXACT if a in exact and b in exact else LOW_PRECISION
                    if a in ran and b in ran and kind in classes:
                        pairs.append({"a": a, "b": b, "class": kind, **distances(*ran[b], *ran[a])})
            cells.append({"prompt": prompt, "seed": seed, "card": card, "pairs": pairs, "missing": missing})
            if keep_outputs and "reference" in ran:
                kept[f"{prompt}|{seed}"] = np.asarray(ran["reference"][1])
            if progress is not None:
                progress(prompt, seed)
    return ImageBand(dict(setting), list(prompts), list(seeds), {kind: dict(VARIANTS[kind]) for kind in classes},
                     cells, provenance=provenance(), cards=[card or setting.get("device")], outputs=kept)
