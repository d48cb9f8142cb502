"""Records on disk: safetensors + a JSON manifest (machine, versions, git, SHA-256), atomic, hash-verified.
A record folder holds ``attention-<hash>.safetensors`` and ``manifest.json``; nothing is ever pickled.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform as _host
import subprocess
import tempfile
from pathlib import Path

import torch

from ..errors import FluxlabError
from ..platform import current_platform
from ..record import AttentionRecord

FORMAT = "fluxlab-attention-records"
FORMAT_VERSION = 1
TENSOR_PREFIX = "attention"  # tensor files are attention-<first 16 hex of their SHA-256>.safetensors
MANIFEST_FILE = "manifest.json"
_TENSOR_FIELDS = ("q", "k", "v", "out", "lse")


class RecordIntegrityError(FluxlabError, ValueError):
    """A record file does not match its manifest (changed, truncated or from another save)."""


def _versions() -> dict:
    import importlib.metadata

    versions = {"python": _host.python_version(), "torch": torch.__version__}
    for dist in ("diffusers", "transformers", "safetensors", "fluxlab"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["fluxlab"] is None:
        from .. import __version__

        versions["fluxlab"] = __version__
    return versions


def git_revision() -> dict | None:
    """The fluxlab checkout's commit (and whether it had local changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)} if commit else None


def _jsonable(value):
    """Metadata as JSON (records' ``meta`` may hold anything: unknown objects become their str())."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor that owns its storage (safetensors refuses views sharing memory)."""
    t = t.detach().to("cpu").contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset():
        t = t.clone()
    return t


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _results_json(results):
    if results is None:
        return None
    rows = getattr(results, "rows", results)
    out = []
    for row in rows:
        data = row.as_dict() if hasattr(row, "as_dict") else dataclasses.asdict(row)
        out.append(_jsonable(data))
    return out


def save_records(path, records, results=None, *, extra: dict | None = None) -> Path:
    """Write ``records`` (AttentionRecord list) to the folder ``path``; returns the manifest's path.

    Files are written under temporary names in that folder and moved into place with ``os.replace``, the
    manifest last: a failure leaves the previous save intact (or nothing) and no partial file. ``results``
    (a ComparisonReport or rows) are stored in the manifest as plain data.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tensors, entries, backends = {}, [], []
    for i, record in enumerate(records):
        if not isinstance(record, AttentionRecord):
            raise TypeError(f"records[{i}] is a {type(record).__name__}, not an AttentionRecord")
        entry = {f.name: _jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)
                 if f.name not in _TENSOR_FIELDS}
        entry["tensors"] = {}
        for name in _TENSOR_FIELDS:
            tensor = getattr(record, name)
            if tensor is not None:
                key = f"{i}.{name}"
                tensors[key] = _owned(tensor)
                entry["tensors"][name] = {"key": key, "dtype": str(tensor.dtype).replace("torch.", ""),
                                          "shape": list(tensor.shape)}
        entries.append(entry)
        if record.backend and record.backend not in backends:
            backends.append(record.backend)
    machine = current_platform()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": _jsonable(machine.as_dict()), "platform_description": machine.describe(),
        "versions": _versions(), "git": git_revision(), "backends": backends,
        "tensor_file": None, "tensor_sha256": None, "records": entries,
        "results": _results_json(results), "extra": _jsonable(extra or {}),
    }
    # Commit protocol: the tensor file gets a name derived from its hash (a new file, never overwriting the one
    # the current manifest names), then the manifest is replaced in one os.replace, then old tensor files go.
    # A failure at any point leaves the previous manifest naming its own, complete tensor file.
    temporary, created_tensor = [], None
    try:
        tensor_tmp = _temp_name(folder, TENSOR_PREFIX)
        temporary.append(tensor_tmp)
        save_file(tensors, str(tensor_tmp), metadata={"format": FORMAT})
        digest = _sha256(tensor_tmp)
        tensor_path = folder / f"{TENSOR_PREFIX}-{digest[:16]}.safetensors"
        if not tensor_path.exists():
            created_tensor = tensor_path
        os.replace(tensor_tmp, tensor_path)
        temporary.remove(tensor_tmp)
        manifest["tensor_file"], manifest["tensor_sha256"] = tensor_path.name, digest
        manifest_tmp = _temp_name(folder, MANIFEST_FILE)
        temporary.append(manifest_tmp)
        with open(manifest_tmp, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(manifest_tmp, folder / MANIFEST_FILE)
        temporary.remove(manifest_tmp)
    except BaseException:
        for leftover in [*temporary, created_tensor]:
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    for old in folder.glob(f"{TENSOR_PREFIX}-*.safetensors"):
        if old != tensor_path:
            old.unlink(missing_ok=True)
    return folder / MANIFEST_FILE


def _temp_name(folder: Path, final: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{final}.", suffix=".tmp", dir=folder)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes 0600; the final files get ordinary permissions
    return Path(name)


def read_manifest(path) -> dict:
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE if folder.is_dir() else folder
    try:
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: no record manifest here; save_records writes a folder with "
                                f"{MANIFEST_FILE} and a .safetensors file") from None
    except json.JSONDecodeError as exc:
        raise RecordIntegrityError(f"{manifest_path} is not valid JSON ({exc}); the file is damaged") from None
    if manifest.get("format") != FORMAT:
        raise RecordIntegrityError(f"{manifest_path} is not a fluxlab record manifest (format "
                                   f"{manifest.get('format')!r}, expected {FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise RecordIntegrityError(f"{manifest_path} has format version {manifest['format_version']}; this fluxlab "
                                   f"reads up to {FORMAT_VERSION}: upgrade fluxlab")
    return manifest


def recorded_on(manifest: dict) -> str | None:
    """A short name for the machine a record was made on: its device name (e.g. "NVIDIA H100 80GB HBM3")."""
    platform = manifest.get("platform") or {}
    return platform.get("device_name") or manifest.get("platform_description")


def load_records(path) -> tuple[list[AttentionRecord], dict]:
    """Read a folder written by ``save_records``: (records, manifest). The tensor file's SHA-256 is checked
    against the manifest first; a mismatch raises RecordIntegrityError naming the file and both hashes."""
    from safetensors.torch import load_file

    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    manifest = read_manifest(folder)
    name = str(manifest.get("tensor_file") or "")
    if not name or Path(name).name != name:
        raise RecordIntegrityError(f"{folder / MANIFEST_FILE} names the tensor file {name!r}; expected a file name "
                                   "inside the record folder")
    tensor_path = folder / name
    if not tensor_path.is_file():
        raise FileNotFoundError(f"{tensor_path}: the tensor file named in {folder / MANIFEST_FILE} is missing")
    actual = _sha256(tensor_path)
    if actual != manifest["tensor_sha256"]:
        raise RecordIntegrityError(
            f"{tensor_path} was changed after it was written: its SHA-256 is {actual}, but "
            f"{folder / MANIFEST_FILE} records {manifest['tensor_sha256']}. Refusing to load it; re-copy the "
            "folder from where it was saved.")
    tensors = load_file(str(tensor_path))
    records = []
    for entry in manifest["records"]:
        fields = {name: tensors[info["key"]] for name, info in entry["tensors"].items()}
        meta = dict(entry.get("meta") or {})
        records.append(AttentionRecord(
            **fields, scale=float(entry["scale"]), causal=bool(entry.get("causal", False)),
            layer=entry.get("layer", ""), step=entry.get("step"), branch=entry.get("branch"),
            backend=entry.get("backend"), text_tokens=entry.get("text_tokens"), meta=meta))
    return records, manifest
