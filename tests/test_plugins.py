"""Third-party backends as plug-ins: a real package, built and pip-installed here, declares entry points in the
group ``fluxlab.backends``; a fresh interpreter discovers them through importlib.metadata (nothing mocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLUXLAB = Path(sys.executable).with_name("fluxlab")  # the installed entry point of this venv

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "fluxlab-tiny-plugin"
version = "0.1"

[project.entry-points."fluxlab.backends"]
one = "tiny_plugin:BACKEND"
pair = "tiny_plugin.pair:BACKENDS"
registers = "tiny_plugin.registers"
broken = "tiny_plugin.broken:BACKEND"
"""

FILES = {
    "tiny_plugin/__init__.py": """
        import fluxlab
        from fluxlab.backends.sdpa import _sdpa

        def kernel(q, k, v, *, scale, causal=False, return_lse=False):
            return _sdpa(q, k, v, scale=scale, causal=causal)

        BACKEND = fluxlab.Backend("tiny_one", kernel, fluxlab.Capabilities(vendors=frozenset({"cpu"})),
                                  "a plug-in's kernel (test)", aliases=("tiny",))
    """,
    "tiny_plugin/pair.py": """
        import fluxlab
        from . import kernel

        BACKENDS = [fluxlab.Backend(name, kernel, fluxlab.Capabilities(vendors=frozenset({"cpu"})), "pair (test)")
                    for name in ("tiny_a", "tiny_b")]
    """,
    "tiny_plugin/registers.py": """
        import fluxlab
        from . import kernel

        fluxlab.register_backend("tiny_registered", kernel, vendors="cpu", description="registered on import")
    """,
    "tiny_plugin/broken.py": """
        raise ImportError("tiny_plugin.broken needs a GPU library that is not installed")
    """,
}

CHECKS = """
import json, torch, fluxlab
from fluxlab import registry
loaded_at_import = registry._plugins["loaded"]
q = torch.randn(1, 16, 2, 32)
out = fluxlab.attention(q, q, q, backend="tiny")
same = torch.equal(out, fluxlab.attention(q, q, q, backend="sdpa"))
plans = {name: fluxlab.plan(q, q, q, backend=name).backend for name in ("tiny_a", "tiny_b", "tiny_registered")}
rows = {s.name: s.plugin for s in fluxlab.backends()}
from fluxlab.widgets import BackendPicker
picker = sorted(BackendPicker().statuses)
print(json.dumps({"loaded_at_import": loaded_at_import, "same": same, "plans": plans, "rows": rows,
                  "picker": picker, "doctor": fluxlab.doctor_text()}))
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    source = tmp_path_factory.mktemp("plugin_source")
    (source / "pyproject.toml").write_text(PYPROJECT)
    for name, text in FILES.items():
        (source / name).parent.mkdir(exist_ok=True)
        (source / name).write_text(textwrap.dedent(text))
    site = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True, cwd=source)
    assert (site / "fluxlab_tiny_plugin-0.1.dist-info" / "entry_points.txt").exists()
    return site


def _run(command, site):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]))
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)


def test_plugin_backends_are_everywhere_and_a_broken_one_is_reported(plugin_site):
    done = _run([sys.executable, "-c", CHECKS], plugin_site)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["loaded_at_import"] is False  # import fluxlab stays light; the first registry use loads them
    assert seen["same"] is True  # the Backend entry point, by its alias, through fluxlab.attention
    assert seen["plans"] == {"tiny_a": "tiny_a", "tiny_b": "tiny_b", "tiny_registered": "tiny_registered"}
    assert seen["rows"]["tiny_one"] == "fluxlab-tiny-plugin" and seen["rows"]["tiny_a"] == "fluxlab-tiny-plugin"
    assert seen["rows"]["tiny_registered"] == "fluxlab-tiny-plugin"  # registered while its module was imported
    assert {"tiny_one", "tiny_a", "tiny_b", "tiny_registered"} <= set(seen["picker"])
    doctor = seen["doctor"]
    assert "plug-in fluxlab-tiny-plugin" in doctor
    assert "broken = tiny_plugin.broken:BACKEND" in doctor and "needs a GPU library" in doctor


def test_doctor_json_and_the_cli_see_plugins(plugin_site):
    done = _run([str(FLUXLAB), "doctor", "--json"], plugin_site)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    plugins = {row["name"]: row["plugin"] for row in report["backends"] if row["plugin"]}
    assert plugins == dict.fromkeys(["tiny_a", "tiny_b", "tiny_one", "tiny_registered"], "fluxlab-tiny-plugin")
    [problem] = report["plugin_problems"]
    assert problem["distribution"] == "fluxlab-tiny-plugin" and "ImportError" in problem["error"]


def test_the_compare_command_runs_a_plugin_backend(plugin_site, tmp_path):
    done = _run([str(FLUXLAB), "compare", "--inputs", "smoke", "--no-images", "--backends", "tiny_one",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")], plugin_site)
    assert done.returncode == 0, done.stderr
    assert "tiny_one" in (tmp_path / "out" / "report.md").read_text()
