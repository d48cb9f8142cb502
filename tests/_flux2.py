"""Shared by the tests/test_flux2_*.py files: a short generation and an attach-for-one-test context."""

from __future__ import annotations

import contextlib

import torch

import fluxlab
from fluxlab import util


def generate(pipe, steps=2, **overrides):
    """2 steps, 64x64, 64 text tokens (S = 64 + 16): every component runs, and 2 shared CPU cores cope."""
    kwargs = dict(prompt="a red circle", height=64, width=64, num_inference_steps=steps, guidance_scale=4.0,
                  max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type="np")
    kwargs.update(overrides)
    return pipe(**kwargs).images


@contextlib.contextmanager
def attached(pipe, **kwargs):
    fluxlab.attach(pipe, **kwargs)
    try:
        yield pipe
    finally:
        fluxlab.detach(pipe)


rel_l2 = util.rel_l2  # one definition for tests and package
