"""Plain-torch attention shared by the stand-ins: [B, S, H, D] in, (out, lse [B, H, S] float32) out."""

import torch


def attend(q, k, v, softmax_scale, causal):
    if q.dim() != 4:
        raise ValueError(f"stand-in expects [B, S, H, D], got {tuple(q.shape)}")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale  # the libraries' default
    groups = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    kh, vh = kh.repeat_interleave(groups, 1), vh.repeat_interleave(groups, 1)
    scores = qh @ kh.transpose(-1, -2) * scale
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    out = (torch.softmax(scores, -1) @ vh).transpose(1, 2).to(q.dtype)
    return out, lse.float()
