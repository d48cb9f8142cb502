"""The defaults every entry point shares (API, command line, widgets): the model and a prompt it draws.

The embedded model is trained on fluxlab.models.shapes_data's scenes: one or two coloured shapes at named places of
a 3x3 grid on a background ("a red circle at the top left on a blue background"); a prompt outside that vocabulary
gives a picture, not an answer. Imports nothing (``fluxlab --help`` reads these).
"""

DEFAULT_MODEL = "embedded"
DEFAULT_PROMPT = "a red circle at the top left and a yellow square at the bottom right on a blue background"
