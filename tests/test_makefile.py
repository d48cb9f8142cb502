"""CI rules: the Makefile takes PyTorch's CPU index only when it answers, lists the slowest tests, and no test
compares a wall-clock time with a budget (speed is measured in benchmarks/, never asserted in a test)."""

from __future__ import annotations

import ast
import http.server
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _child import SAFETY_CAP_S  # a hang guard, not a speed budget

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

if shutil.which("make") is None:
    pytest.fail("GNU make is needed: the README's two commands are make targets", pytrace=False)


def dry_run(*args: str, venv: Path) -> str:
    """What `make -n` would run for a fresh venv at ``venv`` (nothing is executed)."""
    result = subprocess.run(["make", "-n", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    return result.stdout


def test_make_test_lists_the_slowest_tests(tmp_path):
    commands = dry_run("test", venv=tmp_path / "venv")
    pytest_line = next(line for line in commands.splitlines() if "-m pytest" in line)
    assert re.search(r"--durations=\d+", pytest_line), pytest_line
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M), "CI runs the README's `make test`"


def test_the_cpu_pin_takes_torch_from_the_cpu_index_when_it_answers(tmp_path):
    commands = dry_run("venv", venv=tmp_path / "venv")
    probe = commands.index("urllib.request.urlopen")
    extra = commands.index(f"--extra-index-url '{CPU_INDEX}' torch")
    project = commands.index("-e '.[notebooks,test]'")
    assert probe < extra < project, "probe the index, install the pinned torch from it, then the project"
    assert "-c constraints-cpu.txt" in commands[extra - 200:extra], "the torch step must carry the CPU pin"
    assert "did not answer" in commands, "without the index the install says where torch comes from"


@pytest.mark.parametrize("override", ["CONSTRAINTS=", "TORCH_INDEX="])
def test_gpu_machines_and_an_empty_index_skip_the_cpu_index(tmp_path, override):
    commands = dry_run("venv", override, venv=tmp_path / "venv")
    assert "--extra-index-url" not in commands and "urlopen" not in commands
    assert "-e '.[notebooks,test]'" in commands


def probe_code() -> str:
    match = re.search(r"^TORCH_INDEX_PROBE := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "the Makefile's TORCH_INDEX_PROBE line is gone"
    return match.group(1)


class _Index(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        found = self.path.rstrip("/").endswith("/torch")
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(b"<a href='torch-2.13.0+cpu.whl'>torch</a>" if found else b"")

    def log_message(self, *args):
        pass


def test_probe_answers_yes_for_an_index_that_serves_torch_and_no_otherwise():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"

        def probe(url):
            return subprocess.run([sys.executable, "-c", probe_code(), url], capture_output=True, timeout=SAFETY_CAP_S).returncode

        assert probe(f"{base}/whl/cpu") == 0
        assert probe(f"{base}/whl/cpu/") == 0
        assert probe(f"http://127.0.0.1:{dead_port}/whl/cpu") != 0
    finally:
        server.shutdown()
        server.server_close()


# A name that holds a wall-clock reading (elapsed, took_s, time_ms, perf_counter(), ...).
TIME_NAME = re.compile(r"(elapsed|duration|took|perf_counter|monotonic|wall|^time$|_time$|^time_|seconds|_s$|_ms$|_us$)")


# The far end of a generous wait (`assert time.monotonic() < deadline`): a hang guard, not a speed budget.
WAIT_NAMES = {"deadline", "timeout", "timeout_s"}


def _names(node) -> set[str]:
    return {sub.id if isinstance(sub, ast.Name) else sub.attr for sub in ast.walk(node)
            if isinstance(sub, (ast.Name, ast.Attribute))}


def _time_name(node) -> str | None:
    for sub in ast.walk(node):
        name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else None
        if name and TIME_NAME.search(name):
            return name
    return None


def time_budgets(source: str) -> list[str]:
    """Asserts that bound a wall-clock reading from above by something that is not itself a reading."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for compare in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            items = [compare.left, *compare.comparators]
            for left, op, right in zip(items, compare.ops, items[1:]):
                if isinstance(op, (ast.Gt, ast.GtE)):
                    left, right = right, left
                elif not isinstance(op, (ast.Lt, ast.LtE)):
                    continue
                if _time_name(left) and not _time_name(right) and not _names(right) & WAIT_NAMES:
                    found.append(f"line {node.lineno}: {ast.unparse(compare)}")
    return found


def test_the_budget_finder_finds_budgets():
    assert time_budgets("assert elapsed < BUDGET_S") == ["line 1: elapsed < BUDGET_S"]
    assert time_budgets("assert 60 > time.perf_counter() - start")
    assert time_budgets("assert result.took_s <= 2.5 and ok")
    assert not time_budgets("assert timing.min_ms <= timing.median_ms")  # an invariant between two readings
    assert not time_budgets("assert row.time_ms > 0")  # a time was recorded
    assert not time_budgets("while time.monotonic() < deadline: pass")  # a wait, not an assertion
    assert not time_budgets("assert time.monotonic() < deadline, 'hung'")  # a hang guard on a wait


def test_no_test_asserts_a_wall_clock_budget():
    found = {path.name: time_budgets(path.read_text()) for path in sorted(Path(__file__).parent.glob("test_*.py"))}
    found = {name: lines for name, lines in found.items() if lines}
    assert not found, f"tests that bound a wall-clock time (move speed checks to benchmarks/): {found}"
