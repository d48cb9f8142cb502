"""The sceptic's gate: what a wrong kernel cannot hide behind an average error size.
Bias (signed, and toward or away from zero), NaN/inf structure, the worst head / batch element / text-or-image
segment judged on its own, and a discrete measure (clear top-channel flips). Limits: ``tolerances.GATE_RULE``.
The yardstick is torch's SDPA math kernel in the inputs' dtype (``baseline_attention``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .metrics import ErrorStats, error_stats
from .tolerances import (EXACT_RULE, FAIL, GATE_RULE, PASS, QUANTISED_BUDGET, WARN, grade, judge_output,
                         worst, yardstick_ratios)

_TINY = 1e-300
BASELINE_NAME = "torch SDPA math, same dtype"
BASELINE_BUDGET_ELEMENTS = 2**26  # float32 scores held per query chunk (256 MiB; read at call time)
SLICE_KINDS = ("head", "batch", "segment")
SEGMENT_NAMES = ("text", "image")


@dataclasses.dataclass(frozen=True)
class SliceResult:
    """One head, batch element or text/image segment: its rel-L2 and the yardstick's rel-L2 on the same slice."""

    kind: str  # "head" | "batch" | "segment"
    index: int
    rel_l2: float
    yardstick_rel_l2: float

    @property
    def ratio(self) -> float:
        return self.rel_l2 / max(self.yardstick_rel_l2, _TINY)

    @property
    def label(self) -> str:
        return f"{SEGMENT_NAMES[self.index]} tokens" if self.kind == "segment" else f"{self.kind} {self.index}"


@dataclasses.dataclass(frozen=True)
class GateStats:
    """Everything the gate measures about one output against float64 (and the yardstick on the same input)."""

    rows: int  # query rows (batch x seq x heads) compared
    signed_bias: float  # mean(out - ref) / rms(out - ref): errors that all lean one way (e.g. rounding toward +inf)
    magnitude_bias: float  # mean((out - ref) * sign(ref)) / rms: < 0 toward zero (truncation), > 0 away from zero
    worst_head_bias: float  # the head whose bias (either kind) is largest, signed
    worst_head_bias_index: int
    head_rows: int  # rows per head (the bias limit of one head depends on it)
    slices: tuple[SliceResult, ...]  # every head, batch element (B > 1) and segment (text tokens known)
    clear_rows: int  # rows whose float64 top channel leads the runner-up clearly (``GateRule.flip_margin_eps``)
    flipped_rows: int  # of those, rows where the kernel's top channel is another one
    nonfinite_where_finite: int = 0  # NaN/inf in the output where float64 is finite (a failure)
    finite_where_nonfinite: int = 0  # finite output where float64 is NaN/inf (reported: the kernel hides a NaN)
    reference_nonfinite: int = 0  # NaN/inf in the float64 answer itself (from NaN/inf inputs)

    @property
    def bias(self) -> float:
        """The larger of the two biases, with its sign."""
        return self.signed_bias if abs(self.signed_bias) >= abs(self.magnitude_bias) else self.magnitude_bias

    @property
    def bias_direction(self) -> str:
        if abs(self.signed_bias) >= abs(self.magnitude_bias):
            return "toward +inf" if self.signed_bias > 0 else "toward -inf"
        return "away from zero" if self.magnitude_bias > 0 else "toward zero"

    @property
    def flip_rate(self) -> float:
        return self.flipped_rows / self.clear_rows if self.clear_rows else 0.0

    def worst_slice(self, kind: str | None = None) -> SliceResult | None:
        candidates = [s for s in self.slices if kind is None or s.kind == kind]
        finite = [s for s in candidates if math.isfinite(s.ratio)]
        if not candidates:
            return None
        return max(finite or candidates, key=lambda s: s.ratio)


def baseline_attention(q, k, v, *, scale, causal=False):
    """``[B, S, H, D]`` attention by torch's math kernel in ``q.dtype`` (float32 inside, half-precision reductions
    off), one query chunk at a time: queries are independent, so chunking changes nothing but memory."""
    batch, seq_q, heads, _ = q.shape
    seq_k = k.shape[1]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    gqa = {"enable_gqa": True} if qh.shape[1] != kh.shape[1] else {}
    chunk = max(1, min(seq_q, BASELINE_BUDGET_ELEMENTS // max(1, batch * heads * seq_k)))
    out = torch.empty(batch, heads, seq_q, v.shape[-1], dtype=q.dtype, device=q.device)
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            for start in range(0, seq_q, chunk):
                stop = min(seq_q, start + chunk)
                mask = None
                if causal:
                    rows = torch.arange(start, stop, device=q.device)[:, None]
                    mask = torch.arange(seq_k, device=q.device)[None, :] <= rows
                out[:, :, start:stop] = F.scaled_dot_product_attention(qh[:, :, start:stop], kh, vh, attn_mask=mask,
                                                                       scale=scale, **gqa)
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)
    return out.transpose(1, 2)


class Yardstick:
    """The float64 answer of one input and the yardstick's errors per slice, computed once and shared by every
    backend judged on that input. ``baseline_out``: torch's math kernel in the dtype (``baseline_attention``)."""

    def __init__(self, ref: torch.Tensor, baseline_out: torch.Tensor | None, dtype: torch.dtype, *,
                 text_tokens: int | None = None):
        ref = ref.to(torch.float64)
        finite = torch.isfinite(ref)
        self.reference_nonfinite = int((~finite).sum().item())
        self.finite = finite if self.reference_nonfinite else None
        self.ref = torch.where(finite, ref, 0.0) if self.reference_nonfinite else ref
        self.dtype = dtype
        self.text_tokens = text_tokens
        batch, seq, heads, _ = ref.shape
        self.shape = (batch, seq, heads)
        self.ref_sign = torch.sign(self.ref)
        self.ref2 = self._slice_sums(self.ref.square().sum(dim=-1))
        rounded = self._masked(ref.to(dtype))
        self.rounding = error_stats(rounded, self.ref)  # the least error the dtype allows
        yard_err2 = [self._slice_sums((rounded - self.ref).square_().sum(dim=-1))]
        del rounded
        self.baseline = None  # torch's math kernel in the dtype
        if baseline_out is not None:
            baseline64 = self._masked(baseline_out)
            self.baseline = error_stats(baseline64, self.ref)
            yard_err2.append(self._slice_sums((baseline64 - self.ref).square_().sum(dim=-1)))
            del baseline64
        self.yardstick = {kind: functools.reduce(torch.maximum, [self._rel(e[kind], kind) for e in yard_err2])
                          for kind in self.ref2}
        top = self.ref.topk(2, dim=-1) if self.ref.shape[-1] > 1 else None
        if top is not None:
            row_scale = self.ref.abs().amax(dim=-1)
            gap = top.values[..., 0] - top.values[..., 1]
            self.clear = (gap > GATE_RULE.flip_margin_eps * torch.finfo(dtype).eps * row_scale) & (row_scale > 0)
            if self.finite is not None:
                self.clear &= self.finite.all(dim=-1)
            self.top_channel = top.indices[..., 0]
        else:
            self.clear = self.top_channel = None

    def _masked(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        return torch.where(self.finite, t, 0.0) if self.finite is not None else t

    def _slice_sums(self, per_row: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, S, H] -> {kind: sums per slice} (kinds with a single slice are left out)."""
        batch, seq, heads = per_row.shape
        sums = {"all": per_row.sum().reshape(1)}
        if heads > 1:
            sums["head"] = per_row.sum(dim=(0, 1))
        if batch > 1:
            sums["batch"] = per_row.sum(dim=(1, 2))
        text = self.text_tokens
        if text is not None and 0 < text < seq:
            sums["segment"] = torch.stack([per_row[:, :text].sum(), per_row[:, text:].sum()])
        return sums

    def _rel(self, err2: torch.Tensor, kind: str) -> torch.Tensor:
        return (err2 / self.ref2[kind].clamp_min(_TINY)).sqrt()

    def measure(self, out: torch.Tensor) -> GateStats:
        """The gate's statistics of ``out`` (same shape as the answer) against float64."""
        out64 = out.to(torch.float64)
        out_finite = torch.isfinite(out64)
        if self.finite is not None:
            bad = int((~out_finite & self.finite).sum().item())
            hidden = int((out_finite & ~self.finite).sum().item())
            use = out_finite & self.finite
        else:
            bad = int((~out_finite).sum().item())
            hidden = 0
            use = out_finite if bad else None
        err = out64 - self.ref
        if use is not None:
            err = torch.where(use, err, 0.0)
        err2_rows = err.square().sum(dim=-1)  # [B, S, H]
        sum_rows = err.sum(dim=-1)
        toward_rows = (err * self.ref_sign).sum(dim=-1)
        batch, seq, heads = self.shape
        dim = err.shape[-1]
        del err
        head_err2, head_sum, head_toward = (t.sum(dim=(0, 1)) for t in (err2_rows, sum_rows, toward_rows))
        count_head = batch * seq * dim
        rms_all = math.sqrt(head_err2.sum().item() / max(count_head * heads, 1))
        signed = _ratio(head_sum.sum().item() / max(count_head * heads, 1), rms_all)
        toward = _ratio(head_toward.sum().item() / max(count_head * heads, 1), rms_all)
        head_rms = (head_err2 / count_head).sqrt()
        per_head = torch.stack([head_sum / count_head, head_toward / count_head]) / head_rms.clamp_min(_TINY)
        per_head = torch.where(head_rms > 0, per_head, 0.0)
        worst = int(per_head.abs().argmax().item())  # over [2 kinds, heads], flattened
        worst_head_bias = float(per_head.flatten()[worst].item())
        err2 = self._slice_sums(err2_rows)
        slices = []
        for kind in SLICE_KINDS:
            if kind in err2:
                rel = self._rel(err2[kind], kind).tolist()
                yard = self.yardstick[kind].tolist()
                slices += [SliceResult(kind, i, r, y) for i, (r, y) in enumerate(zip(rel, yard))]
        clear_rows = flipped = 0
        if self.clear is not None:
            clear = self.clear if use is None else self.clear & use.all(dim=-1)
            clear_rows = int(clear.sum().item())
            if clear_rows:
                flipped = int((clear & (out64.argmax(dim=-1) != self.top_channel)).sum().item())
        return GateStats(rows=batch * seq * heads, signed_bias=signed, magnitude_bias=toward,
                         worst_head_bias=worst_head_bias, worst_head_bias_index=worst % heads, head_rows=batch * seq,
                         slices=tuple(slices), clear_rows=clear_rows, flipped_rows=flipped,
                         nonfinite_where_finite=bad, finite_where_nonfinite=hidden,
                         reference_nonfinite=self.reference_nonfinite)


def _ratio(mean: float, rms: float) -> float:
    return mean / rms if rms > 0 else 0.0


@dataclasses.dataclass
class Judgement:
    """A verdict and its reasons: every rule's verdict, the gate's statistics, and short words for a report."""

    verdict: str
    notes: list[str]
    stats: GateStats | None
    biased: bool = False
    size: ErrorStats | None = None  # max_abs, rel_l2, ... on the positions finite in both
    fail_fraction: float | None = None  # the closest rule's value over its fail limit (>= 1: beyond it)
    closest_rule: str | None = None  # which rule that is, e.g. "bias", "worst head", "rel_l2"


def judge_gate(stats: GateStats, *, quantised: bool) -> tuple[list[str], list[str], bool]:
    """(verdicts, notes, biased) of the gate's statistics alone (the error size is ``judge_output``'s)."""
    rule, verdicts, notes, biased = GATE_RULE, [], [], False
    if stats.nonfinite_where_finite:
        verdicts.append(FAIL)
        notes.append(f"{stats.nonfinite_where_finite} NaN/inf values where float64 is finite")
    if stats.finite_where_nonfinite:
        verdicts.append(WARN)
        notes.append(f"{stats.finite_where_nonfinite} finite values where float64 is NaN/inf (the kernel hides "
                     "a NaN/inf of its inputs)")
    limit = rule.bias_limit(stats.rows)
    head_limit = rule.bias_limit(stats.head_rows)
    if abs(stats.bias) > limit:
        verdicts.append(FAIL)
        biased = True
        notes.append(f"biased: mean error {stats.bias:+.2f} x its RMS, {stats.bias_direction} (limit {limit:.2g})")
    elif abs(stats.worst_head_bias) > head_limit:
        verdicts.append(FAIL)
        biased = True
        notes.append(f"biased: head {stats.worst_head_bias_index} mean error {stats.worst_head_bias:+.2f} x its RMS "
                     f"(limit for one head {head_limit:.2g})")
    for kind in SLICE_KINDS:
        piece = stats.worst_slice(kind)
        if piece is None:
            continue
        if quantised:
            verdict = grade(piece.rel_l2, rule.quantised_slice_pass, rule.quantised_slice_warn)
            why = f"rel_l2 {piece.rel_l2:.3g} (one slice, quantised budget pass <= {rule.quantised_slice_pass:g})"
        else:
            verdict = grade(piece.ratio, rule.slice_pass, rule.slice_warn)
            why = (f"{piece.ratio:.2f}x its yardstick (one slice: pass <= {rule.slice_pass:g}x, warn <= "
                   f"{rule.slice_warn:g}x)")
        if verdict != PASS:
            notes.append(f"worst {piece.label}: {why}")
        verdicts.append(verdict)
    if stats.clear_rows and not quantised:  # quantised kernels: reported in the row, judged by their budget
        verdict = grade(stats.flip_rate, rule.flip_pass, rule.flip_warn)
        if verdict != PASS:
            notes.append(f"top-channel flips: {stats.flipped_rows} of {stats.clear_rows} clear rows "
                         f"({stats.flip_rate:.2%}; pass <= {rule.flip_pass:.2%}, warn <= {rule.flip_warn:.2%})")
        verdicts.append(verdict)
    return verdicts, notes, biased


def judge_attention(out: torch.Tensor, yardstick: Yardstick, *, quantised: bool = False) -> Judgement:
    """The one rule for an attention output (the engine, replays and the tests use it): the error size against
    the yardstick (``tolerances.judge_output``) and the gate (``judge_gate``)."""
    if tuple(out.shape) != tuple(yardstick.ref.shape):
        return Judgement(FAIL, [f"wrong output shape {tuple(out.shape)}, expected {tuple(yardstick.ref.shape)}"], None)
    stats = yardstick.measure(out)
    size = error_stats(*comparable(out, yardstick))
    baseline = yardstick.baseline or yardstick.rounding
    size_verdict, size_note = judge_output(size, baseline, yardstick.rounding, quantised=quantised)
    verdicts, notes, biased = judge_gate(stats, quantised=quantised)
    closest, fraction = closest_to_failing(stats, size, yardstick, quantised=quantised)
    return Judgement(worst([size_verdict, *verdicts]), [size_note, *notes], stats, biased, size, fraction, closest)


def closest_to_failing(stats: GateStats, size: ErrorStats, yardstick: Yardstick, *,
                       quantised: bool) -> tuple[str, float]:
    """(rule, value / its fail limit) of the rule closest to failing: how close an output is to a "fail", on one
    scale for every rule (the error size, bias, worst slice, flips). 1.0 or more: that rule fails."""
    if stats.nonfinite_where_finite:
        return "NaN/inf", math.inf
    rule, used = GATE_RULE, {}
    if quantised:
        used["rel_l2"] = size.rel_l2 / QUANTISED_BUDGET.warn_rel_l2
    else:
        rel_ratio, max_ratio = yardstick_ratios(size, yardstick.baseline or yardstick.rounding, yardstick.rounding)
        used["rel_l2"] = rel_ratio / EXACT_RULE.warn_rel_l2
        used["max_abs"] = max_ratio / EXACT_RULE.warn_max_abs
        if stats.clear_rows:
            used["top-channel flips"] = stats.flip_rate / rule.flip_warn
    used["bias"] = abs(stats.bias) / rule.bias_limit(stats.rows)
    used["bias of one head"] = abs(stats.worst_head_bias) / rule.bias_limit(stats.head_rows)
    for kind in SLICE_KINDS:
        piece = stats.worst_slice(kind)
        if piece is not None:
            used[f"worst {kind}"] = (piece.rel_l2 / rule.quantised_slice_warn if quantised
                                     else piece.ratio / rule.slice_warn)
    name = max(used, key=lambda k: used[k] if math.isfinite(used[k]) else math.inf)
    return name, used[name]


def comparable(out: torch.Tensor, yardstick: Yardstick) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` and the answer with positions that are not finite in either set to 0 (the gate counts those)."""
    if yardstick.finite is None and bool(torch.isfinite(out).all()):
        return out, yardstick.ref
    use = torch.isfinite(out.to(torch.float64))
    if yardstick.finite is not None:
        use &= yardstick.finite
    return torch.where(use, out.to(torch.float64), 0.0), torch.where(use, yardstick.ref, 0.0)


__all__ = ["GateStats", "Judgement", "SliceResult", "Yardstick", "baseline_attention", "closest_to_failing",
           "comparable", "judge_attention", "judge_gate"]
