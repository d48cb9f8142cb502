"""N ranks vs 1 rank with the same backend: the same FLUX.2 forward (or tiny generation), metrics and a verdict.

Tolerance (``tolerance_for``): splitting the sequence changes only rounding, never the maths — Ulysses reorders the
tokens each kernel sums over; ring rounds each hop's partial output to the model dtype and merges them with the
log-sum-exp in float32. So the parallel output may differ from the single-rank output by about as much as a second,
independent exact kernel would: at most ``FACTOR`` (2) x the backend's own end-to-end error, measured in the same run
as the rel-L2 between the single-rank output and the single-rank output with float64 attention (``reference``);
for ``reference`` itself, the error of the platform's default exact kernel. ``FLOOR`` keeps a near-zero yardstick
(float32 on CPU) from demanding bit-identity.
"""

from __future__ import annotations

import dataclasses
import json
import platform as _host
import time

import torch
import torch.distributed as dist

from .. import util
from ..compare.metrics import error_stats
from ..platform import current_platform
from .checks import ParallelRefusedError, ParallelSpec, check_parallel

FACTOR = 2.0
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}
EXACT = "reference"  # float64 attention: the yardstick's other end
TARGETS = ("forward", "generate")
DTYPES = util.DTYPES  # "bf16" / "bfloat16" / ... -> torch dtype (one table for all of fluxlab)


def tolerance_for(own_error: float, dtype: torch.dtype) -> float:
    """rel-L2 the parallel run may differ from the single-rank run by (see the module docstring)."""
    return max(FACTOR * own_error, FLOOR[dtype])


@dataclasses.dataclass
class ParallelRow:
    """One (parallel mode, backend): its output against the single-rank output of the same backend."""

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
        return all(row.verdict == "pass" for row in self.rows)

    def as_dict(self) -> dict:
        return {"meta": self.meta, "rows": [row.as_dict() for row in self.rows], "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> ParallelComparison:
        """Back from ``as_dict``, a JSON file written by ``to_json`` or by benchmarks/parallel_flux2.py."""
        return cls([ParallelRow.from_dict(row) for row in data["rows"]], data["meta"])

    def to_json(self, path) -> None:
        util.atomic_write(path, json.dumps(self.as_dict(), indent=2) + "\n")

    def markdown(self) -> str:
        """A section for a report: what ran, the rule, one table row per (mode, backend)."""
        m = self.meta
        ms = lambda v: f"{v:.1f}" if v is not None else "–"  # noqa: E731
        lines = [f"{m['target']} of a {m['size']} FLUX.2 transformer at {m['height']}x{m['width']} "
                 f"({m['text_tokens']} text + {m['image_tokens']} image tokens), {m['dtype']}, "
                 f"{m['world_size']} ranks ({m['dist_backend']}) on {m['device']}.",
                 "",
                 f"Verdict: rel-L2 vs the 1-rank output of the same backend <= max({FACTOR:g} x the backend's own "
                 f"error vs float64 attention, {m['floor']:g}); every rank must get the same output.",
                 "",
                 "| parallel | backend | rel-L2 vs 1 rank | max abs | own error | tolerance | 1 rank ms | "
                 "N ranks ms | speedup | verdict |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.parallel} | {r.backend} | {r.rel_l2:.2e} | {r.max_abs:.2e} | {r.own_error:.2e} | "
                         f"{r.tolerance:.2e} | {ms(r.time_single_ms)} | {ms(r.time_parallel_ms)} | "
                         f"{f'{r.speedup:.2f}' if r.speedup else '–'} | **{r.verdict}**"
                         + ("" if r.ranks_agree else " (ranks disagree)") + " |")
        return "\n".join(lines)

    def table(self) -> str:
        """A plain-text table, one row per (mode, backend)."""
        m = self.meta
        head = (f"{m['target']} of a {m['size']} FLUX.2 transformer, {m['height']}x{m['width']} "
                f"({m['text_tokens']} text + {m['image_tokens']} image tokens), {m['dtype']}, on {m['device']}\n"
                f"verdict: rel_l2 vs 1 rank <= max({FACTOR:g} x the backend's own error vs float64 attention, "
                f"floor {FLOOR[DTYPES[m['dtype']]]:g})\n")
        lines = [f"{'parallel':<18}{'backend':<14}{'rel_l2':>10}{'max_abs':>10}{'own_err':>10}{'tol':>10}"
                 f"{'1 rank ms':>11}{'N ranks ms':>11}{'speedup':>9}  verdict"]
        for r in self.rows:
            ms = lambda v: f"{v:11.1f}" if v is not None else f"{'-':>11}"  # noqa: E731
            lines.append(f"{r.parallel:<18}{r.backend:<14}{r.rel_l2:10.2e}{r.max_abs:10.2e}{r.own_error:10.2e}"
                         f"{r.tolerance:10.2e}{ms(r.time_single_ms)}{ms(r.time_parallel_ms)}"
                         f"{(f'{r.speedup:9.2f}' if r.speedup else f'{chr(45):>9}')}  {r.verdict}"
                         + ("" if r.ranks_agree else " (ranks disagree!)"))
        return head + "\n".join(lines)


# ------------------------------------------------------------------------------------------ planning


def _cases(parallel, backends) -> list[tuple[ParallelSpec, str]]:
    specs = [ParallelSpec.parse(p) for p in ([parallel] if isinstance(parallel, (str, ParallelSpec)) else parallel)]
    names = [backends] if isinstance(backends, str) else list(backends)
    return [(spec, name) for spec in specs for name in names]


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
    reasons = []
    for spec, backend in cases:
        for reason in check_parallel(backend, spec, heads=config["num_attention_heads"],
                                     head_dim=config["attention_head_dim"], dtype=dtype, seq_lens=seq_lens,
                                     world_size=world_size, platform=platform):
            reasons.append(f"{spec} / {backend}: {reason}")
    return reasons


def compare_parallel(parallel="ulysses=2", backends="sdpa", *, cases=None, size: str = "tiny",
                     target: str = "forward", height: int | None = None, width: int | None = None,
                     text_tokens: int | None = None, dtype=None, steps: int = 4, seed: int = 0,
                     repeats: int | None = None, warmup: int | None = None, setup: str | None = None,
                     timeout_s: float = 600) -> ParallelComparison:
    """Run each (parallel mode, backend) on N ranks and on 1 rank, and judge the difference.

    ``parallel``: ``"ulysses=2"``, ``"ring=2"``, ``"ulysses=2,ring=2"`` or a list; ``backends``: a fluxlab backend
    name or a list; every mode runs with every backend, unless ``cases`` lists the ``(mode, backend)`` pairs.
    ``target``: ``"forward"`` (one transformer step with random weights; ``size`` "tiny" or "dev") or
    ``"generate"`` (the tiny offline pipeline, ``steps`` steps; the decoded image is compared). ``setup``:
    ``"module:function"`` each process calls first (e.g. to ``fluxlab.register_backend`` your kernel in the ranks
    too); it must tolerate being called twice in one process.
    Inside a torch.distributed job every rank calls this and it runs in place; otherwise it starts the ranks itself
    (gloo on CPU, NCCL with one GPU per rank). Refusals raise :class:`ParallelRefusedError` before anything runs.
    """
    payload = plan(parallel, backends, cases=cases, size=size, target=target, height=height, width=width,
                   text_tokens=text_tokens, dtype=dtype, steps=steps, seed=seed, repeats=repeats, warmup=warmup,
                   setup=setup)
    if dist.is_available() and dist.is_initialized():
        result = run_cases({**payload, "setup": None})  # plan() already ran it in this process
    else:
        from .launch import spawn

        result = spawn("fluxlab.parallel.compare:run_cases", payload, payload["ranks"], timeout_s=timeout_s)[0]
    return ParallelComparison.from_dict(result)


def plan(parallel="ulysses=2", backends="sdpa", *, cases=None, size="tiny", target="forward", height=None,
         width=None, text_tokens=None, dtype=None, steps=4, seed=0, repeats=None, warmup=None, setup=None) -> dict:
    """Check every case and return the payload each rank runs (``run_cases``); raises with every refusal."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    if setup is not None:
        _call(setup)
    pairs = ([(ParallelSpec.parse(p), b) for p, b in cases] if cases is not None else _cases(parallel, backends))
    gpu = torch.cuda.is_available()
    dtype = util.parse_dtype(dtype) if dtype is not None else (torch.bfloat16 if gpu else torch.float32)
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
            "dtype": str(dtype).split(".")[-1], "steps": steps, "seed": seed, "repeats": repeats, "warmup": warmup,
            "setup": setup}


def _call(target: str):
    import importlib

    module_name, _, fn_name = target.partition(":")
    return getattr(importlib.import_module(module_name), fn_name)()


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


def run_cases(payload: dict) -> dict:
    """Per-rank body of ``compare_parallel`` (and of benchmarks/parallel_flux2.py); every rank of the default
    process group calls it with the same payload. Returns rows and metadata (identical on every rank)."""
    from . import engine, launch

    rank, world_size, device = dist.get_rank(), dist.get_world_size(), _rank_device()
    dtype = DTYPES[payload["dtype"]]
    gpu = device.type == "cuda"
    repeats = payload["repeats"] if payload["repeats"] is not None else (3 if gpu else 1)
    warmup = payload["warmup"] if payload["warmup"] is not None else (1 if gpu else 0)
    if payload.get("setup"):
        _call(payload["setup"])
    cases = [(ParallelSpec.parse(p), b) for p, b in payload["cases"]]
    backends = list(dict.fromkeys([b for _, b in cases]))
    exact_partner = _default_exact(device)
    singles = list(dict.fromkeys(backends + [EXACT] + ([exact_partner] if EXACT in backends else [])))

    started = time.perf_counter()
    if payload["target"] == "generate":
        runner = _GenerateRunner(payload, device, dtype)
    else:
        runner = _ForwardRunner(payload, device, dtype)
    transformer = runner.transformer
    _check_same_weights(transformer, device)
    build_s = time.perf_counter() - started

    single, single_ms = {}, {}
    for backend in singles:  # every rank runs the single-rank baseline on its own device, no collectives
        engine.set_model_backend(transformer, backend)
        timed = backend in backends
        single[backend], single_ms[backend] = _timed(runner.run, device, repeats if timed else 1,
                                                     warmup if timed else 0)
        if not timed:
            single_ms[backend] = None

    rows = []
    for spec, backend in cases:
        launch.enable_sequence_parallel(transformer, backend, spec, seq_lens=runner.seq_lens, dtype=dtype)
        try:
            out, ms = _timed(runner.run, device, repeats, warmup)
        finally:
            launch.disable_sequence_parallel(transformer)
        agree = _all_ranks_equal(out)
        stats = error_stats(out, single[backend])
        own = error_stats(single[backend if backend != EXACT else exact_partner], single[EXACT]).rel_l2
        tolerance = tolerance_for(own, dtype)
        rows.append(dataclasses.asdict(ParallelRow(
            parallel=str(spec), backend=backend, ranks=world_size, rel_l2=stats.rel_l2, max_abs=stats.max_abs,
            cosine=stats.cosine, own_error=own, tolerance=tolerance,
            verdict="pass" if stats.rel_l2 <= tolerance and agree else "fail", ranks_agree=agree,
            time_single_ms=single_ms[backend], time_parallel_ms=ms)))
    engine.set_model_backend(transformer, None)
    meta = _meta(payload, device, world_size, runner, build_s, exact_partner)
    meta["engine_problems"] = engine.engine_problems()
    return {"rows": rows, "meta": meta, "rank": rank}


def _rank_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _meta(payload, device, world_size, runner, build_s, exact_partner) -> dict:
    versions = util.versions()
    names = []
    if device.type == "cuda":
        names = [None] * world_size
        dist.all_gather_object(names, torch.cuda.get_device_name(device))
    return {
        "target": payload["target"], "size": payload["size"], "height": payload["height"],
        "width": payload["width"], "text_tokens": runner.seq_lens["text"], "image_tokens": runner.seq_lens["image"],
        "dtype": payload["dtype"], "steps": payload["steps"] if payload["target"] == "generate" else None,
        "seed": payload["seed"], "world_size": world_size, "device": names[0] if names else f"cpu ({_host.machine()})",
        "devices": names or ["cpu"] * world_size, "dist_backend": dist.get_backend(),
        "torch": versions["torch"], "diffusers": versions["diffusers"], "platform": current_platform().describe(),
        "versions": versions, "git": util.git_revision(),
        "build_s": round(build_s, 2), "exact_partner": exact_partner, "factor": FACTOR,
        "floor": FLOOR[DTYPES[payload["dtype"]]],
    }


class _ForwardRunner:
    """One transformer step with random weights."""

    def __init__(self, payload, device, dtype):
        from . import model

        self.transformer = model.build_transformer(payload["size"], device=device, dtype=dtype,
                                                   seed=payload["seed"])
        self.inputs = model.transformer_inputs(self.transformer, height=payload["height"], width=payload["width"],
                                               text_tokens=payload["text_tokens"], seed=payload["seed"] + 1,
                                               device=device, dtype=dtype)
        self.seq_lens = self.inputs.seq_lens
        self._run = model.run_transformer

    def run(self) -> torch.Tensor:
        return self._run(self.transformer, self.inputs)


class _GenerateRunner:
    """A whole tiny FLUX.2 [dev] generation (text encoder, denoising loop, VAE decode); the image is compared."""

    PROMPT = "a red fox in the snow"

    def __init__(self, payload, device, dtype):
        from ..models.tiny import build_tiny_pipeline
        from .model import image_tokens

        self.pipe = build_tiny_pipeline("dev", seed=payload["seed"], dtype=dtype).to(device)
        self.transformer = self.pipe.transformer
        self.payload = payload
        self.device = device
        self.seq_lens = {"text": payload["text_tokens"], "image": image_tokens(payload["height"], payload["width"])}

    def run(self) -> torch.Tensor:
        p = self.payload
        generator = torch.Generator("cpu").manual_seed(p["seed"])
        with torch.no_grad():
            return self.pipe(prompt=self.PROMPT, height=p["height"], width=p["width"],
                             num_inference_steps=p["steps"], max_sequence_length=p["text_tokens"],
                             generator=generator, output_type="pt").images
