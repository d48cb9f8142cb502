"""One way to put STAND-IN libraries (tests/standins*, see tests/standins/README.md) on the path for a test, and to
forget them after it: every module the stand-in folders could have imported leaves ``sys.modules`` (a stand-in left
behind would make a later test's platform pick a kernel that is not installed), and ``sys.path`` is restored (the
stand-ins put their own folder on it to import ``_attention``)."""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import sys

import fluxlab

HERE = pathlib.Path(__file__).parent
FOLDERS = tuple(sorted(p.name for p in HERE.glob("standins*") if p.is_dir()))


def _top_level_names(folder: pathlib.Path) -> set[str]:
    return {p.stem if p.suffix == ".py" else p.name for p in folder.iterdir()
            if (p.suffix == ".py") or (p / "__init__.py").exists()}


# Every importable top-level name in every stand-in folder (aiter, flash_attn, _attention, sageattention...).
ROOTS = frozenset().union(*(_top_level_names(HERE / folder) for folder in FOLDERS))


def stand_in_modules() -> list[str]:
    return [name for name in sys.modules if name.split(".")[0] in ROOTS]


def forget() -> None:
    """Drop every module a stand-in folder could have imported, and the dispatcher's view of what is installed."""
    for name in stand_in_modules():
        sys.modules.pop(name)
    importlib.invalidate_caches()
    fluxlab.clear_caches()


@contextlib.contextmanager
def standins_on_path(*folders: str | pathlib.Path):
    """``with standins_on_path("standins_old_sage"): ...`` (default: tests/standins). Modules of those names imported
    before are set aside and come back after; ``sys.path`` is restored as it was."""
    paths = [str(HERE / folder) for folder in (folders or ("standins",))]
    saved_path = sys.path[:]
    saved_modules = {name: sys.modules[name] for name in stand_in_modules()}
    forget()
    sys.path[:0] = paths
    importlib.invalidate_caches()
    try:
        yield
    finally:
        forget()
        sys.path[:] = saved_path
        sys.modules.update(saved_modules)
        importlib.invalidate_caches()
        fluxlab.clear_caches()
