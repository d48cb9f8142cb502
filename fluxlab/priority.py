"""Deprecated: the priority lists live in ``fluxlab.registry``; importing them from here still works for one release,
with a ``DeprecationWarning``."""

from ._compat import moved

__getattr__ = moved(__name__, {name: f"fluxlab.registry:{name}"
                               for name in ("PRIORITY", "GROUPS", "priority_for", "group_members")})
