"""AttentionRecord: one attention call's inputs and outputs, as capture produces and comparisons consume them (a
*records folder* is a list of them on disk; a *recorded output*, the ``out`` captured, is judged as its own row)."""

from __future__ import annotations

import dataclasses

import torch

from .dispatch import validate_inputs
from .errors import InvalidInputError
from .results import Result, format_cell


@dataclasses.dataclass(repr=False)
class AttentionRecord(Result):
    """q/k/v as the kernel received them ([B, S, H, D], post-QK-norm, post-RoPE, text tokens first). Its repr,
    table and saved JSON name the tensors by dtype and shape, never their numbers (``save_records`` keeps them)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    out: torch.Tensor | None = None  # what the backend returned, [B, S, H, D]
    lse: torch.Tensor | None = None  # natural log, float32, [B, H, S], where the backend gives it
    causal: bool = False
    layer: str = ""  # e.g. "transformer_blocks.0.attn"
    step: int | None = None  # denoising step index
    branch: str | None = None  # CFG branch: "cond" / "uncond" (None without CFG)
    backend: str | None = None  # the backend that produced ``out``
    text_tokens: int | None = None  # how many leading tokens are text
    meta: dict = dataclasses.field(default_factory=dict)

    def headline(self) -> str:
        tensors = ", ".join(f"{n} {format_cell(t)}" for n in ("q", "k", "v", "out", "lse")
                            if (t := getattr(self, n)) is not None)
        return f"{self.name}: {tensors}; scale {self.scale:.4g}, backend {self.backend or '?'}"

    def table_rows(self) -> list[dict]:
        return [{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}]

    def as_dict(self) -> dict:
        return {"name": self.name, **self.table_rows()[0]}

    @property
    def name(self) -> str:
        step = f"step{self.step}" if self.step is not None else None
        return "/".join(filter(None, (self.layer or "attention", step, self.branch)))

    def validate(self) -> None:
        """Raise InvalidInputError unless this is a call ``fluxlab.attention`` would accept (the same checks: scale
        finite and > 0, shapes that fit), with ``out`` [B, S, H, D_v] and ``lse`` [B, H, S] where present."""
        q, v = self.q, self.v
        validate_inputs(q, self.k, v, scale=self.scale, causal=self.causal)
        out_shape, lse_shape = (*q.shape[:3], v.shape[3]), (q.shape[0], q.shape[2], q.shape[1])
        if self.out is not None and tuple(self.out.shape) != out_shape:
            raise InvalidInputError(f"out has shape {tuple(self.out.shape)}; for q {tuple(q.shape)} and v "
                                    f"{tuple(v.shape)} it must be {out_shape}")
        if self.lse is not None and tuple(self.lse.shape) != lse_shape:
            raise InvalidInputError(f"lse has shape {tuple(self.lse.shape)}; for q {tuple(q.shape)} it must be "
                                    f"[batch, heads, seq] = {lse_shape}")
        if self.text_tokens is not None and not 0 <= self.text_tokens <= q.shape[1]:
            raise InvalidInputError(f"text_tokens is {self.text_tokens}; it must be between 0 and the sequence "
                                    f"length {q.shape[1]}")

    def to(self, device) -> AttentionRecord:
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)
