"""The public surface: about twenty top-level names, each in the README's API table; names that moved keep working
for one release with a DeprecationWarning naming the new place; one errors module whose five kinds are what a user
catches, with the older error names importable where they were."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import warnings

import pytest

import fluxlab
from fluxlab import errors

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _api_table_names() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## API"):readme.index("## What runs where")]
    return {name for row in table.splitlines() if row.startswith("| `")
            for name in re.findall(r"`([A-Za-z_][\w.]*)`", row.split("|")[1])}


def test_top_level_fits_on_one_screen_and_each_name_is_in_the_readme():
    assert 18 <= len(fluxlab.__all__) <= 26
    assert set(fluxlab.__all__) <= _api_table_names()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a public name never warns
        for name in fluxlab.__all__:
            assert getattr(fluxlab, name) is not None


def test_names_written_in_issues_stay_top_level():
    for name in ("attention", "backends", "register_backend", "load_flux2", "compare_attention", "plan", "Plan",
                 "generate", "compare_images", "frontier", "autotune", "use_backend", "clear_caches", "capture",
                 "attach", "detach", "set_schedule", "locate_drift", "current_platform", "Backend"):
        assert name in fluxlab.__all__, name


@pytest.mark.parametrize("old, module, new", [
    ("Platform", "fluxlab.platform", "Platform"), ("BackendChoice", "fluxlab.dispatch", "BackendChoice"),
    ("get_backend", "fluxlab.registry", "get_backend"), ("InvalidInputError", "fluxlab.errors", "InvalidInputError"),
    ("FLUX2_BACKENDS", "fluxlab.models", "FLUX2_BACKENDS"), ("AutotunePlan", "fluxlab.decide", "AutotuneResult"),
])
def test_moved_names_warn_and_give_the_same_object(old, module, new):
    import importlib

    with pytest.warns(DeprecationWarning, match=rf"fluxlab\.{old} is deprecated.*use {re.escape(module)}\.{new}"):
        value = getattr(fluxlab, old)
    assert value is getattr(importlib.import_module(module), new)
    assert old not in fluxlab.__all__


def test_renamed_plans_keep_their_old_names_with_a_warning():
    from fluxlab.decide import AutotuneResult
    from fluxlab.models import offload

    with pytest.warns(DeprecationWarning, match="AutotuneResult"):
        from fluxlab.decide import AutotunePlan
    assert AutotunePlan is AutotuneResult
    with pytest.warns(DeprecationWarning, match="OffloadDecision"):
        assert offload.OffloadPlan is offload.OffloadDecision
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        fluxlab.nothing_here


def test_use_backend_is_a_function_that_sets_and_restores():
    assert not isinstance(fluxlab.use_backend, type)
    before = fluxlab.dispatch.selected_backend()
    with fluxlab.use_backend("reference") as setting:
        assert str(fluxlab.dispatch.selected_backend()) == "reference" and "reference" in repr(setting)
    assert fluxlab.dispatch.selected_backend() == before


def test_five_kinds_to_catch():
    kinds = (errors.InvalidInputError, errors.BackendUnavailableError, errors.BackendOutputError,
             errors.InvalidFileError, errors.UsageError)
    assert all(issubclass(kind, errors.FluxlabError) for kind in kinds)
    for cls in (errors.UnknownBackendError, errors.BackendRegistrationError, errors.MemoryBudgetError,
                errors.ParallelRefusedError):
        assert issubclass(cls, errors.InvalidInputError)
    for cls in (errors.BackendNotAllowedError, errors.NoBackendError, errors.NoDeviceError):
        assert issubclass(cls, errors.BackendUnavailableError)
    assert issubclass(errors.FileMissingError, (errors.InvalidFileError, FileNotFoundError))
    # The builtin bases the older classes had, so an `except ValueError / KeyError / OSError` still catches them.
    assert issubclass(errors.UnknownBackendError, KeyError) and issubclass(errors.InvalidFileError, OSError)
    assert issubclass(errors.BackendRegistrationError, TypeError) and issubclass(errors.MemoryBudgetError, MemoryError)
    assert str(errors.UnknownBackendError("no backend 'x'")) == "no backend 'x'"  # not KeyError's repr


def test_documented_module_paths_that_moved_still_import_with_a_warning():
    # Pages of the previous release told users to read these from their old modules.
    from fluxlab import registry
    from fluxlab.compare.attention import compare_captured

    with pytest.warns(DeprecationWarning, match="fluxlab.priority.PRIORITY is deprecated.*fluxlab.registry.PRIORITY"):
        from fluxlab.priority import PRIORITY
    with pytest.warns(DeprecationWarning, match="use fluxlab.compare.attention.compare_captured"):
        from fluxlab.compare.captured import compare_captured as old
    assert PRIORITY is registry.PRIORITY and old is compare_captured
    with pytest.raises(ImportError):
        from fluxlab.priority import no_such_name  # noqa: F401


def test_older_error_names_import_from_where_they_were():
    from fluxlab.command import NoDeviceError, UsageError
    from fluxlab.compare.records import RecordIntegrityError, RecordsNotFoundError
    from fluxlab.decide import DecideInputError, InvalidPlanError, PlanMismatchError, PlanNotFoundError
    with pytest.warns(DeprecationWarning, match="fluxlab.models.errors.AttachError is deprecated"):
        from fluxlab.models.errors import AttachError, GenerationInterrupted, InvalidSizeError, ModelSourceError
    from fluxlab.models.offload import MemoryBudgetError, OffloadError
    from fluxlab.models.progress import GenerationCancelled
    from fluxlab.parallel import ParallelRefusedError

    assert (UsageError, NoDeviceError) == (errors.UsageError, errors.NoDeviceError)
    assert RecordIntegrityError is PlanMismatchError is InvalidPlanError is errors.InvalidFileError
    assert RecordsNotFoundError is PlanNotFoundError is ModelSourceError is errors.FileMissingError
    assert DecideInputError is InvalidSizeError is OffloadError is errors.InvalidInputError
    assert AttachError is errors.UsageError and MemoryBudgetError is errors.MemoryBudgetError
    assert GenerationCancelled is errors.GenerationCancelled and ParallelRefusedError is errors.ParallelRefusedError
    assert issubclass(GenerationInterrupted, KeyboardInterrupt)


def test_every_exception_class_lives_in_errors_py():
    """No module but errors.py defines an exception or warning class (a new one goes there, under one of the five)."""
    pattern = re.compile(r"^class \w+\([^)]*(Error|Exception|Warning|Interrupt|Cancelled)\b", re.M)
    defining = [str(p.relative_to(ROOT)) for p in (ROOT / "fluxlab").rglob("*.py")
                if p.name != "errors.py" and pattern.search(p.read_text())]
    assert defining == []


def test_old_names_do_not_slow_import():
    code = "import sys, fluxlab; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
