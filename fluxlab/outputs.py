"""Output folders of the CLI verbs: a file or someone else's folder is refused, fluxlab's own files from an
earlier run are replaced, and a run that fails or writes nothing leaves no empty folder behind."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputFolderError

# Lists the files a run wrote, so the next run into the same folder knows which ones are fluxlab's to replace.
RUN_FILE = ".fluxlab-run.json"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _outside_reason(root: Path, name) -> str | None:
    """Why the run file's entry ``name`` is not a file fluxlab may remove from the run folder ``root`` (resolved),
    or None. Only a relative path whose resolved location, links included, stays inside the folder qualifies."""
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        return "not a file name"
    relative = Path(name)
    if relative.is_absolute() or relative.drive or name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in relative.parts or ".." in name.replace("\\", "/").split("/"):
        return "a path through '..'"
    path = root / relative
    try:
        if not path.parent.resolve().is_relative_to(root):
            return "inside a link that leads out of the folder"
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            return "a link that points out of the folder"
        if path.is_dir() and not path.is_symlink():
            return "a folder, not a file"
    except (OSError, RuntimeError):  # a link loop, an unreadable parent
        return "a path that cannot be resolved"
    return None


def _own_files(folder: Path) -> set[str]:
    """The files an earlier run listed in ``.fluxlab-run.json``: fluxlab's to replace. An entry that could reach
    anything outside the folder (absolute, ``..``, a link out) refuses the whole list: nothing is deleted then."""
    run_file = folder / RUN_FILE
    if run_file.is_symlink():
        raise OutputFolderError(
            f"--out {folder}: its {RUN_FILE} is a link ({os.readlink(run_file)}), not a run file fluxlab wrote; "
            f"fluxlab deletes nothing on its word. Remove {run_file} or choose another folder")
    try:
        listed = json.loads(run_file.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not isinstance(listed, list):
        return set()
    root = folder.resolve()
    refused = [(name, why) for name in listed if (why := _outside_reason(root, name))]
    if refused:
        shown = "; ".join(f"{name!r} ({why})" for name, why in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise OutputFolderError(
            f"--out {folder}: its {RUN_FILE} lists files outside the folder: {shown}{more}. fluxlab removes only "
            f"the files it wrote inside its run folder, so it deletes nothing and stops here. Remove {run_file} "
            "if this folder came from someone else, or choose another folder")
    return set(listed)


def _links_out(folder: Path) -> list[str]:
    """Links in ``folder`` that resolve outside it: writing a file of that name would write outside the run."""
    root = folder.resolve()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink() and not _inside(p, root))


def _inside(link: Path, root: Path) -> bool:
    try:
        return link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def check_output_folder(out, *, overwrite: bool = False) -> Path:
    """Refuse ``out`` before any work if it cannot take this run's files; nothing is created or deleted here."""
    out = Path(out).expanduser()
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"is inside {parent}, which is a file"
            raise OutputFolderError(f"--out {out} {where}; pass a folder (it is created if missing)")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputFolderError(f"--out {out}: cannot write in {parent} (permission denied); pass a folder "
                                        "you can write to")
            break
    own = _own_files(out) if out.is_dir() else set()  # a run file naming anything outside is refused here
    if out.is_dir() and overwrite and (links := _links_out(out)):
        raise OutputFolderError(
            f"--out {out} holds links that lead out of the folder ({', '.join(links[:5])}); writing a file of that "
            "name would write outside it, so --overwrite refuses them. Remove the links or choose another folder")
    if out.is_dir() and not overwrite:
        foreign = sorted(_files(out) - own - {RUN_FILE})
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputFolderError(
                f"--out {out} already holds files fluxlab did not write in an earlier run ({shown}); choose "
                "another folder, or pass --overwrite to write into it (files of the same name are replaced)")
    return out


def _remove_empty_folders(folder: Path, keep: set[Path]) -> None:
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if sub not in keep and not any(sub.iterdir()):
            sub.rmdir()


def _remove_previous_run(out: Path) -> None:
    root = out.resolve()
    for name in _own_files(out):  # each checked: resolved inside ``root``, no link out
        path = root / name
        path.unlink(missing_ok=True)
        for parent in path.parents:  # the sub-folders that run made, once empty
            if parent == root or not parent.is_relative_to(root) or parent.is_symlink() or not parent.is_dir() \
                    or any(parent.iterdir()):
                break
            parent.rmdir()
    (out / RUN_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def output_folder(out, *, verb: str, overwrite: bool = False) -> Iterator[Path]:
    """The folder a verb writes into. The previous run's own files (listed in ``.fluxlab-run.json``) are removed
    first; afterwards, even on failure or Ctrl-C, the files this run wrote are listed there. If it wrote none, the
    folders this run created are removed again: no empty folder is left behind."""
    out = check_output_folder(out, overwrite=overwrite)
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)  # outermost new folder
    if created is None:
        _remove_previous_run(out)
    folders_before = {p for p in out.rglob("*") if p.is_dir()} | {out} if created is None else set()
    kept = _files(out) if created is None else set()
    start = time.time()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"--out {out}: cannot create it ({exc.strerror or exc}); pass a folder you can "
                                "write to") from None
    try:
        yield out
    finally:
        written = sorted(name for name in _files(out) - {RUN_FILE}
                         if name not in kept or (out / name).lstat().st_mtime >= start)
        if written:
            (out / RUN_FILE).write_text(json.dumps({"verb": verb, "files": written}, indent=1) + "\n")
        else:
            _remove_empty_folders(out, folders_before)
            for folder in (out, *out.parents) if created is not None else ():
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
                if folder == created:
                    break
