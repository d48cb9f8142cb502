"""N ranks vs 1 rank and vs one device's float64: the same FLUX.2 forward (or tiny generation), metrics, a verdict.
N ranks may differ by about as much as a second exact kernel would (``tolerance_for``; the rule: docs/parallel.md).
"""

from __future__ import annotations

import dataclasses
import json
import platform as _host
import time
import warnings

import torch
import torch.distributed as dist

from .. import util
from ..compare.metrics import error_stats
from ..compare.tolerances import FAIL, PASS
from ..platform import current_platform
from ..results import markdown_table
from .checks import ParallelRefusedError, ParallelSpec, check_parallel
from .launch import import_target, spawn
from .lse import LseWarning, probe, ring_reason

FACTOR = 2.0
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}
EXACT = "reference"  # float64 attention: the yardstick's other end
TARGETS = ("forward", "generate")
DTYPES = util.DTYPES  # "bf16" / "bfloat16" / ... -> torch dtype (one table for all of fluxlab)
PROMPT = "a red fox in the snow"  # of target="generate"


def tolerance_for(own_error: float, dtype: torch.dtype) -> float:
    """rel-L2 a parallel run may differ by: ``FACTOR`` x the backend's own 1-rank error vs float64, at least
    ``FLOOR`` (so a near-zero yardstick does not demand bit-identity)."""
    return max(FACTOR * own_error, FLOOR[dtype])


@dataclasses.dataclass
class ParallelRow:
    """One (parallel mode, backend): its N-rank output against its 1-rank output and against float64."""

    parallel: str
    backend: str
    ranks: int
    rel_l2: float  # parallel vs single rank, same backend
    max_abs: float
    cosine: float
    own_error: float  # single rank vs single rank with float64 attention: the yardstick
    tolerance: float
    verdict: str  # "pass" | "fail"
    ranks_agree: bool  # every rank got the bit-identical gathered output
    time_single_ms: float | None = None
    time_parallel_ms: float | None = None
    ulysses: int | None = None  # the degrees of ``parallel``, as columns
    ring: int | None = None
    # Against float64 (older result files lack these: None):
    single_error: float | None = None  # 1 rank vs 1 rank with float64 attention (0 for ``reference`` itself)
    single_tolerance: float | None = None  # max(FACTOR x the platform's default exact kernel's error, floor)
    single_verdict: str | None = None  # the backend on one device: "pass" | "fail"
    fp64_rel_l2: float | None = None  # N ranks vs 1 rank with float64 attention
    growth: float | None = None  # fp64_rel_l2 / own_error: how much further from float64 N ranks are than 1 rank
    lse_check: str | None = None  # under ring: does the backend's LSE follow the contract (fluxlab.parallel.lse)
    why: str | None = None  # a failed verdict's reasons, one sentence each

    @property
    def speedup(self) -> float | None:
        if self.time_single_ms and self.time_parallel_ms:
            return self.time_single_ms / self.time_parallel_ms
        return None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"speedup": self.speedup}

    @classmethod
    def from_dict(cls, data: dict) -> ParallelRow:
        """Back from ``as_dict`` / JSON (derived keys such as ``speedup`` are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class ParallelComparison:
    rows: list[ParallelRow]
    meta: dict

    @property
    def passed(self) -> bool:
        return all(row.verdict == PASS for row in self.rows)

    def as_dict(self) -> dict:
        return {"meta": self.meta, "rows": [row.as_dict() for row in self.rows], "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> ParallelComparison:
        """Back from ``as_dict``, a JSON file written by ``to_json`` or by benchmarks/parallel_flux2.py."""
        return cls([ParallelRow.from_dict(row) for row in data["rows"]], data["meta"])

    def to_json(self, path) -> None:
        util.atomic_write(path, json.dumps(self.as_dict(), indent=2) + "\n")

    def _sections(self) -> tuple[str, str, str, list[ParallelRow]]:
        """What ran, the rule, the table (one row per backend and degrees) and the failed rows with reasons."""
        m = self.meta
        setup = (f"{m['target']} of a {m['size']} FLUX.2 transformer at {m['height']}x{m['width']} "
                 f"({m['text_tokens']} text + {m['image_tokens']} image tokens), {m['dtype']}, "
                 f"{m['world_size']} ranks ({m['dist_backend']}) on {m['device']}.")
        rule = RULE_TEXT.format(factor=FACTOR, floor=m.get("floor", FLOOR[DTYPES[m["dtype"]]]),
                                partner=m.get("exact_partner"))
        rows = [{"parallel": r.parallel, "backend": r.backend, "ulysses": _cell(r.ulysses, "d"),
                 "ring": _cell(r.ring, "d"), "1 rank vs float64": _cell(r.single_error),
                 "1 rank": r.single_verdict or "–", "rel-L2 vs 1 rank": _cell(r.rel_l2),
                 "N ranks vs float64": _cell(r.fp64_rel_l2), "growth": _cell(r.growth, ".2f", "×"),
                 "tolerance": _cell(r.tolerance), "1 rank ms": _cell(r.time_single_ms, ".1f"),
                 "N ranks ms": _cell(r.time_parallel_ms, ".1f"), "speedup": _cell(r.speedup, ".2f"),
                 "verdict": f"**{r.verdict}**" + ("" if r.ranks_agree else " (ranks disagree)")} for r in self.rows]
        return setup, rule, markdown_table(rows).rstrip(), [r for r in self.rows if r.verdict != PASS and r.why]

    def markdown(self) -> str:
        """A section for a report: what ran, the rules, the table, then every failed row's reasons."""
        setup, rule, table, failed = self._sections()
        why = [f"- {r.parallel} / {r.backend}: {r.why}" for r in failed]
        return "\n".join([setup, "", f"Verdict: {rule}", "", table] + (["", "Why:", *why] if why else []))

    def table(self) -> str:
        """What ``fluxlab parallel compare`` prints: the same table, each failed row's reasons below it."""
        setup, rule, table, failed = self._sections()
        return "\n".join([setup, f"verdict: {rule}", table]
                         + [f"why {r.parallel} / {r.backend} fails: {r.why}" for r in failed])


RULE_TEXT = ("the backend on one device within max({factor:g} x the default exact kernel's ({partner}) error vs "
             "float64 attention, {floor:g}) of float64; N ranks within max({factor:g} x the backend's own 1-rank error "
             "vs float64, {floor:g}) of both its 1-rank output and the single-device float64 output; every rank gets "
             "the same output. growth = (N ranks vs float64) / (1 rank vs float64).")


def _cell(value, fmt: str = ".2e", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{suffix}"


# ------------------------------------------------------------------------------------------ planning


def _shape(size: str, target: str, height, width, text_tokens):
    from .model import TEXT_TOKENS

    if target == "generate":
        if size != "tiny":
            raise ValueError("target='generate' runs fluxlab's tiny offline pipeline; use size='tiny' (or "
                             "target='forward' for the [dev]-size transformer)")
        return height or 64, width or 64, text_tokens or TEXT_TOKENS  # = the pipeline's max_sequence_length
    if size == "tiny":
        return height or 128, width or 128, text_tokens or 32
    return height or 1024, width or 1024, text_tokens or TEXT_TOKENS


def plan_reasons(cases, *, size, height, width, text_tokens, dtype, world_size=None, platform=None) -> list[str]:
    """Every refusal for every case, before any process starts."""
    from .model import TRANSFORMER_CONFIGS, image_tokens

    config = TRANSFORMER_CONFIGS[size]
    seq_lens = {"text": text_tokens, "image": image_tokens(height, width)}
    return [f"{spec} / {backend}: {reason}" for spec, backend in cases
            for reason in check_parallel(backend, spec, heads=config["num_attention_heads"],
                                         head_dim=config["attention_head_dim"], dtype=dtype, seq_lens=seq_lens,
                                         world_size=world_size, platform=platform)]


def compare_parallel(parallel="ulysses=2", backends="sdpa", *, cases=None, size: str = "tiny",
                     target: str = "forward", height: int | None = None, width: int | None = None,
                     text_tokens: int | None = None, dtype=None, steps: int = 4, seed: int = 0,
                     repeats: int | None = None, warmup: int | None = None, setup: str | None = None,
                     timeout_s: float = 600) -> ParallelComparison:
    """Run each (parallel mode, backend) on N ranks and on 1 rank and ``judge`` the N-rank output.

    ``parallel``: a mode (``"ulysses=2"``, ``"ring=2"``, ``"ulysses=2,ring=2"``) or a list, each with every one of
    ``backends`` unless ``cases`` lists ``(mode, backend)`` pairs. ``target``: ``"forward"`` (one random-weight
    transformer step of ``size`` "tiny" or "dev") or ``"generate"`` (the tiny offline pipeline's image). ``setup``:
    ``"module:function"`` every process calls first (e.g. to register your kernel). Runs in place inside a
    torch.distributed job, else spawns the ranks. Refusals raise :class:`ParallelRefusedError` before anything runs.
    """
    payload = plan(parallel, backends, cases=cases, size=size, target=target, height=height, width=width,
                   text_tokens=text_tokens, dtype=dtype, steps=steps, seed=seed, repeats=repeats, warmup=warmup,
                   setup=setup)
    if dist.is_available() and dist.is_initialized():
        result = run_cases({**payload, "setup": None})  # plan() already ran it in this process
    else:
        result = spawn("fluxlab.parallel.compare:run_cases", payload, payload["ranks"], timeout_s=timeout_s)[0]
    return ParallelComparison.from_dict(result)


def plan(parallel="ulysses=2", backends="sdpa", *, cases=None, size="tiny", target="forward", height=None,
         width=None, text_tokens=None, dtype=None, steps=4, seed=0, repeats=None, warmup=None, setup=None) -> dict:
    """Check every case and return the payload each rank runs (``run_cases``); raises with every refusal."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    if setup is not None:
        import_target(setup)()
    if cases is None:  # every mode with every backend
        modes = [parallel] if isinstance(parallel, (str, ParallelSpec)) else parallel
        cases = [(mode, name) for mode in modes for name in ([backends] if isinstance(backends, str) else backends)]
    pairs = [(ParallelSpec.parse(mode), backend) for mode, backend in cases]
    dtype = util.parse_dtype(dtype) if dtype is not None else (
        torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    height, width, text_tokens = _shape(size, target, height, width, text_tokens)
    inside = dist.is_available() and dist.is_initialized()
    reasons = plan_reasons(pairs, size=size, height=height, width=width, text_tokens=text_tokens, dtype=dtype,
                           world_size=dist.get_world_size() if inside else None)
    degrees = sorted({spec.degree for spec, _ in pairs})
    if len(degrees) > 1:
        reasons.append(f"modes with different rank counts ({', '.join(map(str, degrees))}) cannot share one job: "
                       "compare them in separate calls")
    if reasons:
        raise ParallelRefusedError(reasons, "this parallel comparison")
    return {"cases": [(str(spec), backend) for spec, backend in pairs], "ranks": degrees[0], "size": size,
            "target": target, "height": height, "width": width, "text_tokens": text_tokens,
            "dtype": util.torch_dtype_name(dtype), "steps": steps, "seed": seed, "repeats": repeats,
            "warmup": warmup, "setup": setup}


# ------------------------------------------------------------------------------------------ on each rank


def _timed(fn, device, repeats: int, warmup: int):
    """``fn()``'s last output and the median wall time of ``repeats`` runs (ms), all ranks starting together."""
    barrier = dist.barrier if dist.is_initialized() else None
    timing = util.time_calls(fn, warmup=warmup, repeats=max(1, repeats), device=device, before_each=barrier)
    return timing.result, timing.median_ms


def _all_ranks_equal(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return all(torch.equal(gathered[0], t) for t in gathered[1:])


def _check_same_weights(model, device) -> None:
    """Each rank built its own copy from the same seed; make sure they really are the same."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, p in enumerate(model.parameters()):
        total[i % 2] += p.detach().sum(dtype=torch.float64)
    if not _all_ranks_equal(total):
        raise RuntimeError("the ranks built different weights from the same seed (non-deterministic init on this "
                           "device?); fluxlab.parallel.model.build_transformer must give identical copies")


def _default_exact(device) -> str:
    from ..dispatch import default_backend

    return default_backend(torch.empty(1, 8, 2, 16, device="meta")) if device.type == "cpu" else (
        default_backend() or "sdpa")


def _build(p: dict, device, dtype):
    """(transformer, run() -> output, seq_lens): one random-weight transformer step, or a whole tiny FLUX.2 [dev]
    generation (text encoder, denoising loop, VAE decode) whose image is compared."""
    from . import model

    if p["target"] == "forward":
        transformer = model.build_transformer(p["size"], device=device, dtype=dtype, seed=p["seed"])
        inputs = model.transformer_inputs(transformer, height=p["height"], width=p["width"],
                                          text_tokens=p["text_tokens"], seed=p["seed"] + 1, device=device, dtype=dtype)
        return transformer, lambda: model.run_transformer(transformer, inputs), inputs.seq_lens
    from ..models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("dev", seed=p["seed"], dtype=dtype).to(device)

    def generate() -> torch.Tensor:
        with torch.no_grad():
            return pipe(prompt=PROMPT, height=p["height"], width=p["width"], num_inference_steps=p["steps"],
                        max_sequence_length=p["text_tokens"], generator=torch.Generator("cpu").manual_seed(p["seed"]),
                        output_type="pt").images

    return pipe.transformer, generate, {"text": p["text_tokens"], "image": model.image_tokens(p["height"], p["width"])}


def run_cases(payload: dict) -> dict:
    """Per-rank body of ``compare_parallel`` (and of benchmarks/parallel_flux2.py); every rank of the default
    process group calls it with the same payload. Returns rows and metadata (identical on every rank)."""
    from . import engine, launch

    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    dtype, gpu = DTYPES[payload["dtype"]], device.type == "cuda"
    repeats = payload["repeats"] if payload["repeats"] is not None else (3 if gpu else 1)
    warmup = payload["warmup"] if payload["warmup"] is not None else (1 if gpu else 0)
    if payload.get("setup"):
        import_target(payload["setup"])()
    cases = [(ParallelSpec.parse(p), b) for p, b in payload["cases"]]
    backends = list(dict.fromkeys([b for _, b in cases]))
    exact_partner = _default_exact(device)

    started = time.perf_counter()
    transformer, run, seq_lens = _build(payload, device, dtype)
    _check_same_weights(transformer, device)
    build_s = time.perf_counter() - started

    single, single_ms = {}, {}
    for backend in dict.fromkeys(backends + [EXACT, exact_partner]):  # 1 rank on each rank's device: no collectives
        engine.set_model_backend(transformer, backend)
        timed = backend in backends
        single[backend], ms = _timed(run, device, repeats if timed else 1, warmup if timed else 0)
        single_ms[backend] = ms if timed else None

    head_dim = int(transformer.config.attention_head_dim)
    lse_checks = {backend: probe(backend, device, dtype, head_dim) for backend in backends
                  if any(spec.ring > 1 and b == backend for spec, b in cases)}
    partner_error = error_stats(single[exact_partner], single[EXACT]).rel_l2
    rows = []
    for spec, backend in cases:
        with warnings.catch_warnings():  # the row carries the LSE diagnosis itself
            warnings.simplefilter("ignore", LseWarning)
            launch.enable_sequence_parallel(transformer, backend, spec, seq_lens=seq_lens, dtype=dtype)
        try:
            out, ms = _timed(run, device, repeats, warmup)
        finally:
            launch.disable_sequence_parallel(transformer)
        rows.append(dataclasses.asdict(judge(
            spec, backend, out, single[backend], single[EXACT], partner_error, dtype, world_size,
            agree=_all_ranks_equal(out), lse=lse_checks.get(backend), time_single_ms=single_ms[backend],
            time_parallel_ms=ms)))
    engine.set_model_backend(transformer, None)
    meta = _meta(payload, device, world_size, seq_lens, build_s, exact_partner)
    return {"rows": rows, "meta": meta | {"engine_problems": engine.engine_problems()}, "rank": rank}


def judge(spec: ParallelSpec, backend: str, out: torch.Tensor, single: torch.Tensor, exact: torch.Tensor,
          partner_error: float, dtype: torch.dtype, ranks: int, *, agree: bool = True, lse=None,
          time_single_ms=None, time_parallel_ms=None) -> ParallelRow:
    """The verdict of one case (rules 1-4 of docs/parallel.md). ``out``: N ranks; ``single``: 1 rank, same backend;
    ``exact``: 1 rank, float64 attention; ``partner_error``: the platform's default exact kernel's 1-rank error vs
    ``exact``, the yardstick of the single-device rule and of ``reference``'s own error."""
    stats = error_stats(out, single)
    single_error = error_stats(single, exact).rel_l2
    own = partner_error if backend == EXACT else single_error
    tolerance, single_tolerance = tolerance_for(own, dtype), tolerance_for(partner_error, dtype)
    fp64 = error_stats(out, exact).rel_l2
    why = []
    if single_error > single_tolerance:
        why.append(f"on one device it is {single_error:.2e} from float64 attention, beyond {single_tolerance:.2e} "
                   "(2 x the default exact kernel's error)")
    if stats.rel_l2 > tolerance:
        why.append(f"{spec} is {stats.rel_l2:.2e} from the 1-rank output of the same backend, beyond {tolerance:.2e}")
    if fp64 > tolerance:
        why.append(f"{spec} is {fp64:.2e} from the single-device float64 output (1 rank: {single_error:.2e}), beyond "
                   f"{tolerance:.2e}")
    if not agree:
        why.append("the ranks received different outputs")
    if why and lse is not None and not lse.ok:
        why.append(ring_reason(lse))
    return ParallelRow(
        parallel=str(spec), backend=backend, ranks=ranks, rel_l2=stats.rel_l2, max_abs=stats.max_abs,
        cosine=stats.cosine, own_error=own, tolerance=tolerance, verdict=FAIL if why else PASS,
        ranks_agree=agree, time_single_ms=time_single_ms, time_parallel_ms=time_parallel_ms, ulysses=spec.ulysses,
        ring=spec.ring, single_error=single_error, single_tolerance=single_tolerance,
        single_verdict=PASS if single_error <= single_tolerance else FAIL, fp64_rel_l2=fp64,
        growth=fp64 / own if own else None, lse_check=lse.describe() if lse is not None else None,
        why="; ".join(why) or None)


def _meta(payload, device, world_size, seq_lens, build_s, exact_partner) -> dict:
    versions = util.versions()
    names = [None] * world_size if device.type == "cuda" else []
    if names:
        dist.all_gather_object(names, torch.cuda.get_device_name(device))
    return {**{k: payload[k] for k in ("target", "size", "height", "width")}, "text_tokens": seq_lens["text"],
            "image_tokens": seq_lens["image"], "dtype": payload["dtype"],
            "steps": payload["steps"] if payload["target"] == "generate" else None, "seed": payload["seed"],
            "world_size": world_size, "device": names[0] if names else f"cpu ({_host.machine()})",
            "devices": names or ["cpu"] * world_size, "dist_backend": dist.get_backend(),
            "torch": versions["torch"], "diffusers": versions["diffusers"], "platform": current_platform().describe(),
            "versions": versions, "git": util.git_revision(), "build_s": round(build_s, 2),
            "exact_partner": exact_partner, "factor": FACTOR, "floor": FLOOR[DTYPES[payload["dtype"]]]}
