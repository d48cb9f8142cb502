"""Helpers every part of fluxlab shares: atomic file writes, provenance, rel-L2, GPU-aware timing, dtype names.
One copy of each, so results files, records and reports are written, dated and measured the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform as _host
import re
import statistics
import subprocess
import tempfile
import warnings
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .version import __version__
from .errors import FluxlabWarning, UnknownDtypeError

# -- files ---------------------------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read from /proc (``os.umask`` reads it only by setting it: a race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that need a file name (``Image.save``, ``savefig``); at the end
    it gets ``open(path, "w")``'s mode and is renamed onto ``path`` in one step, or removed on an error."""
    final = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp makes the file 0600, and some writers (safetensors) recreate it: set the mode once they are done.
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically (see ``atomic_path``); returns it."""
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)
    return Path(path)


def write_result_file(path, data: bytes | str) -> Path:
    """``atomic_write`` for a result file a user named (``~`` expanded, the folder created); a failure names ``path``
    and the reason (``ResultFileError``), never the temporary file."""
    from .errors import ResultFileError

    path = Path(path).expanduser()
    if path.is_dir():
        raise ResultFileError(f"cannot write {path}: it is a folder; pass a file name, e.g. {path / 'result.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, data)
    except OSError as exc:
        raise ResultFileError(f"cannot write {path}: {exc.strerror or exc}; pass a path in a folder you can write "
                              "to") from None


# -- provenance ----------------------------------------------------------------------------------------------------

_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1, or SHA-256 object names
GIT_COMMIT_ENV = "FLUXLAB_GIT_COMMIT"  # where there is no checkout (a copied tree on a GPU machine): say it here


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second, e.g. ``2026-11-29T16:40:00+00:00``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_revision() -> dict | None:
    """The fluxlab checkout's ``{"commit": <hex>, "dirty": bool}``; None without git, a commit, or with fluxlab
    installed outside its own checkout. ``$FLUXLAB_GIT_COMMIT=<hex>`` (a tree copied without its history) wins."""
    declared = os.environ.get(GIT_COMMIT_ENV, "").strip().lower()
    if _COMMIT.fullmatch(declared):
        return {"commit": declared, "dirty": None}
    if declared:  # e.g. a short hash: ignored, and said, since the checkout's (possibly stale) answer is used instead
        warnings.warn(f"${GIT_COMMIT_ENV}={declared!r} is not a full commit hash (40 or 64 hex digits); it is ignored. "
                      f"Pass `git rev-parse HEAD`.", FluxlabWarning, stacklevel=2)
    root = Path(__file__).resolve().parents[1]
    commit = _git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=root)
    top = _git("rev-parse", "--show-toplevel", cwd=root)
    if commit and top and Path(top).resolve() == root and _COMMIT.fullmatch(commit):
        status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
        return {"commit": commit, "dirty": None if status is None else bool(status)}
    return None


def git_commit() -> str | None:
    """Just the commit hash of ``git_revision()``, or None."""
    return (git_revision() or {}).get("commit")


def distribution_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist`` (e.g. "flash-attn-4"), None where it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of Python, torch and the libraries fluxlab results depend on (None where not installed)."""
    found = {"python": _host.python_version(), "torch": torch.__version__}
    found |= {dist: distribution_version(dist) for dist in ("diffusers", "transformers", "safetensors")}
    return found | {"fluxlab": distribution_version("fluxlab") or __version__}


def provenance() -> dict:
    """Where and when a result was made (``date``, ``platform``, ``versions``, ``git``); every results file has it."""
    from .platform import current_platform

    return {"date": utc_now(), "platform": current_platform().as_dict(), "versions": versions(),
            "git": git_revision()}


# -- numbers -------------------------------------------------------------------------------------------------------


def rel_l2(out: torch.Tensor, ref: torch.Tensor, *, non_finite: float | None = None) -> float:
    """||out - ref|| / ||ref|| in float64. An all-zero ``ref`` gives 0.0 when ``out`` equals it, else inf.
    ``non_finite``: the answer where ``out`` holds NaN/inf (None: whatever the arithmetic gives, NaN or inf)."""
    out64, ref64 = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    if out64.shape != ref64.shape:
        raise ValueError(f"rel_l2 needs equal shapes, got {tuple(out64.shape)} and {tuple(ref64.shape)} "
                         "(broadcasting would compare the wrong elements)")
    if non_finite is not None and not torch.isfinite(out64).all():
        return non_finite
    diff, norm = (out64 - ref64).norm().item(), ref64.norm().item()
    return diff / norm if norm else 0.0 if diff == 0.0 else float("inf")


def jsonable(value, *, non_finite_as_text: bool = False):
    """``value`` as JSON data: NaN/inf as None (or "nan"/"inf" with ``non_finite_as_text``), tuples and sets as lists,
    dtypes by name, tensors and arrays by dtype and shape (never their data), anything else unknown as its str()."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value) if non_finite_as_text else None
    if isinstance(value, dict):
        return {str(k): jsonable(v, non_finite_as_text=non_finite_as_text) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, non_finite_as_text=non_finite_as_text) for v in value]
    if isinstance(value, torch.dtype):
        return torch_dtype_name(value)
    if getattr(value, "shape", None) is not None and hasattr(value, "dtype"):
        return f"{torch_dtype_name(value.dtype)}[{', '.join(map(str, value.shape))}]"
    if value is None or isinstance(value, (str, int, bool, float)):
        return value
    return str(value)


json_safe = jsonable  # the name fluxlab.decide uses


# -- timing --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Milliseconds of each timed call, and the last call's return value."""

    times_ms: list[float]
    result: object = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)


def synchronize(device=None) -> None:
    """Wait for the work queued on ``device`` (CUDA); nothing to wait for elsewhere. None: CUDA if in use."""
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, device=None,
               before_each: Callable[[], None] | None = None) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock, ms each), the GPU (``device``
    cuda, or None once CUDA is in use) synchronised before the clock starts and stops. ``before_each`` runs untimed
    before every timed call (e.g. a barrier so all ranks start together)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(times, result)


# -- dtype names ---------------------------------------------------------------------------------------------------

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
SHORT_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def parse_dtype(value) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / ``"torch.bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``."""
    if isinstance(value, torch.dtype):
        return value
    try:
        return DTYPES[str(value).lower().replace("torch.", "")]
    except KeyError:
        raise UnknownDtypeError(f"unknown dtype {value!r}; use one of {', '.join(sorted(DTYPES))}") from None


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the short names the CLI and benchmark files use)."""
    dtype = parse_dtype(dtype)
    return SHORT_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def torch_dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the names manifests and reports use; ``getattr(torch, name)``)."""
    return str(dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)).replace("torch.", "")
