"""A throw-away Jupyter world for the notebook and browser tests: config, data, runtime, IPython, matplotlib and
XDG folders under one temporary directory, and a ``python3`` kernelspec that runs this interpreter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))

# Kernels run the tiny model on 2 shared cores: one thread each. Measured here under load from parallel jobs: a
# 4-step 64x64 generation took 0.6 s with 1 thread and 3-15 s with 2 (OpenMP threads spinning against each other).
KERNEL_THREADS = "1"


def isolated_env(base: Path) -> dict[str, str]:
    """Environment variables that keep Jupyter, IPython, matplotlib and Chromium out of the user's folders."""
    folders = {
        "JUPYTER_CONFIG_DIR": base / "jupyter-config",
        "JUPYTER_DATA_DIR": base / "jupyter-data",
        "JUPYTER_RUNTIME_DIR": base / "jupyter-runtime",
        "IPYTHONDIR": base / "ipython",
        "MPLCONFIGDIR": base / "matplotlib",
        "XDG_CONFIG_HOME": base / "xdg-config",
        "XDG_CACHE_HOME": base / "xdg-cache",
        "XDG_DATA_HOME": base / "xdg-data",
        "XDG_RUNTIME_DIR": base / "xdg-runtime",
        "HOME": base / "home",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    (base / "xdg-runtime").chmod(0o700)
    env = {key: str(value) for key, value in folders.items()}
    # The checkout's fluxlab, whatever else is installed; nothing from the network.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", KERNEL_THREADS)
    env["HF_HUB_OFFLINE"] = "1"
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    write_kernelspec(folders["JUPYTER_DATA_DIR"])
    return env


def write_kernelspec(data_dir: Path) -> Path:
    """``python3`` -> this interpreter (the venv that runs the tests), found before any other python3 kernel."""
    spec_dir = data_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return spec_dir


def widget_state_text(nb) -> str:
    """Every string value in the widget state a run stored in the notebook (labels, HTML, descriptions)."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    texts = []
    for model in state.values():
        for value in model.get("state", {}).values():
            if isinstance(value, str):
                texts.append(value)
    return "\n".join(texts)
