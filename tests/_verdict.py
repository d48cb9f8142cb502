"""The comparison engine's verdict for one output, for tests: the same yardstick (torch's math kernel in the
dtype, floored at the float64 answer's rounding) and the same rule (``compare.gate.judge_attention``: error size,
bias, NaN/inf structure, worst head / batch element / segment, clear top-channel flips)."""

from __future__ import annotations

from fluxlab.backends.reference import reference_attention
from fluxlab.compare.gate import Yardstick, baseline_attention, judge_attention


def judgement(out, q, k, v, *, scale, causal=False, quantised=False, text_tokens=None):
    """The engine's ``gate.Judgement`` for ``out`` against float64 (verdict, notes, the gate's statistics)."""
    exact = reference_attention(q, k, v, scale=scale, causal=causal)
    baseline = baseline_attention(q, k, v, scale=scale, causal=causal)
    return judge_attention(out, Yardstick(exact, baseline, q.dtype, text_tokens=text_tokens), quantised=quantised)


def verdict(out, q, k, v, *, scale, causal=False, quantised=False, text_tokens=None) -> tuple[str, str]:
    """("pass" | "warn" | "fail", the rule's notes) for ``out`` against float64, as compare_attention judges it."""
    result = judgement(out, q, k, v, scale=scale, causal=causal, quantised=quantised, text_tokens=text_tokens)
    return result.verdict, "; ".join(result.notes)
