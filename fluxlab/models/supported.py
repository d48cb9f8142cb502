"""FLUX.2's attention backends: every backend that can serve its calls, unless the user narrows the set.

What every FLUX.2 attention call asks of a kernel: non-causal, no mask, no dropout, q/k/v [B, S, H, 128] in the
model dtype (bf16 in practice), H_q = H_kv, and S_q != S_k in the Klein KV pipeline's cached steps. A backend that
cannot serve that declares ``flux2=False`` in its adapter; every other one, built in, registered or a plug-in, is
allowed by default, so a kernel registered after ``load_flux2`` runs without re-attaching.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import registry
from ..backends import BUILTIN_BACKENDS, BUILTIN_GROUPS

# The built-in backends and groups a FLUX.2 model may use (derived from the adapters' ``flux2`` declarations).
FLUX2_BACKENDS: frozenset[str] = frozenset(
    [b.name for b in BUILTIN_BACKENDS if b.flux2] + [g.name for g in BUILTIN_GROUPS])

_cached: list = [None, None]  # [registry generation, set]


def flux2_backends() -> frozenset[str]:
    """Every backend and group registered now that a FLUX.2 model may use: the default allowed set."""
    if _cached[0] != registry.generation():
        names = [b.name for b in registry.all_backends() if b.flux2] + [g.name for g in registry.all_groups()]
        _cached[:] = [registry.generation(), frozenset(names)]
    return _cached[1]


def resolve_allowed(allowed: Iterable[str] | None) -> frozenset[str] | None:
    """The canonical backend names a model allows; ``None`` stays None (every backend FLUX.2 may use, judged when
    it runs: ``flux2_backends()``). Unknown names raise with a hint."""
    if allowed is None:
        return None
    if isinstance(allowed, str):
        allowed = [allowed]  # a bare string would otherwise be iterated letter by letter
    names = frozenset(registry.canonical_name(name) for name in allowed)
    if not names:
        raise ValueError("allowed= is empty: a FLUX.2 model needs at least one attention backend, e.g. "
                         "allowed={'sdpa'} or FLUX2_BACKENDS")
    return names
