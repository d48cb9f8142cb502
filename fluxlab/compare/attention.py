"""``compare_attention``: every backend on every input against float64, judged against torch's own error; records
replayed from another machine (``replay``) and a pipeline's own captured calls (``compare_captured``) go through it.
A kernel that raises or returns NaN/inf/wrong shapes is a failed row (out of memory: skipped); the sweep finishes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch

from .. import registry
from ..backends.reference import reference_attention
from ..dispatch import plan
from ..errors import BackendUnavailableError, InvalidInputError, UnknownBackendError
from ..models.capture import capture
from ..platform import platform_for_device
from ..record import AttentionRecord
from ..util import parse_dtype, time_calls, torch_dtype_name
from .gate import BASELINE_NAME, Yardstick, baseline_attention, comparable, judge_attention
from .inputs import AttentionCase, InputSpec, count_cases, default_inputs, iter_cases, record_case
from .metrics import error_map, error_stats
from .report import ComparisonReport, ComparisonRow
from .specs import BackendSpec, parse_backends
from .tolerances import FAIL, SKIP, judge_lse, worst, yardstick_ratios

GPU_TIMING_REPEATS = 5
# float64 scores held at once by the reference (read at call time; tests shrink it to prove the chunking).
REFERENCE_BUDGET_ELEMENTS = 2**26
CAPTURE_PROMPT = "a red circle at the top left on a blue background"  # a caption the embedded model was trained on
MANIFEST_KEYS = ("platform_description", "platform", "versions", "git", "backends", "created_utc")


def compare_attention(inputs=None, backends=None, reference: str = "reference", *, dtype=torch.bfloat16,
                      dtypes: Iterable | None = None, seeds: Iterable[int] = (0,), device=None,
                      progress: bool = True, timing_repeats: int | None = None,
                      error_maps: bool = True) -> ComparisonReport:
    """Compare attention backends with the exact (float64) answer, input by input (docs/compare.md).

    inputs: None (``inputs.default_inputs`` for this machine), a list of ``InputSpec`` / ``AttentionRecord`` /
        ``AttentionCase``, or a folder written by ``save_records`` (as ``replay``). A record's own output is
        judged too (row "recorded:<backend>") and fills every backend's ``rel_l2_vs_recorded``.
    backends: None (every backend that runs here, except the reference), or specs such as ``"sdpa:cudnn=0"``.
    reference: "reference" (fluxlab's chunked float64 attention) or another backend, run on float64 copies.
    dtype / dtypes: the dtype(s) synthetic inputs are drawn in (``dtypes=("bf16", "fp16")`` is an axis).
    """
    manifest = None
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if inputs is None:
        inputs = default_inputs(device.type)
    elif isinstance(inputs, (str, os.PathLike)):
        from .records import load_records, recorded_on

        records, manifest = load_records(inputs)
        inputs = [record_case(r, i, recorded_on=recorded_on(manifest)) for i, r in enumerate(records)]
    elif isinstance(inputs, (InputSpec, AttentionRecord, AttentionCase)):
        inputs = [inputs]
    inputs = list(inputs)
    dtypes = tuple(parse_dtype(d) for d in (dtypes if dtypes is not None else (dtype,)))
    seeds = tuple(seeds)
    platform = platform_for_device(device)
    specs = parse_backends(backends, platform)
    reference_fn = _reference_fn(reference)

    from ..terminal import progress_bar  # a bar on a terminal or in a notebook, log lines in pipes

    total = count_cases(inputs, len(dtypes), len(seeds)) * (len(specs) + 1)
    bar = progress_bar(total=total, desc="compare_attention", unit="run", leave=False, disable=not progress)
    rows: list[ComparisonRow] = []
    try:
        for case in iter_cases(inputs, dtypes, seeds, device):
            case = _on_device(case, device)
            bar.set_postfix_str(f"{case.name} {case.dtype_name}: reference")
            rows.extend(_compare_case(case, specs, reference_fn, platform, timing_repeats, error_maps, bar))
            bar.update(1)
    finally:
        bar.close()
    report = ComparisonReport(rows, reference=reference if reference != "reference" else "fluxlab reference_attention",
                              baseline=BASELINE_NAME, platform=platform.as_dict(),
                              meta={"dtypes": [torch_dtype_name(d) for d in dtypes], "seeds": list(seeds),
                                    "backends": [s.label for s in specs], "device": str(device)})
    if manifest is not None:  # the other machine's platform, versions and git revision
        report.meta["recorded"] = {key: manifest.get(key) for key in MANIFEST_KEYS}
        report.meta["recorded_results"] = manifest.get("results")
    return report


def replay(path, backends=None, **compare_kwargs) -> ComparisonReport:
    """Compare ``backends`` (default: every backend that runs here) on the records saved at ``path`` (recorded on
    another machine): each recorded output gets its own row ``recorded:<backend>@<machine>``, judged by the same
    rule, and ``meta["recorded"]`` holds that machine's manifest. A missing, damaged or edited folder, or a record
    ``fluxlab.attention`` would refuse, raises before anything runs (``load_records``, ``record_case``)."""
    return compare_attention(os.fspath(path), backends, **compare_kwargs)


def compare_captured(pipe, backends=None, *, prompt: str = CAPTURE_PROMPT, steps: int = 4, seed: int = 0,
                     layers=None, capture_steps=None, height: int = 64, width: int = 64, dtype=None,
                     pipe_kwargs: dict | None = None, **compare_kwargs) -> ComparisonReport:
    """Generate once with ``pipe`` while capturing every attention call (``layers`` / ``capture_steps``: as
    ``fluxlab.capture``'s), then judge ``backends`` on each captured q/k/v (``compare_attention``). ``dtype``: cast
    the captured q/k/v to it (the recorded outputs are then left out). ``report.closest_to_failing()`` lists the
    layer/step inputs nearest a fail. ``pipe_kwargs``: more arguments for the pipeline call."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with capture(pipe, layers=layers, steps=capture_steps) as captured:
        pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, output_type="np",
             generator=generator, **(pipe_kwargs or {}))
    records = list(captured)
    if dtype is not None:
        cast = parse_dtype(dtype)
        records = [dataclasses.replace(r, q=r.q.to(cast), k=r.k.to(cast), v=r.v.to(cast), out=None, lse=None)
                   for r in records]
    report = compare_attention(records, backends, **compare_kwargs)
    report.meta["captured"] = {"prompt": prompt, "steps": steps, "seed": seed, "height": height, "width": width,
                               "calls": len(records),
                               "dtype": torch_dtype_name(records[0].q.dtype) if records else None}
    return report


def _on_device(case: AttentionCase, device) -> AttentionCase:
    if case.q.device == device or (device.index is None and case.q.device.type == device.type):
        return case
    moved = {name: getattr(case, name).to(device) for name in ("q", "k", "v", "recorded_out", "recorded_lse")
             if getattr(case, name) is not None}
    return dataclasses.replace(case, **moved)


def _reference_fn(reference: str):
    if reference in ("reference", "float64"):
        def exact(q, k, v, *, scale, causal):
            return reference_attention(q, k, v, scale=scale, causal=causal, return_lse=True,
                                       budget_elements=REFERENCE_BUDGET_ELEMENTS)
        return exact
    backend = registry.get_backend(reference)
    with_lse = backend.caps.returns_lse

    def other(q, k, v, *, scale, causal):
        q, k, v = (t.double() for t in (q, k, v))
        result = plan(q, k, v, backend=backend.name, scale=scale, causal=causal,
                      return_lse=with_lse)(q, k, v, check_finite=False)
        return result if with_lse else (result, None)
    return other


def _yardstick(case, ref) -> Yardstick:
    """The input's yardstick, once for every backend (``compare.gate``)."""
    baseline_out = baseline_attention(case.q, case.k, case.v, scale=case.scale, causal=case.causal)
    return Yardstick(ref, baseline_out, case.q.dtype, text_tokens=case.text_tokens)


def _compare_case(case, specs, reference_fn, platform, timing_repeats, with_maps, bar) -> list[ComparisonRow]:
    ref, ref_lse = reference_fn(case.q, case.k, case.v, scale=case.scale, causal=case.causal)
    yardstick = _yardstick(case, ref)
    rows = []
    if case.recorded_out is not None:
        rows.append(_recorded_row(case, yardstick, with_maps))
    as_bf16 = None
    for spec in specs:
        bar.set_postfix_str(f"{case.name} {case.dtype_name}: {spec.label}")
        if _judged_in_bf16(spec, case):
            as_bf16 = as_bf16 or _bf16_case(case, reference_fn)
            rows.append(_run_one(spec, *as_bf16, platform, timing_repeats, with_maps))
        else:
            rows.append(_run_one(spec, case, yardstick, ref_lse, platform, timing_repeats, with_maps))
        bar.update(1)
        if case.q.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _judged_in_bf16(spec, case) -> bool:
    """An emulated kernel models a bf16 kernel: on float32/float64 inputs it rounds them to bf16 and returns bf16
    values, so it is judged as that kernel would be, on the bf16 inputs, with bf16's yardstick."""
    return registry.get_backend(spec.name).caps.emulated and case.q.dtype not in (torch.float16, torch.bfloat16)


def _bf16_case(case, reference_fn):
    half = dataclasses.replace(case, q=case.q.to(torch.bfloat16), k=case.k.to(torch.bfloat16),
                               v=case.v.to(torch.bfloat16))
    ref, ref_lse = reference_fn(half.q, half.k, half.v, scale=half.scale, causal=half.causal)
    return half, _yardstick(half, ref), ref_lse


def _new_row(label, case, yardstick: Yardstick, quantised=False, source=None):
    baseline, rounding = yardstick.baseline, yardstick.rounding
    return ComparisonRow(
        backend=label, input=case.name, dtype=case.dtype_name, shape=case.shape, source=source or case.source,
        seed=case.seed, quantised=quantised, baseline_max_abs=baseline.max_abs, baseline_mean_abs=baseline.mean_abs,
        baseline_rel_l2=baseline.rel_l2, baseline_cosine=baseline.cosine, rounding_rel_l2=rounding.rel_l2,
        rounding_max_abs=rounding.max_abs)


def _judge(row: ComparisonRow, case, out, yardstick: Yardstick, lse, ref_lse, with_maps):
    """Fill the error numbers and the verdict of ``row`` from ``out`` (and ``lse``): the one rule of
    ``gate.judge_attention`` (error size against the yardstick, bias, NaN/inf structure, worst slices, flips)."""
    ref = yardstick.ref
    if tuple(out.shape) != tuple(ref.shape):
        row.verdict, row.error = FAIL, f"wrong output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
        return row
    judgement = judge_attention(out, yardstick, quantised=row.quantised)
    stats = judgement.size
    row.max_abs, row.mean_abs, row.rel_l2, row.cosine = stats.max_abs, stats.mean_abs, stats.rel_l2, stats.cosine
    row.rel_l2_ratio, row.max_abs_ratio = yardstick_ratios(stats, yardstick.baseline, yardstick.rounding)
    row.set_gate(judgement.stats, judgement.biased)
    row.fail_fraction, row.closest_rule = judgement.fail_fraction, judgement.closest_rule
    verdicts, notes = [judgement.verdict], list(judgement.notes)
    if judgement.stats.nonfinite_where_finite:
        nan = torch.isnan(out).sum().item()
        bad = (~torch.isfinite(out)).sum().item()
        row.error = f"output has {nan} NaN and {bad - nan} inf values (of {out.numel()})"
    if lse is not None and ref_lse is not None:
        row.lse_max_abs = (lse.double() - ref_lse.double()).abs().max().item()
        lse_verdict, lse_note = judge_lse(row.lse_max_abs, case.dtype_name, row.quantised)
        verdicts.append(lse_verdict)
        notes.append(lse_note)
    if case.recorded_out is not None and row.source != "recorded output":
        row.rel_l2_vs_recorded = error_stats(out, case.recorded_out).rel_l2
    if with_maps:
        emap = error_map(*comparable(out, yardstick), text_tokens=case.text_tokens)
        row.error_map = emap
        row.worst_head, row.worst_token = emap.worst_head, emap.worst_token
        row.worst_head_rel_l2 = float(emap.per_head[emap.worst_head])
        row.worst_token_rel_l2 = float(emap.per_token[emap.worst_token])
        if worst(verdicts) != "pass":
            notes.append(emap.summary())
    row.verdict = worst(verdicts)
    row.notes = "; ".join(notes)
    return row


def _recorded_row(case, yardstick, with_maps) -> ComparisonRow:
    backend = case.recorded_backend or "unknown"
    try:
        quantised = registry.get_backend(backend).caps.quantised
    except UnknownBackendError:
        quantised = False
    label = f"recorded:{backend}" + (f"@{case.recorded_on}" if case.recorded_on else "")
    row = _new_row(label, case, yardstick, quantised, source="recorded output")
    out = case.recorded_out
    if out.dtype != case.q.dtype:
        out = out.to(case.q.dtype)
    return _judge(row, case, out, yardstick, case.recorded_lse, None, with_maps)


def _run_one(spec: BackendSpec, case, yardstick, ref_lse, platform, timing_repeats, with_maps) -> ComparisonRow:
    backend = registry.get_backend(spec.name)
    row = _new_row(spec.label, case, yardstick, backend.caps.quantised)
    row.emulates = backend.caps.emulates  # an emulator's row names the real kernel it models
    want_lse = backend.caps.returns_lse
    try:  # the same Plan fluxlab.attention would make: one answer to "what runs", kernel bound once
        run = plan(case.q, case.k, case.v, backend=spec.choice, scale=case.scale, causal=case.causal,
                   return_lse=want_lse, fallback=False, platform=platform)
    except BackendUnavailableError as exc:
        reasons = [r for rs in exc.reasons.values() for r in rs] or [str(exc)]
        row.verdict, row.error = SKIP, "; ".join(reasons)
        return row
    except InvalidInputError as exc:  # e.g. a scale that overflows: every kernel would be wrong
        row.verdict, row.error = FAIL, _error_text(exc)
        return row
    device = case.q.device
    repeats = timing_repeats if timing_repeats is not None else (GPU_TIMING_REPEATS if device.type == "cuda" else 0)
    try:  # the plan holds the spec's torch knobs (e.g. cudnn=0) around each call itself
        first = time_calls(lambda: run(case.q, case.k, case.v, check_finite=False), warmup=0, repeats=1,
                           device=device)
        result, times_ms = first.result, first.times_ms
        if repeats:  # on GPU: the first call warmed up (compilation, autotuning); time the repeats
            times_ms = time_calls(lambda: run(case.q, case.k, case.v, check_finite=False), warmup=0, repeats=repeats,
                                  device=device).times_ms
    except torch.OutOfMemoryError as exc:  # a capacity limit at this shape, not a numerical verdict
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row.verdict, row.error = SKIP, "out of memory at this shape: " + _error_text(exc, 200)
        return row
    except Exception as exc:  # noqa: BLE001 - any failure of a kernel is a failed row, the sweep goes on
        row.verdict, row.error = FAIL, _error_text(exc)
        return row
    row.time_ms = sorted(times_ms)[len(times_ms) // 2]
    out, lse = result if want_lse else (result, None)
    return _judge(row, case, out, yardstick, lse, ref_lse, with_maps)


def _error_text(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["compare_attention", "compare_captured", "parse_dtype", "replay"]
