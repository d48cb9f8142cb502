"""diffusers' keyword names accepted beside fluxlab's, so a diffusers habit works: ``num_inference_steps=`` is
``steps=``."""

from __future__ import annotations

import functools
import inspect

from .errors import InvalidSettingError

# diffusers' pipeline-call name -> fluxlab's name for the same setting.
DIFFUSERS_NAMES = {"num_inference_steps": "steps"}


def diffusers_names(fn):
    """Let ``fn`` (a fluxlab function with a ``steps`` parameter) also take diffusers' ``num_inference_steps``;
    both given and different is refused, naming both."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def accepting(*args, **kwargs):
        for theirs, ours in DIFFUSERS_NAMES.items():
            if theirs not in kwargs:
                continue
            value = kwargs.pop(theirs)
            try:
                given = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                given = kwargs  # a call fn itself will refuse; let it say why
            if ours in given and given[ours] != value:
                raise InvalidSettingError(f"{ours}={given[ours]!r} and {theirs}={value!r} disagree; they are one "
                                          f"setting (diffusers calls it {theirs}): pass one of them")
            if ours not in given:
                kwargs[ours] = value
        return fn(*args, **kwargs)

    return accepting
