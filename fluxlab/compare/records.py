"""A records folder: AttentionRecords on disk as ``manifest.json`` (machine, versions, git, SHA-256, one entry per
record) and the one ``attention-<16 hex>.safetensors`` it names; never pickled. Saves are atomic and locked; loads
verify the hash, refuse links and malformed manifests, and validate each record as a live call would."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path

import torch

from ..errors import (InvalidInputError, RecordIntegrityError, RecordsFolderError,  # noqa: F401 (importable here)
                      RecordsNotFoundError)
from ..platform import current_platform
from ..record import AttentionRecord
from ..util import atomic_path, atomic_write, git_revision, jsonable, torch_dtype_name, utc_now, versions

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "RecordIntegrityError", "RecordsFolderError",
           "RecordsNotFoundError", "git_revision", "load_records", "read_manifest", "recorded_on", "save_records"]

FORMAT = "fluxlab-attention-records"
FORMAT_VERSION = 1
TENSOR_PREFIX = "attention"
MANIFEST_FILE = "manifest.json"
# fluxlab's own tensor files: this pattern AND named by the folder's manifest. Only such a file is ever replaced
# or deleted; anything else in the folder (a user's attention-mine.safetensors, notes) is left alone.
TENSOR_FILE = re.compile(rf"{TENSOR_PREFIX}-[0-9a-f]{{16}}\.safetensors")
_TENSOR_FIELDS = ("q", "k", "v", "out", "lse")
_REQUIRED_TENSORS = ("q", "k", "v")


# Metadata as JSON (records' ``meta`` may hold anything): non-finite floats kept as text.
_jsonable = functools.partial(jsonable, non_finite_as_text=True)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor that owns its storage (safetensors refuses views sharing memory)."""
    t = t.detach().to("cpu").contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset():
        t = t.clone()
    return t


@contextlib.contextmanager
def _locked(folder: Path, *, exclusive: bool):
    """An advisory lock on the folder itself (flock on its descriptor: no lock file is left behind). Saves take it
    exclusively, loads shared, so a load never sees a save's half-finished state and two saves never interleave.
    Where fcntl does not exist (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_regular(path: Path, what: str) -> int:
    """A read-only descriptor of ``path``, refusing symbolic links and anything that is not a plain file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise RecordIntegrityError(f"{path}: the {what} is missing; the records folder is incomplete (re-copy it "
                                   "from where it was saved)") from None
    except OSError as exc:
        if path.is_symlink():
            raise RecordIntegrityError(f"{path} is a symbolic link; fluxlab does not follow links in a records "
                                       f"folder (the {what} must be the file itself: copy it there)") from None
        raise RecordIntegrityError(f"{path}: cannot open the {what} ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RecordIntegrityError(f"{path}: the {what} is not a regular file")
    return fd


# -- save ----------------------------------------------------------------------------------------------------------


def _results_json(results):
    if results is None:
        return None
    return [_jsonable(row.as_dict() if hasattr(row, "as_dict") else dataclasses.asdict(row))
            for row in getattr(results, "rows", results)]


def _entries(records) -> tuple[dict, list, list]:
    tensors, entries, backends, storages = {}, [], [], set()
    for i, record in enumerate(records):
        if not isinstance(record, AttentionRecord):
            raise TypeError(f"records[{i}] is a {type(record).__name__}, not an AttentionRecord")
        try:
            record.validate()
        except InvalidInputError as exc:
            raise InvalidInputError(f"records[{i}] ({record.name}) is not a valid attention call, so it is not "
                                    f"saved: {exc}") from None
        entry = {f.name: _jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)
                 if f.name not in _TENSOR_FIELDS}
        entry["tensors"] = {}
        for name in _TENSOR_FIELDS:
            tensor = getattr(record, name)
            if tensor is not None:
                key = f"{i}.{name}"
                owned = _owned(tensor)
                if owned.untyped_storage().data_ptr() in storages:  # the same tensor in two records (or fields)
                    owned = owned.clone()
                storages.add(owned.untyped_storage().data_ptr())
                tensors[key] = owned
                entry["tensors"][name] = {"key": key, "dtype": torch_dtype_name(tensor.dtype),
                                          "shape": list(tensor.shape)}
        entries.append(entry)
        if record.backend and record.backend not in backends:
            backends.append(record.backend)
    return tensors, entries, backends


def _current_tensor_file(folder: Path) -> str | None:
    """The tensor file the folder's present manifest names (fluxlab's to replace), None for a fresh folder.
    A manifest.json that is not a fluxlab records manifest belongs to someone else: refuse to overwrite it."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists() and not manifest_path.is_symlink():
        return None
    try:
        manifest = read_manifest(manifest_path)
    except RecordIntegrityError as exc:
        raise RecordsFolderError(
            f"{folder} already holds a {MANIFEST_FILE} that is not a valid fluxlab records manifest ({exc}). "
            "save_records replaces only its own files: save into a new folder, or remove that file first.") from None
    name = manifest["tensor_file"]
    return name if TENSOR_FILE.fullmatch(name) else None


def save_records(path, records, results=None, *, extra: dict | None = None) -> Path:
    """Write ``records`` (a list of AttentionRecord) into the records folder ``path``; returns the manifest path.

    The tensors go to a new ``attention-<16 hex>.safetensors`` file, then ``manifest.json`` is replaced in one
    rename, then the tensor file the previous manifest named is deleted: a failure at any point leaves the
    previous save intact (or nothing), never a partial file. Other files in the folder are never touched, and a
    ``manifest.json`` that fluxlab did not write is refused. Two processes saving into one folder take turns
    (a lock on the folder): the last save wins, complete. Files get the umask's mode (0644 under 022).
    ``results`` (a ComparisonReport or rows) are stored in the manifest as plain data.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise RecordsFolderError(f"{folder} is a file; save_records writes a folder (manifest.json + a "
                                 ".safetensors file): pass a folder path")
    tensors, entries, backends = _entries(records)
    machine = current_platform()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created_utc": utc_now(),
        "platform": _jsonable(machine.as_dict()), "platform_description": machine.describe(),
        "versions": versions(), "git": git_revision(), "backends": backends,
        "tensor_file": None, "tensor_sha256": None, "records": entries,
        "results": _results_json(results), "extra": _jsonable(extra or {}),
    }
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    new_tensor_file = None
    try:
        with _locked(folder, exclusive=True):
            previous = _current_tensor_file(folder)
            name = f"{TENSOR_PREFIX}-{secrets.token_hex(8)}.safetensors"
            while (folder / name).exists() or (folder / name).is_symlink():
                name = f"{TENSOR_PREFIX}-{secrets.token_hex(8)}.safetensors"
            with atomic_path(folder / name) as temporary:
                save_file(tensors, str(temporary), metadata={"format": FORMAT})
                with open(temporary, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            new_tensor_file = folder / name
            manifest["tensor_file"], manifest["tensor_sha256"] = name, digest
            atomic_write(folder / MANIFEST_FILE, json.dumps(manifest, indent=1, allow_nan=False))
            new_tensor_file = None  # the manifest names it now: it is the save
            if previous and previous != name:
                (folder / previous).unlink(missing_ok=True)
    except BaseException:
        if new_tensor_file is not None:
            new_tensor_file.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return folder / MANIFEST_FILE


# -- load ----------------------------------------------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONE = type(None)
# Manifest fields load_records and replay read: (types allowed, required). bool is checked apart (it is an int).
_TOP_FIELDS = {
    "format_version": ((int,), True), "tensor_file": ((str,), True), "tensor_sha256": ((str,), True),
    "records": ((list,), True), "platform": ((dict, _NONE), False), "platform_description": ((str, _NONE), False),
}
_ENTRY_FIELDS = {
    "tensors": ((dict,), True), "scale": ((int, float), True), "causal": ((bool,), False),
    "layer": ((str,), False), "step": ((int, _NONE), False), "branch": ((str, _NONE), False),
    "backend": ((str, _NONE), False), "text_tokens": ((int, _NONE), False), "meta": ((dict,), False),
}
_TENSOR_INFO_FIELDS = {"key": ((str,), True), "dtype": ((str,), True), "shape": ((list,), True)}


def _check_fields(where: str, data, fields: dict, manifest_path: Path) -> None:
    if not isinstance(data, dict):
        raise RecordIntegrityError(f"{manifest_path}: {where or 'the manifest'} must be a JSON object, got "
                                   f"{type(data).__name__}")
    for name, (types, required) in fields.items():
        field = f"{where}.{name}" if where else name
        if name not in data:
            if required:
                raise RecordIntegrityError(f"{manifest_path}: field {field!r} is missing; the manifest is damaged "
                                           "or was not written by save_records")
            continue
        value = data[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            expected = " or ".join("null" if t is _NONE else t.__name__ for t in types)
            raise RecordIntegrityError(f"{manifest_path}: field {field!r} must be {expected}, got "
                                       f"{type(value).__name__} {value!r:.80}")


def _validate_manifest(manifest, manifest_path: Path) -> dict:
    _check_fields("", manifest, {"format": ((str, _NONE), False)}, manifest_path)
    if manifest.get("format") != FORMAT:
        raise RecordIntegrityError(f"{manifest_path} is not a fluxlab records manifest (format "
                                   f"{manifest.get('format')!r}, expected {FORMAT!r})")
    _check_fields("", manifest, _TOP_FIELDS, manifest_path)
    if manifest["format_version"] > FORMAT_VERSION:
        raise RecordIntegrityError(f"{manifest_path} has format version {manifest['format_version']}; this fluxlab "
                                   f"reads up to {FORMAT_VERSION}: upgrade fluxlab")
    name = manifest["tensor_file"]
    if not name or Path(name).name != name or name in (".", ".."):
        raise RecordIntegrityError(f"{manifest_path} names the tensor file {name!r}; expected a file name inside the "
                                   "record folder")
    if not _HEX64.fullmatch(manifest["tensor_sha256"]):
        raise RecordIntegrityError(f"{manifest_path}: field 'tensor_sha256' must be 64 hex digits, got "
                                   f"{manifest['tensor_sha256']!r:.80}")
    for i, entry in enumerate(manifest["records"]):
        _check_fields(f"records[{i}]", entry, _ENTRY_FIELDS, manifest_path)
        for tensor_name, info in entry["tensors"].items():
            field = f"records[{i}].tensors.{tensor_name}"
            if tensor_name not in _TENSOR_FIELDS:
                raise RecordIntegrityError(f"{manifest_path}: field {field!r} is not a record tensor (expected "
                                           f"{', '.join(_TENSOR_FIELDS)})")
            _check_fields(field, info, _TENSOR_INFO_FIELDS, manifest_path)
            if not isinstance(getattr(torch, info["dtype"], None), torch.dtype):
                raise RecordIntegrityError(f"{manifest_path}: field '{field}.dtype' is {info['dtype']!r}, not a "
                                           "torch dtype name")
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in info["shape"]):
                raise RecordIntegrityError(f"{manifest_path}: field '{field}.shape' must be a list of sizes >= 0, "
                                           f"got {info['shape']!r:.80}")
        for tensor_name in _REQUIRED_TENSORS:
            if tensor_name not in entry["tensors"]:
                raise RecordIntegrityError(f"{manifest_path}: field 'records[{i}].tensors.{tensor_name}' is "
                                           "missing; every record holds q, k and v")
    return manifest


def _manifest_path(path) -> Path:
    """The manifest of the records folder ``path`` (or ``path`` itself when it names a manifest.json). Never a
    parent folder's: a typo in the path is an error, not a quiet load of whatever sits one level up."""
    given = Path(path)
    if given.is_dir():
        candidate = given / MANIFEST_FILE
        if candidate.exists() or candidate.is_symlink():
            return candidate
        raise RecordsNotFoundError(f"{given} holds no {MANIFEST_FILE}, so it is not a records folder; pass the "
                                   "folder that save_records (or `fluxlab compare --save-captures`) wrote")
    if given.name == MANIFEST_FILE and (given.exists() or given.is_symlink()):
        return given
    if given.exists():
        raise RecordsNotFoundError(f"{given} is a file, not a records folder; pass the folder that holds "
                                   f"{MANIFEST_FILE}")
    hint = ""
    if (given.parent / MANIFEST_FILE).exists():
        hint = f" ({given.parent} is a records folder: did you mean it?)"
    raise RecordsNotFoundError(f"{given}: no such records folder{hint}")


def read_manifest(path) -> dict:
    """The validated manifest of the records folder ``path`` (or of the manifest.json file ``path``)."""
    manifest_path = _manifest_path(path)
    fd = _open_regular(manifest_path, "manifest")
    try:
        with os.fdopen(fd, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        raise RecordIntegrityError(f"{manifest_path}: cannot read the manifest ({exc})") from None
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordIntegrityError(f"{manifest_path} is not valid JSON ({exc}); the file is damaged") from None
    return _validate_manifest(manifest, manifest_path)


def recorded_on(manifest: dict) -> str | None:
    """A short name for the machine a record was made on: its device name (e.g. "NVIDIA H100 80GB HBM3")."""
    platform = manifest.get("platform") or {}
    return platform.get("device_name") or manifest.get("platform_description")


def _load_tensors(tensor_path: Path, expected_sha256: str, manifest_path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with os.fdopen(_open_regular(tensor_path, "tensor file"), "rb") as fh:
        before = os.fstat(fh.fileno())
        actual = hashlib.file_digest(fh, "sha256").hexdigest()
    if actual != expected_sha256:
        raise RecordIntegrityError(
            f"{tensor_path} was changed after it was written: its SHA-256 is {actual}, but {manifest_path} "
            f"records {expected_sha256}. Refusing to load it; re-copy the folder from where it was saved.")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise RecordIntegrityError(f"{tensor_path}: not a readable safetensors file ({exc})") from None
    after = os.stat(tensor_path, follow_symlinks=False)
    if (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != (
            after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns):
        raise RecordIntegrityError(f"{tensor_path} was replaced while it was being loaded; load again")
    return tensors


def _record_from(entry: dict, i: int, tensors: dict, manifest_path: Path) -> AttentionRecord:
    fields = {}
    for name, info in entry["tensors"].items():
        field = f"records[{i}].tensors.{name}"
        if info["key"] not in tensors:
            raise RecordIntegrityError(f"{manifest_path}: field '{field}.key' names {info['key']!r}, which the "
                                       "tensor file does not hold")
        tensor = tensors[info["key"]]
        if torch_dtype_name(tensor.dtype) != info["dtype"] or list(tensor.shape) != info["shape"]:
            raise RecordIntegrityError(
                f"{manifest_path}: field {field!r} says {info['dtype']} {info['shape']}, but the tensor file holds "
                f"{torch_dtype_name(tensor.dtype)} {list(tensor.shape)}")
        fields[name] = tensor
    record = AttentionRecord(
        **fields, scale=entry["scale"], causal=entry.get("causal", False), layer=entry.get("layer", ""),
        step=entry.get("step"), branch=entry.get("branch"), backend=entry.get("backend"),
        text_tokens=entry.get("text_tokens"), meta=dict(entry.get("meta") or {}))
    try:
        record.validate()
    except InvalidInputError as exc:
        raise RecordIntegrityError(f"{manifest_path}: records[{i}] ({record.name}) is not a valid attention call: "
                                   f"{exc}") from None
    return record


def load_records(path) -> tuple[list[AttentionRecord], dict]:
    """Read the records folder ``path`` written by ``save_records``: (records, manifest).

    Refused with RecordsNotFoundError: a path that holds no manifest.json (never a parent folder's). Refused with
    RecordIntegrityError naming the file or field: a tensor file whose SHA-256 differs from the manifest's, a
    symbolic link, a malformed manifest, and a record that ``fluxlab.attention`` would refuse (scale <= 0 or not
    finite, mismatched shapes).
    """
    manifest_path = _manifest_path(path)
    folder = manifest_path.parent
    with _locked(folder, exclusive=False):
        manifest = read_manifest(manifest_path)
        tensors = _load_tensors(folder / manifest["tensor_file"], manifest["tensor_sha256"], manifest_path)
    records = [_record_from(entry, i, tensors, manifest_path) for i, entry in enumerate(manifest["records"])]
    return records, manifest
