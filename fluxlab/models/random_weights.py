"""A FLUX.2 transformer with seeded random weights, built where it will run (meta -> ``to_empty`` -> init there).

The [dev] transformer is 32 B parameters (64 GB in bf16): building it in fp32 on the host first does not fit an
80 GB card, so it is built on the meta device with the target dtype as default and initialised on the device.
"""

from __future__ import annotations

import torch


def random_transformer(config: dict, *, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """``Flux2Transformer2DModel(**config)`` on ``device`` in ``dtype``; same seed, device type and dtype give
    bit-identical weights (so every rank of a parallel job builds the same copy). Eval mode, no grad."""
    from diffusers import Flux2Transformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Flux2Transformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if reset is not None and any(True for _ in module.parameters(recurse=False)):
                reset()
    uninitialised = [name for name, module in model.named_modules()
                     if any(True for _ in module.parameters(recurse=False)) and not hasattr(module, "reset_parameters")]
    if uninitialised or any(True for _ in model.buffers()):
        raise RuntimeError(f"cannot initialise {uninitialised or 'buffers'} after to_empty: this diffusers version "
                           "added parameters without reset_parameters(); extend fluxlab.models.random_weights")
    return model.eval().requires_grad_(False)
