"""Notebook widgets (ipywidgets 8 + matplotlib): backend picker, live backend toggle, comparison panel, gallery,
drift-map explorer. Every handler shows what goes wrong in the widget: nothing here raises into the kernel."""

from .comparison import ComparisonPanel
from .drift_explorer import DriftExplorer
from .gallery import ImageGallery
from .picker import BackendPicker
from .settings import NotebookSettings, settings_for
from .toggle import BackendToggleDemo, generate_image, model_backends, model_statuses

__all__ = ["BackendPicker", "BackendToggleDemo", "ComparisonPanel", "DriftExplorer", "ImageGallery", "NotebookSettings",
           "generate_image", "model_backends", "model_statuses", "settings_for"]
