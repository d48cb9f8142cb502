"""Determinism and invariance of attention backends, as axes beside accuracy: is a rerun bitwise identical, is
sample i the same alone and inside a batch of 4, and does it depend on where it sits in the batch."""

from __future__ import annotations

import dataclasses

import torch

from ..dispatch import plan
from ..errors import BackendUnavailableError
from ..platform import platform_for_device
from ..util import parse_dtype, torch_dtype_name
from .inputs import InputSpec, synthetic_qkv
from .specs import parse_backends

DEFAULT_INPUT = InputSpec(520, 4, 128, distribution="normal", text_tokens=56)  # ragged: 8 keys past 4 x 128
BATCH = 4
RERUNS = 3


@dataclasses.dataclass
class InvarianceRow:
    """One backend: each axis is ``True`` (bitwise identical), ``False`` (differs: ``*_max_abs`` says by how much,
    beside one step of the dtype at the output's largest value, ``ulp_at_max``), or None (did not run: ``error``)."""

    backend: str
    dtype: str
    shape: tuple[int, ...]
    rerun_identical: bool | None = None
    rerun_max_abs: float | None = None
    batch_invariant: bool | None = None  # sample 0 alone == sample 0 inside a batch of 4
    batch_max_abs: float | None = None
    position_invariant: bool | None = None  # the same sample at index 0 and at index 3 of the batch
    position_max_abs: float | None = None
    ulp_at_max: float | None = None  # the dtype's spacing at the output's largest value: the scale of "differs"
    error: str | None = None

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["shape"] = "x".join(map(str, self.shape))
        return data


@dataclasses.dataclass
class InvarianceReport:
    rows: list[InvarianceRow]
    meta: dict = dataclasses.field(default_factory=dict)

    COLUMNS = ("backend", "dtype", "shape", "rerun_identical", "batch_invariant", "position_invariant",
               "rerun_max_abs", "batch_max_abs", "position_max_abs", "ulp_at_max", "error")

    @property
    def verdicts(self) -> dict[str, dict[str, bool | None]]:
        """backend -> {"rerun": ..., "batch": ..., "position": ...} (True: bitwise identical)."""
        return {r.backend: {"rerun": r.rerun_identical, "batch": r.batch_invariant,
                            "position": r.position_invariant} for r in self.rows}

    def to_markdown(self) -> str:
        def cell(value):
            if value is None:
                return ""
            if isinstance(value, bool):
                return "identical" if value else "differs"
            if isinstance(value, float):
                return f"{value:.2e}"
            return str(value).replace("|", "\\|")

        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + " --- |" * len(self.COLUMNS)]
        for row in self.rows:
            data = row.as_dict()
            lines.append("| " + " | ".join(cell(data[c]) for c in self.COLUMNS) + " |")
        return "\n".join(lines) + "\n"

    def _repr_html_(self) -> str:
        import html

        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.as_dict()[c]))}</td>" for c in self.COLUMNS)
                       + "</tr>" for r in self.rows)
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self):
        return f"<InvarianceReport {len(self.rows)} backends>"


def check_invariance(backends=None, *, spec: InputSpec = DEFAULT_INPUT, dtype="bf16", device=None, seed: int = 0,
                     batch: int = BATCH, reruns: int = RERUNS) -> InvarianceReport:
    """Per backend (default: every backend that runs here): ``reruns`` identical calls, sample 0 alone vs inside a
    batch of ``batch`` different samples, and that sample at index 0 vs at the last index. Bitwise comparisons;
    where they differ the largest difference is given beside one step of the dtype at the output's largest value."""
    dtype = parse_dtype(dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    platform = platform_for_device(device)
    q, k, v = (t.to(device=device, dtype=dtype) for t in
               synthetic_qkv(batch, spec.seq, spec.heads, spec.head_dim, spec.distribution, seed))
    scale = spec.head_dim ** -0.5
    order = list(range(1, batch)) + [0]  # sample 0 moved to the last index, the others shifted up
    rows = []
    for backend in parse_backends(backends, platform):
        row = InvarianceRow(backend.label, torch_dtype_name(dtype), (1, spec.seq, spec.heads, spec.head_dim))
        try:
            one = plan(q[:1], k[:1], v[:1], backend=backend.choice, scale=scale, fallback=False, platform=platform)
            many = plan(q, k, v, backend=backend.choice, scale=scale, fallback=False, platform=platform)
            alone = [one(q[:1], k[:1], v[:1]) for _ in range(reruns)]
            together = many(q, k, v)
            moved = many(q[order], k[order], v[order])
        except BackendUnavailableError as exc:
            row.error = "; ".join(r for rs in exc.reasons.values() for r in rs) or str(exc)
            rows.append(row)
            continue
        except Exception as exc:  # noqa: BLE001 - a kernel that fails is reported, the others still run
            row.error = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            continue
        row.rerun_identical, row.rerun_max_abs = _same(alone[0], *alone[1:])
        row.batch_invariant, row.batch_max_abs = _same(alone[0], together[:1])
        row.position_invariant, row.position_max_abs = _same(together[:1], moved[-1:])
        row.ulp_at_max = _ulp_max(alone[0])
        rows.append(row)
    return InvarianceReport(rows, meta={"input": spec.name, "dtype": torch_dtype_name(dtype),
                                        "batch": batch, "reruns": reruns, "seed": seed, "device": str(device),
                                        "platform": platform.describe()})


def _same(first: torch.Tensor, *others: torch.Tensor) -> tuple[bool, float]:
    diff = max(((o.double() - first.double()).abs().max().item() for o in others), default=0.0)
    return all(torch.equal(first, o) for o in others), diff


def _ulp_max(out: torch.Tensor) -> float:
    """The spacing of the dtype at the output's largest value: one rounding step there."""
    largest = out.double().abs().max().item()
    return float(torch.finfo(out.dtype).eps * largest) if out.is_floating_point() else 0.0


__all__ = ["InvarianceReport", "InvarianceRow", "check_invariance"]
