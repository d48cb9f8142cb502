"""Error numbers of one output against the float64 answer: global stats and per-head / per-token maps."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

_TINY = 1e-300  # denominators: an all-zero reference gives rel errors of 0 (exact) or huge (anything else)


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    rel_l2: float  # ||out - ref|| / ||ref|| over the whole tensor
    cosine: float  # <out, ref> / (||out|| ||ref||)


def error_stats(out: torch.Tensor, ref: torch.Tensor) -> ErrorStats:
    """Stats of ``out`` against ``ref`` (both [B, S, H, D]), computed in float64."""
    out64, ref64 = out.to(torch.float64), ref.to(torch.float64)
    diff = (out64 - ref64).abs_()
    ref_norm, out_norm = ref64.norm().item(), out64.norm().item()
    dot = (out64 * ref64).sum().item()
    return ErrorStats(max_abs=diff.max().item(), mean_abs=diff.mean().item(),
                      rel_l2=diff.norm().item() / max(ref_norm, _TINY),
                      cosine=dot / max(out_norm * ref_norm, _TINY))


@dataclasses.dataclass
class ErrorMap:
    """Where the error sits: relative L2 per head, per query token, and per (head, token bin)."""

    per_head: np.ndarray  # [H]
    per_token: np.ndarray  # [S]
    head_token: np.ndarray  # [H, bins]: tokens pooled into bins of ``token_bin`` for plotting
    token_bin: int
    text_tokens: int | None = None

    @property
    def worst_head(self) -> int:
        return int(np.nanargmax(self.per_head)) if np.isfinite(self.per_head).any() else 0

    @property
    def worst_token(self) -> int:
        return int(np.nanargmax(self.per_token)) if np.isfinite(self.per_token).any() else 0

    def describe_token(self, token: int) -> str:
        """"text token 3" / "image token 40 (sequence position 552)" when the text length is known."""
        if self.text_tokens is None:
            return f"token {token}"
        if token < self.text_tokens:
            return f"text token {token}"
        return f"image token {token - self.text_tokens} (position {token})"

    def summary(self) -> str:
        head, token = self.worst_head, self.worst_token
        return (f"worst head {head} (rel_l2 {self.per_head[head]:.3g}, median head {np.nanmedian(self.per_head):.3g}); "
                f"worst {self.describe_token(token)} (rel_l2 {self.per_token[token]:.3g}, "
                f"median token {np.nanmedian(self.per_token):.3g})")


def error_map(out: torch.Tensor, ref: torch.Tensor, *, text_tokens: int | None = None,
              max_bins: int = 512) -> ErrorMap:
    """Relative L2 error per head and per query token (batch and head_dim summed) of ``out`` vs ``ref``."""
    err2 = (out.to(torch.float64) - ref.to(torch.float64)).square_().sum(dim=-1)  # [B, S, H]
    ref2 = ref.to(torch.float64).square().sum(dim=-1)
    per_head = (err2.sum(dim=(0, 1)) / ref2.sum(dim=(0, 1)).clamp_min(_TINY)).sqrt()
    per_token = (err2.sum(dim=(0, 2)) / ref2.sum(dim=(0, 2)).clamp_min(_TINY)).sqrt()
    seq = err2.shape[1]
    token_bin = max(1, -(-seq // max_bins))
    bins = -(-seq // token_bin)
    pad = bins * token_bin - seq

    def pooled(t):  # [B, S, H] -> [H, bins]
        t = torch.nn.functional.pad(t.sum(dim=0).transpose(0, 1), (0, pad))
        return t.reshape(t.shape[0], bins, token_bin).sum(dim=-1)

    head_token = (pooled(err2) / pooled(ref2).clamp_min(_TINY)).sqrt()
    as_np = lambda t: t.float().cpu().numpy()  # noqa: E731
    return ErrorMap(as_np(per_head), as_np(per_token), as_np(head_token), token_bin, text_tokens)
