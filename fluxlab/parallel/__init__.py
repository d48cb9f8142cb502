"""Sequence-parallel FLUX.2 (Ulysses and ring) on diffusers' context parallelism, fluxlab's backends inside:
``check_parallel`` before launch, ``enable_sequence_parallel`` in a torch.distributed job, ``compare_parallel`` for
N ranks vs 1 rank vs float64, ``check_lse`` for the LSE ring merges with. Guide: docs/parallel.md."""

from .checks import MODES, ParallelRefusedError, ParallelSpec, check_parallel, lse_backends, require_parallel
from .compare import ParallelComparison, ParallelRow, compare_parallel, tolerance_for
from .engine import diffusers_name, engine_problems, register_in_diffusers, set_model_backend
from .launch import disable_sequence_parallel, enable_sequence_parallel, init_distributed, spawn
from .lse import LseCheck, check_lse

__all__ = [
    "LseCheck", "MODES", "ParallelComparison", "ParallelRefusedError", "ParallelRow", "ParallelSpec", "check_lse",
    "check_parallel", "compare_parallel", "diffusers_name", "disable_sequence_parallel", "enable_sequence_parallel",
    "engine_problems", "init_distributed", "lse_backends", "register_in_diffusers", "require_parallel",
    "set_model_backend", "spawn", "tolerance_for",
]
