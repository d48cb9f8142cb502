"""What every test may rely on, whoever started the suite and however: the variables that change fluxlab's (or its
progress bars') behaviour are cleared, the working directory is a throw-away folder, the terminal width is fixed.
See docs/testing.md ("The same result however the suite is started")."""

import os

import pytest
import torch

# GPU tests run on the device machine (`pytest -m gpu`); on a CPU machine they are not collected at all,
# so nothing is reported as skipped-but-green.
collect_ignore = [] if torch.cuda.is_available() else ["test_gpu_backends.py", "test_offload_gpu.py",
                                                      "test_compile_gpu.py"]

# Variables that tell the *tests* where things are or where to put them; every other FLUXLAB_* variable changes
# what fluxlab does (the default backend, finite checks, the recorded commit) and is cleared for the session.
TEST_SETTINGS = {"FLUXLAB_CHROMIUM", "FLUXLAB_GPU_RESULTS", "FLUXLAB_UPDATE_SCREENSHOTS"}
CLEARED_PREFIXES = ("FLUXLAB_", "TQDM_")  # TQDM_DISABLE, TQDM_MININTERVAL... override every progress bar's defaults
SESSION_ENV = {"HF_HUB_OFFLINE": "1"}  # no test reaches a model hub, whether or not this machine has a network

_session_env = pytest.MonkeyPatch()


def pytest_configure(config):
    """Before collection (module-level code and session fixtures, e.g. the JupyterLab server, see the same)."""
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES) and name not in TEST_SETTINGS:
            _session_env.delenv(name)
    for name, value in SESSION_ENV.items():
        _session_env.setenv(name, value)


def pytest_unconfigure(config):
    _session_env.undo()


@pytest.fixture(scope="session", autouse=True)
def _throwaway_working_directory(tmp_path_factory):
    """Tests use paths from ``__file__`` or ``tmp_path``; a default output folder (``fluxlab-demo``...) written by
    mistake lands here, never in the checkout or wherever the suite was started."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def _fixed_terminal_width(monkeypatch):
    """argparse wraps ``--help`` at the terminal's width: a foreground run on a narrow terminal, a pipe in CI and a
    background job all see 80 columns (a test that needs wider sets its own). Per test, so pytest's own report
    keeps the real width."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")


@pytest.fixture
def standins():
    """tests/standins (STAND-INS with FlashAttention's and aiter's signatures) on the path for one test; every module
    they could have imported is forgotten after it (tests/_standins.py)."""
    from _standins import standins_on_path

    with standins_on_path():
        yield


@pytest.fixture
def umask_022():
    """The usual umask for the test (file-mode checks expect 0644), the caller's restored after."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
