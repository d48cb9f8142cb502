"""A real JupyterLab server on 127.0.0.1 (token, throw-away config, news and update checks off) and the helpers
that drive a notebook in it through Playwright: wait for a connected idle kernel, run all, save, read back."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _jupyter import isolated_env

# JupyterLab settings for a test run: every cell attached to the DOM (windowing would detach cells out of view),
# widget state saved with the notebook (what the widgets showed, read back as the headless test reads it), no news,
# no update checks, no announcement pop-up.
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {"saveState": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
SERVER_CONFIG = {
    "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
    "LabServerApp": {"extra_labextensions_path": []},
    "ServerApp": {"open_browser": False},
}
PAGE_CONFIG = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}

SERVER_START_TIMEOUT_S = 180


class BrowserTestError(AssertionError):
    """A bounded wait ran out, or the page is not in the state the test needs; the message says which."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.25, detail=lambda: ""):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` (and ``detail()``) after timeout."""
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        time.sleep(interval_s)
    extra = detail()
    raise BrowserTestError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                           + (f" (last error: {last_exc!r})" if last_exc else "") + (f"\n{extra}" if extra else ""))


class JupyterLab:
    """``with JupyterLab(base_dir, notebooks_dir) as lab:`` — a server for one test session; always stopped."""

    def __init__(self, base: Path, root_dir: Path):
        self.base = Path(base)
        self.root_dir = Path(root_dir)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, **isolated_env(self.base / "home")}

    # -- configuration --------------------------------------------------------------------------------------------

    def _write_config(self):
        config_dir = Path(self.env["JUPYTER_CONFIG_DIR"])
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
        (config_dir / "jupyter_lab_config.json").write_text(json.dumps(SERVER_CONFIG))
        (config_dir / "labconfig").mkdir(parents=True, exist_ok=True)
        (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
        for rel, settings in USER_SETTINGS.items():
            path = config_dir / "lab" / "user-settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self):
        self._write_config()
        args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.root_dir, start_new_session=True)
        wait_for(self._ready, SERVER_START_TIMEOUT_S, f"JupyterLab to answer on {self.url}", interval_s=0.5,
                 detail=self.log_tail)
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise BrowserTestError(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return self.api("/api/status") is not None
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the kernels it started
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return "JupyterLab log (tail):\n" + self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    # -- REST API -------------------------------------------------------------------------------------------------

    def api(self, path: str, method: str = "GET", body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else {}

    def session_for(self, path: str) -> dict | None:
        for session in self.api("/api/sessions"):
            if session.get("path") == path or session.get("notebook", {}).get("path") == path:
                return session
        return None

    def kernel_ready(self, path: str) -> dict | None:
        """The notebook's session once its kernel is idle AND has a client connected (the page's websocket)."""
        session = self.session_for(path)
        if not session:
            return None
        kernel = session["kernel"]
        if kernel.get("execution_state") == "idle" and kernel.get("connections", 0) >= 1:
            return session
        return None

    def kernel_idle(self, path: str) -> bool:
        session = self.session_for(path)
        return bool(session) and session["kernel"].get("execution_state") == "idle"

    def notebook(self, path: str) -> dict:
        return self.api(f"/api/contents/{path}?content=1&type=notebook")["content"]

    def shutdown_session(self, path: str):
        session = self.session_for(path)
        if session:
            self.api(f"/api/sessions/{session['id']}", method="DELETE")


# Chromium from Debian, as root, with no network beyond loopback (the env notes' flags).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
