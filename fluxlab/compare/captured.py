"""Deprecated: ``compare_captured`` lives in ``fluxlab.compare.attention`` (and is ``fluxlab.compare.compare_captured``);
importing it from here still works for one release, with a ``DeprecationWarning``."""

from .._compat import moved

__getattr__ = moved(__name__, {"compare_captured": "fluxlab.compare.attention:compare_captured"})
