"""A throw-away Jupyter world for the notebook and browser tests: config, data, runtime, IPython, matplotlib and
XDG folders under one temporary directory, and a ``python3`` kernelspec that runs this interpreter."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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


# What each notebook must show: (kind, text). Kinds: "stream" and "html" search those outputs, "result" the plain
# text of execute results, "png" needs an image, "widget" a widget view, "state" the stored widget state (what the
# widgets displayed after their handlers ran).
EXPECTED = {
    "01_backends_tour.ipynb": [
        ("stream", "platform: "), ("stream", "DEFAULT"), ("stream", "backend "), ("widget", "BackendPicker"),
        ("widget", "BackendToggleDemo"), ("png", ""), ("state", "ran on "), ("state", "attention calls"),
    ],
    "02_attention_equivalence.ipynb": [
        ("html", "verdict"), ("html", "yardstick"), ("result", "'planted_scale_bug': 'fail'"),
        ("result", "'sdpa': 'pass'"), ("html", "recorded:"), ("png", ""), ("widget", "ComparisonPanel"),
        ("state", "PASS"), ("state", "transformer_blocks.0"),
    ],
    "03_flux2_side_by_side.ipynb": [
        ("result", "'reference'"), ("html", "PSNR"), ("widget", "ImageGallery"), ("state", "PSNR"),
        ("state", "image(s) vs reference"), ("html", "emu_aiter:how_v3_bf16_cvt=2"), ("html", "emu_aiter_sage"),
        ("html", "emu_aiter_quant_pad128:format=f4f4"), ("result", "'emu_aiter_quant_pad128:format=i8fp8': '"),
        ("result", "'emu_aiter_quant_pad128:format=mxfp4, emu_aiter at 1 first+last'"),
        ("result", "'final-latent rel-L2'"),
        ("html", "alone vs batch"), ("html", "whole-generation invariance of 1 backend(s)"),
    ],
    "04_decide.ipynb": [
        ("result", "DriftMap(emu_bf16 vs sdpa"), ("result", "Frontier("), ("result", "AutotuneResult("),
        ("result", "never chosen: ["), ("result", "'planted_scale_bug'"), ("png", ""),
        ("stream", "image verdict of the plan: pass"), ("stream", " bands (band "),
        ("widget", "DriftExplorer"), ("state", "nothing is generated until"),
    ],
}


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else value  # a notebook file may store a text as its lines


def outputs(nb, kind):
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if kind == "stream" and out["output_type"] == "stream":
                found.append(_text(out["text"]))
            elif kind == "html" and "text/html" in data:
                found.append(_text(data["text/html"]))
            elif kind == "result" and "text/plain" in data:
                found.append(_text(data["text/plain"]))
            elif kind == "png" and "image/png" in data:
                found.append("png")
            elif kind == "widget" and "application/vnd.jupyter.widget-view+json" in data:
                found.append(_text(data.get("text/plain", "")))
    return found


def missing_outputs(nb, name: str) -> list[str]:
    """What ``EXPECTED[name]`` asks for and the run notebook ``nb`` (run headless, or in JupyterLab and saved from
    the browser) does not show."""
    missing = []
    for kind, text in EXPECTED[name]:
        haystack = widget_state_text(nb) if kind == "state" else "\n".join(outputs(nb, kind))
        if (not haystack) or (text and text not in haystack):
            missing.append(f"{kind} output containing {text!r}" if text else f"a {kind} output")
    return missing


def chromium_path() -> str:
    return os.environ.get("FLUXLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def browser_available() -> bool:
    """Whether tests/test_browser.py can run here: a Chromium and the ``playwright`` package (the test extra)."""
    return Path(chromium_path()).is_file() and importlib.util.find_spec("playwright") is not None
