"""Train fluxlab's embedded FLUX.2 [klein]-architecture model on procedural coloured-shape scenes.

Real diffusers/transformers classes at small sizes: ``AutoencoderKLFlux2`` (x4, 8 latent channels), a 27-layer
Qwen3 text encoder of width 32 over the byte-level tokenizer of ``fluxlab.models.tiny``, and a
``Flux2Transformer2DModel`` (4 double + 4 single blocks, 4 heads x 32). Two phases, fixed seeds:

1. the VAE as an autoencoder (MSE + a small KL term); then the latent BatchNorm statistics the pipeline uses;
2. the transformer and text encoder jointly with rectified flow as FLUX does: x_t = (1 - s) x0 + s noise, predict
   noise - x0, s = the scheduler's exponential time shift (the ``mu`` the pipeline computes at 64x64) applied to a
   uniform draw, so training sees noise levels with the density the pipeline's sampler visits them; 10 % of captions
   dropped to "" (what Flux2KleinPipeline encodes as the negative prompt) for true CFG; an EMA of the weights.

Then ``Flux2KleinPipeline(...).save_pretrained(out)`` (float32, ~14 MB) and a held-out check of the saved pipeline.
Run (GPU, ~7 min on one H100): ``python training/train_embedded.py --out fluxlab/models/embedded --steps N`` with the
N the shipped run logged (training/embedded_train_log.txt); ``--steps 0`` picks N from the measured step time so that
the transformer phase fits ``--budget-minutes``.
CPU smoke test (seconds): ``python training/train_embedded.py --smoke --out /tmp/embedded-smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fluxlab.models import tiny  # noqa: E402
from fluxlab.models.checkpoint import validate_flux2_config  # noqa: E402
from training import quality, shapes_data  # noqa: E402

TEXT_HIDDEN = 32
TEXT_OUT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's default text_encoder_out_layers

CONFIGS = {
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        # 3 blocks: x4 spatial compression (the released VAE is x8), so 64x64 images are 16x16 latents and, after the
        # pipeline's 2x2 packing, 8x8 = 64 image tokens -- enough for a 3x3 grid of positions.
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 8,
        "norm_num_groups": 16,
        "sample_size": 64,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
        "batch_norm_eps": 1e-4,
        "batch_norm_momentum": 0.1,
        "patch_size": (2, 2),
    },
    "transformer": {
        "patch_size": 1,
        "in_channels": 32,  # 4 x latent_channels
        "num_layers": 4,
        "num_single_layers": 4,
        "attention_head_dim": 32,
        "num_attention_heads": 4,
        "joint_attention_dim": len(TEXT_OUT_LAYERS) * TEXT_HIDDEN,
        "timestep_guidance_channels": 256,
        "mlp_ratio": 3.0,
        "axes_dims_rope": (8, 8, 8, 8),
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": False,  # Klein: true CFG, no guidance embedding
    },
    "text_encoder": {  # Qwen3Config; 27 layers so the pipeline's default out layers (9, 18, 27) apply
        "vocab_size": tiny.tiny_vocab_size("klein"),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 27,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": tiny._token_id("klein", "<|endoftext|>"),
        "pad_token_id": tiny._token_id("klein", "<|endoftext|>"),
    },
    "scheduler": tiny.TINY_CONFIGS["klein"]["scheduler"],  # FLUX.2's FlowMatchEulerDiscreteScheduler settings
}

# Text padding per step, cycled: 144 fits every caption (at most 129 tokens) and is what the tests use; 512 is the
# pipeline's default max_sequence_length; 256 in between.
SEQ_LENGTHS = (144, 256, 144, 512)


def log(*parts) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Text: the exact token ids and embeddings Flux2KleinPipeline computes, without its per-prompt Jinja rendering.
# ---------------------------------------------------------------------------------------------------------------


class FastPromptIds:
    """Token ids of the Klein chat template around a caption, padded to ``length`` (checked against the tokenizer)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        empty = self._reference([""], 64)[0]
        self.template = empty[0][: int(empty[1].sum())].tolist()
        prefix = self._chat("")
        self.split = len(self.tokenizer(prefix[: prefix.index("\n") + 1])["input_ids"])
        vocab = tokenizer.get_vocab()
        self.byte_ids = [vocab[c] for c in tiny._byte_characters()]
        self.pad = tokenizer.pad_token_id

    def _chat(self, caption: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": caption}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)

    def _reference(self, captions, length):
        out = [self.tokenizer(self._chat(c), padding="max_length", truncation=True, max_length=length,
                              return_tensors="pt") for c in captions]
        return [(o["input_ids"][0], o["attention_mask"][0]) for o in out]

    def __call__(self, captions, length: int):
        ids = torch.full((len(captions), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(captions), length), dtype=torch.long)
        for i, caption in enumerate(captions):
            row = (self.template[: self.split] + [self.byte_ids[b] for b in caption.encode()]
                   + self.template[self.split:])[:length]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    def check(self, captions, length: int) -> None:
        ids, mask = self(captions, length)
        for i, (ref_ids, ref_mask) in enumerate(self._reference(captions, length)):
            assert torch.equal(ids[i], ref_ids) and torch.equal(mask[i], ref_mask), captions[i]


def prompt_embeds(text_encoder, ids, mask):
    """Flux2KleinPipeline._get_qwen3_prompt_embeds after tokenisation: hidden states 9, 18, 27, stacked per token."""
    out = text_encoder.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    stacked = torch.stack([out.hidden_states[k] for k in TEXT_OUT_LAYERS], dim=1)
    b, n, length, hidden = stacked.shape
    return stacked.permute(0, 2, 1, 3).reshape(b, length, n * hidden)


# ---------------------------------------------------------------------------------------------------------------
# Latents: the pipeline's own static helpers, so training sees exactly what inference produces.
# ---------------------------------------------------------------------------------------------------------------


def image_latents(pipeline_class, vae, images):
    """Images [-1, 1] -> patchified, BatchNorm-normalised, packed latents [B, tokens, 4 * latent_channels]."""
    latents = vae.encode(images).latent_dist.mode()
    latents = pipeline_class._patchify_latents(latents)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return pipeline_class._pack_latents((latents - mean) / std)


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """CPU -> GPU through pinned memory: the copy does not make the CPU wait for the GPU's queued work."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def shifted_sigmas(u: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """The scheduler's exponential time shift (FlowMatchEulerDiscreteScheduler.time_shift, sigma exponent 1)."""
    return torch.exp(mu) / (torch.exp(mu) + (1.0 / u - 1.0))


# ---------------------------------------------------------------------------------------------------------------


def build_models(seed: int):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    validate_flux2_config(CONFIGS["transformer"], CONFIGS["vae"], CONFIGS["text_encoder"],
                          text_encoder_out_layers=TEXT_OUT_LAYERS)
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(**copy.deepcopy(CONFIGS["vae"]))
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(**copy.deepcopy(CONFIGS["text_encoder"])))
    torch.manual_seed(seed + 2)
    transformer = Flux2Transformer2DModel(**copy.deepcopy(CONFIGS["transformer"]))
    # adaLN-Zero (as in DiT): every block starts as the identity and the output as zero velocity.
    with torch.no_grad():
        for module in (transformer.double_stream_modulation_img, transformer.double_stream_modulation_txt,
                       transformer.single_stream_modulation):
            module.linear.weight.zero_()
        transformer.norm_out.linear.weight.zero_()
        transformer.proj_out.weight.zero_()
    return vae, text_encoder, transformer


def batch_scenes(step: int, batch: int, seed: int):
    return shapes_data.sample_scenes(batch, seed=seed * 1_000_003 + step)


def train_vae(vae, args, device, autocast):
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    vae.train()
    t0 = time.time()
    for step in range(args.vae_steps):
        images = shapes_data.render(batch_scenes(step, args.vae_batch, args.seed + 17), device=device)
        lr = args.vae_lr * min(1.0, (step + 1) / 100) * (0.5 * (1 + math.cos(math.pi * step / args.vae_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast():
            posterior = vae.encode(images).latent_dist
            recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon.float(), images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent dimension
        loss = mse + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.vae_steps - 1:
            psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-12))
            log(f"vae step {step:5d}  mse {mse.item():.5f}  psnr {psnr:5.2f} dB  kl/dim {kl.item():.3f}  "
                f"lr {lr:.2e}  {time.time() - t0:6.1f}s")
    vae.eval()
    return time.time() - t0


@torch.no_grad()
def set_latent_statistics(pipeline_class, vae, args, device, autocast):
    """The pipeline normalises packed latents with vae.bn's running mean/var: set them to the data's statistics."""
    chunks = []
    for i in range(args.bn_batches):
        images = shapes_data.render(batch_scenes(i, 256, args.seed + 29), device=device)
        with autocast():
            latents = pipeline_class._patchify_latents(vae.encode(images).latent_dist.mode().float())
        chunks.append(latents.transpose(0, 1).reshape(latents.shape[1], -1))
    flat = torch.cat(chunks, dim=1)
    vae.bn.running_mean.copy_(flat.mean(1))
    vae.bn.running_var.copy_(flat.var(1))
    vae.bn.num_batches_tracked.fill_(1)
    # Reconstruction check on held-out scenes.
    images = shapes_data.render(shapes_data.sample_scenes(256, seed=99, split="heldout"), device=device)
    recon = vae.decode(vae.encode(images).latent_dist.mode()).sample.float().clamp(-1, 1)
    mse = F.mse_loss(recon, images).item()
    hits = [x for img, s in zip(shapes_data.to_uint8(recon), shapes_data.sample_scenes(256, seed=99, split="heldout"))
            for x in shapes_data.shape_hits(img, s)]
    log(f"vae held-out reconstruction: psnr {10 * math.log10(4.0 / mse):.2f} dB, pixel test {np.mean(hits):.1%}; "
        f"latent mean |{flat.mean(1).abs().mean():.3f}|, std {flat.std(1).mean():.3f}")


def train_transformer(pipeline_class, vae, text_encoder, transformer, prompt_ids, args, device, autocast):
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    # mu for 64 image tokens, over the step counts people use (4 .. 50): 1.60 .. 1.95.
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    mu_range = (compute_empirical_mu(64, 50), compute_empirical_mu(64, 4))
    gen = torch.Generator(device=device).manual_seed(args.seed + 3)
    drop_gen = np.random.default_rng(args.seed + 5)
    transformer.train()
    text_encoder.train()
    # Position ids are the same for every batch of one text length: the pipeline's own helpers, computed once.
    side = shapes_data.IMAGE_SIZE // (2 * 2 ** (len(vae.config.block_out_channels) - 1))  # 8 tokens a side
    latent_shape = (1, 4 * vae.config.latent_channels, side, side)
    img_ids = pipeline_class._prepare_latent_ids(torch.zeros(latent_shape))[0].to(device)
    txt_ids = {n: pipeline_class._prepare_text_ids(torch.zeros(1, n, 1))[0].to(device) for n in set(SEQ_LENGTHS)}
    t0 = time.time()
    losses = []
    total = args.steps or None  # None: decided from the measured step time (steps 10..110)
    step = 0
    while total is None or step < total:
        if total is None and step == 10:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_calibrate = time.time()
        if total is None and step == 110:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            per_step = (time.time() - t_calibrate) / 100
            total = max(200, int((60 * args.budget_minutes - (time.time() - t0)) / per_step + 110) // 100 * 100)
            log(f"step time {per_step * 1e3:.1f} ms -> --steps {total} fits --budget-minutes {args.budget_minutes}")
        scenes = batch_scenes(step, args.batch, args.seed)
        captions = ["" if drop_gen.random() < args.caption_dropout else s.caption for s in scenes]
        length = SEQ_LENGTHS[step % len(SEQ_LENGTHS)]
        ids, mask = prompt_ids(captions, length)
        ids, mask = to_device(ids, device), to_device(mask, device)
        with torch.no_grad(), autocast():
            x0 = image_latents(pipeline_class, vae, shapes_data.render(scenes, device=device))
        x0 = x0.float()
        noise = torch.randn(x0.shape, generator=gen, device=device)
        u = torch.rand((x0.shape[0],), generator=gen, device=device).clamp(1e-4, 1 - 1e-4)
        mu = mu_range[0] + (mu_range[1] - mu_range[0]) * torch.rand((x0.shape[0],), generator=gen, device=device)
        sigma = shifted_sigmas(u, mu)
        s = sigma.view(-1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        target = noise - x0

        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if total is not None and step > total * 0.6:  # cosine decay over the last 40 %
            progress = (step - total * 0.6) / (total * 0.4)
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast():
            embeds = prompt_embeds(text_encoder, ids, mask)
            pred = transformer(hidden_states=x_t, timestep=sigma, guidance=None, encoder_hidden_states=embeds,
                               txt_ids=txt_ids[length], img_ids=img_ids, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(loss.detach())
        if step % args.log_every == 0 or step == (total or 0) - 1:
            mean_loss = torch.stack(losses).mean().item()
            losses.clear()
            elapsed = time.time() - t0
            memory = f"  {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
            log(f"step {step:5d}  loss {mean_loss:.4f}  lr {lr:.2e}  L {length}  {elapsed:6.1f}s  "
                f"{(step + 1) * args.batch / max(elapsed, 1e-9):7.0f} img/s{memory}")
        step += 1
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    transformer.eval()
    text_encoder.eval()
    return time.time() - t0, step


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def evaluate(out: Path, args, device) -> None:
    """Held-out check of the saved files, loaded the way users load them (float32)."""
    from diffusers import Flux2KleinPipeline

    few = {"num_inference_steps": 2} if args.smoke else {}
    loaded = Flux2KleinPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True).to(device)
    loaded.set_progress_bar_config(disable=True)
    scenes = shapes_data.sample_scenes(args.eval_scenes, seed=31337, split="heldout")
    for steps in ((2,) if args.smoke else (4, 8, 16)):
        for length in ((144,) if args.smoke else (144, 512)):
            result = quality.heldout_accuracy(loaded, scenes, num_inference_steps=steps, max_sequence_length=length,
                                              batch_size=100)
            log(f"held-out accuracy, {steps:2d} steps, text length {length}: {result.summary()}")
    train_scenes = shapes_data.sample_scenes(args.eval_scenes, seed=4242)
    result = quality.heldout_accuracy(loaded, train_scenes, batch_size=100, **few)
    log(f"training-distribution accuracy: {result.summary()}")
    test = quality.test_scenes()[: 4 if args.smoke else None]
    result = quality.heldout_accuracy(loaded, test, **few)
    log(f"the tests' {len(test)} held-out captions (quality.TEST_SCENES, quality.GENERATION): {result.summary()}")
    trained, random = quality.entropy_trained_vs_random(loaded)
    log(f"mean attention entropy (nats, {trained.keys} keys, uniform = {trained.uniform:.3f}): "
        f"trained {trained.mean:.3f}, random init {random.mean:.3f}")
    if os.environ.get("OUT"):
        import PIL.Image

        grid = (result.images * 255).round().astype(np.uint8)
        rows = [np.concatenate(list(grid[i:i + 10]), axis=1) for i in range(0, len(grid) - len(grid) % 10, 10)]
        if rows:
            PIL.Image.fromarray(np.concatenate(rows, axis=0)).save(Path(os.environ["OUT"]) / "test_scenes.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="fluxlab/models/embedded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=128)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-kl", type=float, default=1e-4)
    parser.add_argument("--bn-batches", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0, help="transformer steps; 0: fit --budget-minutes")
    parser.add_argument("--budget-minutes", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=384)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--eval-scenes", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything at small batches (CPU)")
    parser.add_argument("--skip-training", action="store_true", help="only evaluate the pipeline saved in --out")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vae_steps, args.vae_batch, args.bn_batches, args.steps, args.batch = 3, 4, 1, 3, 4
        args.eval_scenes, args.log_every, args.warmup = 4, 1, 2

    import diffusers
    import transformers
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}  device {card}")
    log(f"python {platform.python_version()}  torch {torch.__version__}  diffusers {diffusers.__version__}  "
        f"transformers {transformers.__version__}")
    log("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    log("args:", vars(args))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    t_start = time.time()
    if args.skip_training:
        evaluate(Path(args.out), args, device)
        return 0
    vae, text_encoder, transformer = build_models(args.seed)
    for name, model in (("vae", vae), ("text_encoder", text_encoder), ("transformer", transformer)):
        log(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters")
    vae, text_encoder, transformer = vae.to(device), text_encoder.to(device), transformer.to(device)
    tokenizer = tiny.build_tiny_tokenizer("klein")
    prompt_ids = FastPromptIds(tokenizer)
    check = [s.caption for s in shapes_data.sample_scenes(50, seed=7)] + [""]
    for length in sorted(set(SEQ_LENGTHS)):
        prompt_ids.check(check, length)
    longest = max(len(s.caption) for s in shapes_data.sample_scenes(5000, seed=11))
    assert int(prompt_ids([("x" * longest)], 512)[1].sum()) <= min(SEQ_LENGTHS), "captions would be truncated"

    vae_seconds = train_vae(vae, args, device, autocast)
    set_latent_statistics(Flux2KleinPipeline, vae, args, device, autocast)
    vae.requires_grad_(False)

    # Our text path must give exactly what the pipeline computes.
    scheduler = FlowMatchEulerDiscreteScheduler(**copy.deepcopy(CONFIGS["scheduler"]))
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=False)
    with torch.no_grad():
        ids, mask = prompt_ids(check[:4], 144)
        ours = prompt_embeds(text_encoder, ids.to(device), mask.to(device))
        theirs, _ = pipe.encode_prompt(prompt=check[:4], device=device, max_sequence_length=144)
        assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()

    tf_seconds, steps_done = train_transformer(Flux2KleinPipeline, vae, text_encoder, transformer, prompt_ids, args,
                                               device, autocast)
    log(f"training time: vae {vae_seconds:.0f} s, transformer+text encoder {tf_seconds:.0f} s "
        f"({steps_done} steps x {args.batch}), total {time.time() - t_start:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)  # float32: small enough, and loads the same on every device
    size = directory_size(out)
    log(f"saved {out} ({size / 2**20:.2f} MiB): " + ", ".join(
        sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)))
    assert size <= 20 * 10**6, f"{size} bytes > 20 MB"

    del pipe
    evaluate(out, args, device)
    log(f"done in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
