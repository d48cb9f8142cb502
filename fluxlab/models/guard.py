"""An attached pipeline's call, guarded: one generation at a time, and a size the model cannot make is refused
(diffusers would silently shrink it) before anything runs. Put on at ``attach``, taken off at ``detach``."""

from __future__ import annotations

import inspect
import threading

from .errors import InvalidSizeError, PipelineBusyError

_GUARDED: dict[type, type] = {}  # a pipeline class -> its guarded subclass (same name)
_LOCK_ATTRIBUTE = "_fluxlab_generation_lock"


def _guarded_class(cls: type) -> type:
    if getattr(cls, "_fluxlab_unguarded", None) is not None:
        return cls
    if cls not in _GUARDED:
        signature = inspect.signature(cls.__call__)

        def __call__(self, *args, **kwargs):
            lock = self.__dict__.get(_LOCK_ATTRIBUTE)
            if lock is None or not lock.acquire(blocking=False):
                raise PipelineBusyError(
                    "this pipeline is already generating (in another thread, or a callback called it again): a "
                    "pipeline serves one generation at a time (its scheduler and fluxlab's step tracking belong to "
                    "that generation). Wait for it, or load a second pipeline for the other thread")
            try:
                _check_size(self, signature.bind_partial(self, *args, **kwargs).arguments)
                return cls.__call__(self, *args, **kwargs)
            finally:
                lock.release()

        __call__.__doc__ = cls.__call__.__doc__
        _GUARDED[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                    "__qualname__": cls.__qualname__, "_fluxlab_unguarded": cls})
    return _GUARDED[cls]


def _check_size(pipe, arguments: dict) -> None:
    from .limits import required_multiple, side_problem

    for side in ("height", "width"):
        value = arguments.get(side)
        if value is not None:
            problem = side_problem(value, side, required_multiple(pipe), force=True)
            if problem:
                raise InvalidSizeError(problem)


def guard(pipe) -> None:
    """From now on ``pipe(...)`` refuses a second concurrent call and a size not a multiple of the model's."""
    pipe.__dict__[_LOCK_ATTRIBUTE] = threading.Lock()
    pipe.__class__ = _guarded_class(type(pipe))


def unguard(pipe) -> None:
    original = getattr(type(pipe), "_fluxlab_unguarded", None)
    if original is not None:
        pipe.__class__ = original
    pipe.__dict__.pop(_LOCK_ATTRIBUTE, None)
