"""The defaults every entry point shares (API, command line, widgets): the embedded model and a prompt in its
vocabulary (one or two coloured shapes at named places of a 3x3 grid on a background; another prompt gives a
picture, not an answer). Imports nothing (``fluxlab --help`` reads these)."""

DEFAULT_MODEL = "embedded"
DEFAULT_PROMPT = "a red circle at the top left and a yellow square at the bottom right on a blue background"
