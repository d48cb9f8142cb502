"""The embedded model: a small FLUX.2 [klein]-architecture pipeline trained on coloured-shape scenes, shipped in this folder.

The files beside this module are a ``diffusers.Flux2KleinPipeline`` written by ``save_pretrained`` (float32
safetensors, ~14 MB): ``AutoencoderKLFlux2`` (x4), a 27-layer Qwen3 text encoder of width 32 with a byte-level
tokenizer, and a ``Flux2Transformer2DModel`` of 4 double + 4 single blocks. ``training/train_embedded.py`` trains it
(training/README.md); ``training/shapes_data.py`` is its data. It draws 64x64 images of captions such as
"a red circle at the top left on a blue background".
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent

# The model was trained at 64x64 (8x8 = 64 image tokens); the pipeline's own default would be 512x512.
IMAGE_SIZE = 64


def load_embedded(device=None, dtype=None, *, flux2_variant: str | None = None):
    """The shipped pipeline, loaded offline with ``Flux2KleinPipeline.from_pretrained`` (no network, no download).

    ``dtype`` defaults to float32 (the stored precision). ``height``/``width`` default to 64 on the returned pipeline
    (``default_sample_size`` is set so), the size the model was trained at; call it with ``prompt=...``.
    ``flux2_variant``: None or "klein" (the embedded model is FLUX.2 [klein]: Qwen3 text encoder, true CFG).
    """
    import torch
    from diffusers import Flux2KleinPipeline

    if flux2_variant not in (None, "klein"):
        raise ValueError(f"the embedded model is FLUX.2 [klein] (Qwen3 text encoder, true CFG); "
                         f"flux2_variant={flux2_variant!r} cannot be loaded from it. Pass flux2_variant='klein' or "
                         "leave it out, or use source='tiny' for a random-weight [dev] pipeline.")
    if not (EMBEDDED_DIR / "model_index.json").is_file():
        raise FileNotFoundError(f"the embedded model's files are missing from {EMBEDDED_DIR} (model_index.json and "
                                "the component folders); reinstall fluxlab, or train them with "
                                "`python training/train_embedded.py` (training/README.md).")
    pipe = Flux2KleinPipeline.from_pretrained(EMBEDDED_DIR, dtype=dtype or torch.float32,
                                              local_files_only=True)
    pipe.default_sample_size = IMAGE_SIZE // pipe.vae_scale_factor
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    if pipe.transformer.device.type == "cpu":
        from ..checkpoint import realign_weights

        realign_weights(pipe)  # loaded weights stay views of the mmap'd files, where CPU kernels round differently
    return pipe
