"""``fluxlab.capture``: record what each FLUX.2 attention call received and returned, within a memory bound."""

from __future__ import annotations

import collections
import warnings

import torch

from .. import registry
from ..dispatch import BackendChoice, plan
from ..errors import AttachError, CaptureError, CaptureLimitError, FallbackWarning
from ..record import AttentionRecord
from ..results import Result, model_of
from .attach import state_of
from .schedule import as_step_set, layer_matches, step_matches


class Capture(Result):
    """The records of one ``with fluxlab.capture(pipe) as cap:`` block: ``cap.records`` (``AttentionRecord``s),
    with the result protocol (``fluxlab.results``: one table row per record, tensors by shape).

    Each record holds q, k, v exactly as the kernel received them ([B, S, H, D], post-QK-norm, post-RoPE, text
    first), the output, the LSE where the backend returns one, and layer / step / branch / backend / text_tokens.
    """

    def __init__(self, state, layers: list[str], steps: frozenset[int] | None, to, max_bytes: int | None,
                 lse: bool):
        self._state = state
        self.layers = layers
        self._layer_set = frozenset(layers)
        self.steps = steps
        self.device = torch.device(to)
        self.max_bytes = max_bytes
        self.lse = lse
        self.records: list[AttentionRecord] = []
        self.nbytes = 0
        self.model = model_of(state.pipe or state.transformer)  # now: the model may be gone when this is saved

    def __enter__(self) -> Capture:
        if self._state.capture is not None:
            raise AttachError("another fluxlab.capture is already recording this model; nest no captures")
        self._state.capture = self
        return self

    def __exit__(self, *exc):
        self._state.capture = None
        return False

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def backends_used(self) -> dict[str, int]:
        """How many recorded calls each backend served (proof of what actually ran)."""
        return dict(collections.Counter(r.backend for r in self.records))

    def headline(self) -> str:
        return (f"{len(self.records)} records, {self.nbytes / 2**20:.1f} MiB on {self.device}, "
                f"backends {self.backends_used()}")

    def table_rows(self) -> list[dict]:
        return [{"layer": r.layer, "step": r.step, "branch": r.branch, "backend": r.backend, "q": r.q, "k": r.k,
                 "v": r.v, "out": r.out, "lse": r.lse, "scale": r.scale, "text_tokens": r.text_tokens}
                for r in self.records]

    def selects(self, layer: str, position) -> bool:
        return layer in self._layer_set and step_matches(position.step, position.num_steps, self.steps)

    def record(self, state, layer, q, k, v, *, scale, causal, backend, heads=None):
        # The same plan fluxlab.attention makes: it names exactly the kernel that produces the output ("fa" is
        # resolved to fa4 / fa3 / fa2 there).
        run = plan(q, k, v, backend=backend, scale=scale, causal=causal, allowed=state.allowed, heads=heads)
        for warning in run.warnings:
            warnings.warn(warning, FallbackWarning, stacklevel=2)
        caps = registry.get_backend(run.backend).caps
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        # Never ask a backend for what it cannot give (an LSE, or one with a gradient).
        want_lse = self.lse and caps.returns_lse and (caps.lse_grad or not grad)

        row_bytes = v.shape[3] * q.itemsize + (4 if want_lse else 0)  # per (b, s, h): the output and the fp32 LSE
        need = 0 if self.device.type == "meta" else q.nbytes + k.nbytes + v.nbytes + q[..., 0].numel() * row_bytes
        if self.max_bytes is not None and self.nbytes + need > self.max_bytes:
            raise CaptureLimitError(
                f"capturing {layer} (step {state.position.step}) would take {need:,} more bytes, past max_bytes="
                f"{self.max_bytes:,} ({self.nbytes:,} bytes in {len(self.records)} records so far). Select fewer "
                "layers (layers=['single_transformer_blocks.0.attn', ...]) or steps (steps=[0, -1]), raise "
                "max_bytes, or use to='meta' to keep shapes only.")

        if want_lse:  # the planned kernel, pinned, now asked for its LSE too
            pinned = BackendChoice(run.backend, tuple(sorted(run.options.items())), run.knobs)
            run = plan(q, k, v, backend=pinned, scale=run.scale, causal=causal, return_lse=True,
                       allowed=state.allowed, heads=heads)
        out, lse = run(q, k, v) if want_lse else (run(q, k, v), None)

        def keep(t):
            return None if t is None else t.detach().to(self.device, copy=True)

        position = state.position
        self.records.append(AttentionRecord(
            q=keep(q), k=keep(k), v=keep(v), scale=scale, out=keep(out), lse=keep(lse), causal=causal,
            layer=layer, step=position.step, branch=position.branch, backend=run.backend,
            text_tokens=position.text_tokens,
            meta={"num_steps": position.num_steps, "call_in_layer": state.calls_in_layer,
                  "requested": str(backend) if backend is not None else None}))
        self.nbytes += need
        return out


def capture(pipe, layers=None, steps=None, to="cpu", max_bytes: int | None = None, lse: bool = True) -> Capture:
    """Record FLUX.2 attention calls: ``with fluxlab.capture(pipe, layers=[...], steps=[0, -1]) as cap: pipe(...)``.

    ``layers``: names or glob patterns ("single_transformer_blocks.*"; a block prefix such as
    "transformer_blocks.0" selects its attention); None: every layer. ``steps``: denoising step indices, negative
    from the end; None: every step (calls outside a pipeline's loop have step None and are kept only then).
    ``to``: where copies go ("cpu"; "meta" keeps shapes only, no memory). ``max_bytes``: a CaptureLimitError is
    raised before a record would exceed it. ``lse``: ask for the LSE where the backend returns one.
    """
    state = state_of(pipe)
    names = state.layer_names
    if layers is None:
        selected = list(names)
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        unmatched = [p for p in patterns if not any(layer_matches(n, p) for n in names)]
        selected = [n for n in names if any(layer_matches(n, p) for p in patterns)]
        if unmatched or not selected:
            raise CaptureError(f"capture layers {unmatched or patterns} match no attention layer of this model, so "
                               f"nothing would be recorded. Its layers: {', '.join(names)} (glob patterns such as "
                               "'single_transformer_blocks.*' work).")
    step_set = as_step_set(steps)
    if step_set is not None and not step_set:
        raise CaptureError("capture steps=[] selects no denoising step, so nothing would be recorded; pass step "
                           "indices (e.g. steps=[0, -1]) or None for every step")
    if max_bytes is not None and max_bytes <= 0:
        raise CaptureError(f"max_bytes must be a positive number of bytes, got {max_bytes}")
    return Capture(state, selected, step_set, to, max_bytes, lse)
