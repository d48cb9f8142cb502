"""Hybrid schedules: which backend each attention call uses, by layer name and denoising step. Any
``fn(layer, step, num_steps) -> backend name or None`` is one; :class:`Schedule` is the declarative form, whose
backend names are checked against the model's allowed set when it is installed, before any generation runs."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable


def layer_matches(name: str, pattern: str) -> bool:
    """Glob match on layer names; a module prefix selects what is under it ("transformer_blocks.0" -> ".attn")."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def step_matches(step: int | None, num_steps: int | None, steps: frozenset[int] | None) -> bool:
    """``steps`` holds step indices; negative ones count from the end (-1: the last step)."""
    if steps is None:
        return True
    if step is None:
        return False
    if step in steps:
        return True
    return num_steps is not None and (step - num_steps) in steps


def as_step_set(steps) -> frozenset[int] | None:
    if steps is None:
        return None
    if isinstance(steps, int):
        steps = (steps,)
    steps = frozenset(steps)
    if not all(isinstance(s, int) for s in steps):
        raise TypeError(f"steps must be integers (negative counts from the end), got {sorted(map(repr, steps))}")
    return steps


@dataclasses.dataclass(frozen=True)
class Rule:
    """Use ``backend`` for calls in ``layers`` (glob patterns) at ``steps`` (indices; -1 is the last step)."""

    backend: str
    layers: tuple[str, ...] = ("*",)
    steps: frozenset[int] | None = None

    def __post_init__(self):  # accept a bare pattern and any iterable of steps
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "steps", as_step_set(self.steps))

    def matches(self, layer: str, step: int | None, num_steps: int | None) -> bool:
        return (step_matches(step, num_steps, self.steps)
                and any(layer_matches(layer, pattern) for pattern in self.layers))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Rules checked in order, first match wins; ``default`` (None: the pipeline's backend) for the rest.

    ``Schedule.exact_ends("aiter", "aiter_sage")`` is the serving-framework hybrid: the exact kernel for the first
    and last steps, the quantised one in between. Per layer:
    ``Schedule(default="sdpa", rules=[Rule("reference", layers=("single_transformer_blocks.*",))])``.
    """

    default: str | None = None
    rules: tuple[Rule, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules))

    @classmethod
    def exact_ends(cls, exact: str, middle: str, *, first: int = 1, last: int = 1) -> Schedule:
        """``exact`` for the first ``first`` and last ``last`` steps, ``middle`` for every step between."""
        ends = frozenset(range(first)) | frozenset(range(-last, 0))
        return cls(default=middle, rules=(Rule(exact, steps=ends),))

    @classmethod
    def by_layer(cls, layers: dict[str, str], default: str | None = None) -> Schedule:
        """``{"single_transformer_blocks.*": "sdpa", ...}``: a backend per layer-name pattern."""
        return cls(default=default, rules=tuple(Rule(b, layers=(p,)) for p, b in layers.items()))

    def __call__(self, layer: str, step: int | None, num_steps: int | None) -> str | None:
        for rule in self.rules:
            if rule.matches(layer, step, num_steps):
                return rule.backend
        return self.default

    def backend_names(self) -> list[str]:
        names = [rule.backend for rule in self.rules]
        return names + ([self.default] if self.default is not None else [])

    def unmatched_patterns(self, layer_names: Iterable[str]) -> list[str]:
        names = list(layer_names)
        return [p for rule in self.rules for p in rule.layers
                if not any(layer_matches(n, p) for n in names)]
