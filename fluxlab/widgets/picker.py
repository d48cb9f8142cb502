"""``BackendPicker``: one button per registered backend; unavailable ones disabled, their reasons as tooltips."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable

import traitlets

from ._common import MUTED_STYLE, tagged, widgets

def button_label(status) -> str:
    """The backend's name, a star for the default pick, and a suffix for emulated kernels."""
    return (status.name + (" \u2605" if status.default else "")
            + (" (emulated)" if getattr(status, "emulated", False) else ""))  # emulated: float32 numerics of a kernel


def _status_tooltip(status) -> str:
    if not status.available:
        return "unavailable here: " + "; ".join(status.reasons)
    emulated = getattr(status, "emulated", False)
    return (("default pick on this machine. " if status.default else "")
            + (f"emulates {status.emulates} in float32 (not the real kernel). " if emulated else "")
            + status.description
            + (f" (version {status.version})" if status.version else ""))


def _names(value) -> tuple:
    """A picker value (None, a name or names) as a tuple of names."""
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


class BackendPicker(widgets.VBox):
    """Pick one backend (``multiple=False``: ``value`` is a name) or several (a tuple) of ``fluxlab.backends()`` or
    the ``statuses`` given; those that cannot run here are disabled, their reasons as tooltips (docs/notebooks.md).
    ``on_change(fn)`` calls ``fn(value)`` after every change."""

    value = traitlets.Any(allow_none=True)

    def __init__(self, statuses: Iterable | None = None, *, multiple: bool = False, value=None,
                 include: Iterable[str] | None = None, exclude: Iterable[str] = (), description: str = "backend"):
        self.multiple = multiple
        self._include = None if include is None else list(include)
        self._exclude = set(exclude)
        self._given_statuses = None if statuses is None else list(statuses)
        self._callbacks: list[Callable] = []
        self._syncing = False
        self.buttons: dict[str, widgets.ToggleButton] = {}
        self.statuses = {}
        self._label = widgets.HTML(f"<b>{html.escape(description)}</b>",
                                   layout=widgets.Layout(width="auto", margin="0 8px 0 0"))
        self._row = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self._why = widgets.HTML()
        super().__init__([self._row, self._why])
        self.add_class("fluxlab-backend-picker")
        self._build(value)
        self.observe(self._on_value, names="value")

    def _build(self, value=None):
        statuses = self._given_statuses
        if statuses is None:
            from ..doctor import backends

            statuses = backends()
        statuses = [s for s in statuses if s.name not in self._exclude
                    and (self._include is None or s.name in self._include)]
        if self._include is not None:
            statuses.sort(key=lambda s: self._include.index(s.name))
        self.statuses = {s.name: s for s in statuses}
        self.buttons = {}
        for status in statuses:
            button = tagged(widgets.ToggleButton(value=False, description=button_label(status),
                                                 disabled=not status.available, tooltip=_status_tooltip(status),
                                                 layout=widgets.Layout(width="auto", margin="2px")),
                            "fluxlab-backend", f"fluxlab-backend-{status.name}")
            button.observe(self._on_button(status.name), names="value")
            self.buttons[status.name] = button
        self._row.children = [self._label, *self.buttons.values()]
        unavailable = [s for s in statuses if not s.available]
        items = "".join(f"<li><code>{html.escape(s.name)}</code>: {html.escape('; '.join(s.reasons))}</li>"
                        for s in unavailable)
        self._why.value = (f'<details style="font-size:85%;{MUTED_STYLE}"><summary>why {len(unavailable)} '
                           f"backend{'s are' if len(unavailable) > 1 else ' is'} greyed out</summary><ul>{items}</ul>"
                           "</details>") if unavailable else ""
        if value is None:  # the default pick, else the first that runs
            chosen = [s.name for s in statuses if s.default and s.available] or self.available[:1]
            value = tuple(chosen) if self.multiple else (chosen or [None])[0]
        self.value = value
        self._sync_buttons()

    def refresh(self) -> None:
        """Re-read the registry (e.g. after ``fluxlab.register_backend``), keeping the current choice if valid."""
        try:
            self._build(self.value)
        except traitlets.TraitError:  # the chosen backend went away
            self._build(None)

    @property
    def available(self) -> list[str]:
        return [name for name, s in self.statuses.items() if s.available]

    @traitlets.validate("value")
    def _validate_value(self, proposal):
        names = _names(proposal["value"])
        for name in names:
            if name not in self.statuses:
                raise traitlets.TraitError(f"backend {name!r} is not in this picker; choose from "
                                           f"{', '.join(self.statuses)}")
            if not self.statuses[name].available:
                raise traitlets.TraitError(f"backend {name!r} cannot run here: "
                                           f"{'; '.join(self.statuses[name].reasons)}")
        if self.multiple:
            return tuple(name for name in self.statuses if name in names)
        if len(names) > 1:
            raise traitlets.TraitError(f"this picker holds one backend; got {names} (use multiple=True for several)")
        return names[0] if names else None

    def _sync_buttons(self):
        self._syncing = True
        try:
            chosen = _names(self.value)
            for name, button in self.buttons.items():
                button.value = name in chosen
                button.button_style = "info" if name in chosen else ""  # the choice stands out, not the default
        finally:
            self._syncing = False

    def _on_button(self, name):
        def handler(change):
            if self._syncing:
                return
            if self.multiple:
                chosen = set(_names(self.value))
                chosen = chosen | {name} if change["new"] else chosen - {name}
                self.value = tuple(n for n in self.statuses if n in chosen)
            elif change["new"]:
                self.value = name
            else:  # single choice: pressing the pressed button again keeps it pressed
                self._sync_buttons()
        return handler

    def _on_value(self, change):
        self._sync_buttons()
        for callback in list(self._callbacks):
            callback(change["new"])

    def on_change(self, callback: Callable, remove: bool = False) -> None:
        """Call ``callback(value)`` after every change of the choice (``remove=True`` unregisters it)."""
        if remove:
            self._callbacks.remove(callback)
        else:
            self._callbacks.append(callback)

    def click(self, name: str) -> None:
        """What a user's click on ``name``'s button does (disabled buttons ignore clicks, as in the browser)."""
        button = self.buttons[name]
        if not button.disabled:
            button.value = not button.value if self.multiple else True
