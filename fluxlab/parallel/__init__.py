"""Sequence-parallel FLUX.2 (Ulysses and ring) on diffusers' context parallelism, fluxlab's backends inside.

``check_parallel`` says why a backend cannot serve a mode before anything launches; ``enable_sequence_parallel``
splits a transformer over the ranks of a torch.distributed job; ``compare_parallel`` runs N ranks against 1 rank
with the same backend and against one device's float64 output and gives a verdict; ``check_lse`` says whether a
backend's LSE is the one ring merges with. Modules: ``checks`` (rules), ``engine`` (the bridge into diffusers'
attention registry), ``launch`` (process groups, enable/disable, local spawning), ``model`` (random-weight
transformers and inputs), ``compare`` (metrics and verdicts), ``lse`` (the LSE probe), ``cli``
(``fluxlab parallel``).
"""

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
