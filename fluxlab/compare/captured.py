"""Captured activations through the gate: q/k/v of a FLUX.2 pipeline's own attention calls, per layer and step,
judged by the same rule as synthetic inputs; the report names the layers closest to failing."""

from __future__ import annotations

import torch

from ..models.capture import capture
from .attention import compare_attention
from ..util import torch_dtype_name
from .report import ComparisonReport

DEFAULT_PROMPT = "a red circle at the top left on a blue background"  # a caption the embedded model was trained on


def compare_captured(pipe, backends=None, *, prompt: str = DEFAULT_PROMPT, steps: int = 4, seed: int = 0,
                     layers=None, capture_steps=None, height: int = 64, width: int = 64, dtype=None,
                     pipe_kwargs: dict | None = None, **compare_kwargs) -> ComparisonReport:
    """Generate once with ``pipe`` while capturing every attention call (``layers`` / ``capture_steps``: as
    ``fluxlab.capture``'s ``layers`` / ``steps``; None: all), then judge ``backends`` on each captured q/k/v against
    float64 (``compare_attention``). The row "recorded:<backend>" judges what the pipeline's own backend returned.
    ``dtype``: cast the captured q/k/v to it, e.g. bf16, to judge a float32 model's activations as a bf16 pipeline
    would see them (the recorded outputs, computed from the uncast inputs, are then left out). ``report.closest_to_failing()`` lists the layer/step inputs
    nearest a fail; the Markdown report shows them. ``pipe_kwargs``: more arguments for the pipeline call."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with capture(pipe, layers=layers, steps=capture_steps) as captured:
        pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, output_type="np",
             generator=generator, **(pipe_kwargs or {}))
    records = list(captured)
    if dtype is not None:
        import dataclasses

        from ..util import parse_dtype

        cast = parse_dtype(dtype)
        records = [dataclasses.replace(r, q=r.q.to(cast), k=r.k.to(cast), v=r.v.to(cast), out=None, lse=None)
                   for r in records]
    report = compare_attention(records, backends, **compare_kwargs)
    report.meta["captured"] = {"prompt": prompt, "steps": steps, "seed": seed, "height": height, "width": width,
                               "calls": len(records), "dtype": torch_dtype_name(records[0].q.dtype)
                               if records else None}
    return report


__all__ = ["compare_captured"]
