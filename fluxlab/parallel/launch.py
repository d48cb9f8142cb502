"""Process groups, switching a FLUX.2 transformer in and out of diffusers' context parallelism, and ``spawn``: N
local ranks without torchrun (file rendezvous: no port to collide on)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import logging
import os
import tempfile
import time
import traceback
import warnings
from unittest import mock

import torch
import torch.distributed as dist

from ..errors import SpawnError
from . import engine
from .checks import ParallelRefusedError, ParallelSpec, check_parallel, sequence_reasons

DEFAULT_TIMEOUT_S = 120


def init_distributed(backend: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                     init_method: str | None = None, rank: int | None = None,
                     world_size: int | None = None) -> tuple[int, int, torch.device]:
    """Join (or create) the default process group; returns ``(rank, world_size, device)``. NCCL when CUDA GPUs are
    present (each rank on ``cuda:LOCAL_RANK``), gloo otherwise; without arguments, from torchrun's environment."""
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", rank if rank is not None else os.environ.get("RANK", 0)))
    device = torch.device("cuda", local_rank) if use_cuda and backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if init_method is not None:
            kwargs.update(init_method=init_method, rank=rank, world_size=world_size)
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(backend, **kwargs)
    return dist.get_rank(), dist.get_world_size(), device


@functools.cache
def _mesh(device_type: str, ring: int, ulysses: int, world_size: int):
    """One device mesh per shape (and job size), reused: diffusers would build new process groups every time."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (ring, ulysses), mesh_dim_names=("ring", "ulysses"))


def enable_sequence_parallel(transformer, backend: str, parallel: str | ParallelSpec, *,
                             seq_lens: dict[str, int] | None = None, dtype: torch.dtype | None = None):
    """Split ``transformer``'s sequence (``parallel``: ``"ulysses=2"``, ``"ring=2"``, ``"ulysses=2,ring=2"``) over the
    ranks of the default process group with diffusers' context parallelism, attention served by fluxlab backend
    ``backend``; raises :class:`ParallelRefusedError` first. Every rank calls it alike, then runs the same forward on
    the same full inputs; the output comes back whole on every rank."""
    spec = ParallelSpec.parse(parallel)
    if not dist.is_initialized():
        raise ParallelRefusedError(["torch.distributed is not initialised: launch with torchrun and call "
                                    "fluxlab.parallel.init_distributed() first"], f"{spec}")
    from diffusers import ContextParallelConfig

    reasons = check_parallel(backend, spec, heads=int(transformer.config.num_attention_heads), seq_lens=seq_lens,
                             head_dim=int(transformer.config.attention_head_dim),
                             dtype=dtype or next(transformer.parameters()).dtype,
                             world_size=dist.get_world_size())
    if reasons:
        raise ParallelRefusedError(reasons, f"{spec} with backend '{backend}'")
    problems = engine.engine_problems()
    if problems:
        raise ParallelRefusedError(problems, f"{spec}: the diffusers engine")
    if getattr(transformer, "_parallel_config", None) is not None:
        raise ParallelRefusedError(["this transformer is already parallel: call disable_sequence_parallel(...) "
                                    "first"], f"{spec}")
    # diffusers 0.42's templates call a functional collective that torch 2.13 deprecates, once per layer and step
    warnings.filterwarnings("ignore", message=".*all_gather_tensor.*is deprecated", category=FutureWarning)
    engine.set_model_backend(transformer, backend)
    mesh = _mesh("cuda" if dist.get_backend() == "nccl" else "cpu", spec.ring, spec.ulysses, dist.get_world_size())
    config = ContextParallelConfig(ulysses_degree=spec.ulysses, ring_degree=spec.ring, mesh=mesh)
    # diffusers 0.42.1 computes ``rank % torch.accelerator.device_count()``, a division by zero without an
    # accelerator (gloo on CPU): it counts 1 there while enable_parallelism runs.
    no_accelerator = torch.accelerator.device_count() == 0
    quiet = logging.getLogger("diffusers.models.modeling_utils")  # its "experimental feature" warning
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with mock.patch.object(torch.accelerator, "device_count", lambda: 1) if no_accelerator else \
                contextlib.nullcontext():
            transformer.enable_parallelism(config=config)
    finally:
        quiet.setLevel(level)
    install_sequence_guard(transformer, spec)
    if spec.ring > 1:  # probe the backend's LSE once (a small attention call on this rank); warn with the reason
        from .lse import LseWarning, probe, ring_reason

        parameter = next(transformer.parameters())
        check = probe(backend, parameter.device, parameter.dtype, int(transformer.config.attention_head_dim))
        if check is not None and not check.ok:
            warnings.warn(f"{spec} with '{backend}' will give wrong outputs: {ring_reason(check)}", LseWarning,
                          stacklevel=2)
    return config


def disable_sequence_parallel(transformer) -> None:
    """Undo ``enable_sequence_parallel``: remove diffusers' split/gather hooks and the processors' parallel config
    (the fluxlab backend stays set). diffusers 0.42 has no public inverse of ``enable_parallelism``."""
    from diffusers.hooks.context_parallel import remove_context_parallel

    config = getattr(transformer, "_parallel_config", None)
    if config is None:
        return
    remove_context_parallel(transformer, transformer._cp_plan)
    for processor in engine.attention_processors(transformer):
        if hasattr(processor, "_parallel_config"):
            processor._parallel_config = None
    transformer._parallel_config = None
    _remove_guard(transformer)


def _remove_guard(transformer) -> None:
    handle = getattr(transformer, "_fluxlab_sequence_guard", None)
    if handle is not None:
        handle.remove()
    transformer._fluxlab_sequence_guard = None


def install_sequence_guard(transformer, spec: ParallelSpec) -> None:
    """Refuse, with a sentence, inputs whose text or image length does not divide by the ranks (diffusers would
    stop at a bare assert inside its sharder)."""
    def guard(module, args, kwargs):
        inputs = {"text": kwargs.get("encoder_hidden_states"), "image": kwargs.get("hidden_states")}
        reasons = sequence_reasons(spec, {label: value.shape[1] for label, value in inputs.items()
                                          if isinstance(value, torch.Tensor) and value.dim() == 3})
        if reasons:
            raise ParallelRefusedError(reasons, f"this forward under {spec}")

    _remove_guard(transformer)
    transformer._fluxlab_sequence_guard = transformer.register_forward_pre_hook(guard, with_kwargs=True)


# ------------------------------------------------------------------------------------------ local ranks


def _spawned_rank(rank: int, world_size: int, init_file: str, target: str, payload, queue) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # local ranks talk over loopback
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    if not torch.cuda.is_available():  # ranks share the CPU: no thread oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        init_distributed(init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        queue.put((rank, "ok", import_target(target)(payload)))
    except BaseException as exc:  # every failure goes back to the parent, with its traceback
        queue.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def import_target(target: str):
    """The function ``"module:function"`` names."""
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


# Imported once by the fork server (a fresh interpreter, no threads or CUDA yet), inherited by every rank.
FORKSERVER_PRELOAD = ("fluxlab.parallel.compare", "fluxlab.parallel.model",
                      "diffusers.models.transformers.transformer_flux2", "diffusers.hooks.context_parallel")


def spawn(target: str, payload, nprocs: int, *, timeout_s: float = 300) -> list:
    """Run ``target(payload)`` (``"module:function"``) on ``nprocs`` local ranks; returns each rank's result. Ranks
    rendezvous through a file (no TCP port to race for) and are terminated if they outlive ``timeout_s`` or a peer
    fails; on Linux they fork from a "forkserver" that has imported diffusers once (seconds per process saved)."""
    import queue as queue_mod

    import torch.multiprocessing as mp

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # no effect once this process's server runs
    results: dict[int, object] = {}
    errors: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="fluxlab-spawn-") as tmp:
        queue = ctx.Queue()
        procs = [ctx.Process(target=_spawned_rank, args=(r, nprocs, os.path.join(tmp, "rendezvous"), target, payload,
                                                         queue), daemon=True) for r in range(nprocs)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            while len(results) < nprocs and not errors and time.monotonic() < deadline:
                try:
                    rank, status, value = queue.get(timeout=0.5)
                except queue_mod.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        break  # a peer died: the others would wait on a collective until the timeout
                    continue
                (results if status == "ok" else errors)[rank] = value
        finally:
            for p in procs:
                p.join(timeout=5 if not errors and len(results) == nprocs else 0.1)
            for p in procs:
                for stop in (p.terminate, p.kill):  # politely first
                    if p.is_alive():
                        stop()
                        p.join(timeout=5)
    if errors or len(results) < nprocs:
        missing = [r for r in range(nprocs) if r not in results and r not in errors]
        detail = "\n".join(f"rank {r}: {text}" for r, text in sorted(errors.items()))
        if missing:
            codes = {r: procs[r].exitcode for r in missing}
            detail += f"\nranks {missing} gave no result (exit codes {codes}; timeout {timeout_s} s)"
        raise SpawnError(f"{target} on {nprocs} ranks failed:\n{detail}")
    return [results[r] for r in range(nprocs)]
