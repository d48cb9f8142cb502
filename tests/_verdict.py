"""The comparison engine's verdict for one output, for tests: the same yardstick (torch's math kernel in the
dtype, floored at the float64 answer's rounding) and the same rule (``compare.tolerances.judge_output``)."""

from __future__ import annotations

from fluxlab.backends.reference import reference_attention
from fluxlab.compare.baseline import baseline_attention
from fluxlab.compare.metrics import error_stats
from fluxlab.compare.tolerances import judge_output


def verdict(out, q, k, v, *, scale, causal=False, quantised=False) -> tuple[str, str]:
    """("pass" | "warn" | "fail", the rule's note) for ``out`` against float64, as compare_attention judges it."""
    exact = reference_attention(q, k, v, scale=scale, causal=causal)
    yardstick = error_stats(baseline_attention(q, k, v, scale=scale, causal=causal), exact)
    rounding = error_stats(exact.to(q.dtype), exact)
    return judge_output(error_stats(out, exact), yardstick, rounding, quantised=quantised)
