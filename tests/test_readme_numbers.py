"""README's measured numbers equal what benchmarks/readme_numbers.py renders from the committed result files."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# A key that names a source revision, and what a real one looks like: a hex commit id, maybe with a note after it.
REVISION_KEY = re.compile(r"(git|git_?commit|git_?rev(ision)?|commit|revision)", re.I)  # not "git_commit_note"
REVISION = re.compile(r"[0-9a-f]{7,40}\b")


def load_script():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "benchmarks" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def numbers():
    return load_script()


def test_readme_blocks_equal_the_scripts_output(numbers):
    assert ROOT / "README.md" in numbers.DOCUMENTS
    assert set(numbers.TARGETS) == set(numbers.BLOCKS) and set(numbers.TARGETS.values()) == set(numbers.DOCUMENTS)
    assert any(path.parent == ROOT / "docs" for path in numbers.DOCUMENTS), "the long results live in docs/ pages"
    for document in numbers.DOCUMENTS:
        stale = numbers.stale_blocks(document.read_text())
        assert not stale, (f"{document.name} blocks {stale} differ from the committed results: run "
                           "`python benchmarks/readme_numbers.py --write` (never edit the numbers by hand)")


def test_every_block_sits_in_one_document_once_and_every_marker_is_known(numbers):
    names = []
    for document in numbers.DOCUMENTS:
        text = document.read_text()
        found = [m["name"] for m in numbers.MARKER.finditer(text)]
        assert text.count("<!-- generated:") == text.count("<!-- /generated -->") == len(found), \
            f"an unmatched generated-block marker in {document.name}"
        names += found
    assert sorted(names) == sorted(numbers.BLOCKS), \
        f"markers {sorted(names)} vs the script's blocks {sorted(numbers.BLOCKS)}"
    assert numbers.placement_problems() == []


def test_a_block_outside_its_target_is_named(numbers, tmp_path, monkeypatch, capsys):
    """--check names a block shown in a document that is not its target, and one missing from its target."""
    name = "attention-table"
    source = numbers.TARGETS[name]
    moved = tmp_path / "docs" / "elsewhere.md"
    moved.parent.mkdir()
    block = numbers.MARKER.search(source.read_text()).group(0)
    moved.write_text(f"# elsewhere\n\n{block}\n")
    emptied = tmp_path / "docs" / source.name
    emptied.write_text(numbers.MARKER.sub("", source.read_text()))
    monkeypatch.setattr(numbers, "ROOT", tmp_path)
    monkeypatch.setattr(numbers, "TARGETS", {**numbers.TARGETS, **{n: emptied for n, t in numbers.TARGETS.items()
                                                                   if t == source}})
    problems = numbers.placement_problems([moved, emptied])
    assert any("elsewhere.md" in p and numbers.MARKER.search(block)["name"] in p for p in problems), problems
    assert any(f"lacks its block '{name}'" in p for p in problems), problems


def test_a_docs_page_shows_links_relative_to_itself(numbers):
    """A block written with repository-root paths is shown in docs/ with ../ so its image and links resolve."""
    for name, target in numbers.TARGETS.items():
        for match in numbers.LINK.finditer(numbers.MARKER.search(
                target.read_text()[target.read_text().index(f"<!-- generated:{name} -->"):])["body"]):
            assert (target.parent / match["path"].split("#")[0]).exists(), f"{target.name}: {name} links {match['path']}"


def test_a_changed_result_file_makes_its_block_stale(numbers, tmp_path):
    """The check is real: edit one measured number in a copy of the results and README no longer agrees."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    path = results / "h100" / "attention.json"
    data = json.loads(path.read_text())
    row = next(r for r in data["rows"] if r["backend"] == data["default_pick"] and r.get("status") == "ran"
               and r["dtype"] == "bf16" and r["shape"][0] == 1)
    row["tflops"] = 123.0
    path.write_text(json.dumps(data))
    page = numbers.TARGETS["attention-table"].read_text()
    assert "attention-table" in numbers.stale_blocks(page, results)
    assert "**123**" in numbers.rewrite(page, results)


def test_write_mode_repairs_a_hand_edited_number(numbers, tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    readme.write_text(original.replace("1.80–1.84×", "1.95×", 1))
    assert readme.read_text() != original, "the parallel speed-up should be in README"
    monkeypatch.setattr(numbers, "DOCUMENTS", (readme,))
    assert numbers.main(["--check"]) == 1
    assert "parallel-speedup" in capsys.readouterr().out
    assert numbers.main(["--write"]) == 0
    assert readme.read_text() == original


def test_a_missing_results_file_is_named(numbers, tmp_path):
    with pytest.raises(FileNotFoundError, match="flux2_step.json"):
        numbers.render("flux2-step", tmp_path)
    with pytest.raises(KeyError, match="does not know"):
        numbers.render("no-such-block")


def _revisions(value, key=""):
    """Every (key, string) under a key that names a git revision, anywhere in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _revisions(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from _revisions(item, key)
    elif isinstance(value, str) and REVISION_KEY.fullmatch(key):
        yield key, value


def _documents(path: Path):
    if path.suffix == ".json":
        yield json.loads(path.read_text())
    elif path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def test_every_results_file_carries_a_real_git_revision_or_none():
    """'HEAD' (or any name that moves) is no revision: a results file records a commit id, or null."""
    files = sorted(p for p in RESULTS.rglob("*") if p.suffix in (".json", ".jsonl", ".md", ".log", ".txt"))
    assert files, "no result files found under benchmarks/results"
    problems = []
    for path in files:
        where = path.relative_to(ROOT)
        if re.search(r"\b(git[_ ]?(commit|revision|rev)?|commit|revision)\W{1,4}HEAD\b", path.read_text(), re.I):
            problems.append(f"{where}: records HEAD as its revision")
        for document in _documents(path):
            for key, value in _revisions(document):
                match = REVISION.match(value)
                if not match:
                    problems.append(f"{where}: {key} = {value!r} is not a commit id (write one, or null)")
                    continue
                known = subprocess.run(["git", "cat-file", "-e", f"{match.group()}^{{commit}}"], cwd=ROOT,
                                       capture_output=True).returncode == 0
                if not known:
                    problems.append(f"{where}: {key} = {value!r} is no commit of this repository")
    assert not problems, "\n".join(problems)


def test_h200_targets_are_reported_as_the_result_files_say(numbers, tmp_path):
    """A target flips from 'not met' to 'met' only when the committed result says so; a failed check is named."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "h200", results / "h200", ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    compile_json = results / "h200" / "flux2_compile" / "flux2_compile.json"
    data = json.loads(compile_json.read_text())
    rendered = numbers.render("flux2-compile", results)
    for key, size in data["sizes"].items():
        targets = size["targets"]
        ratio = f"{targets['fluxlab_compiled_vs_diffusers_compiled']:.3f}×"
        verdict = "met" if targets["met_vs_diffusers"] else "**not met**"
        row = next(line for line in rendered.splitlines() if line.startswith(f"| {key}²"))
        assert f"{ratio} (target ≤ {targets['target_vs_diffusers']:.2f}: {verdict})" in row
    first = next(iter(data["sizes"].values()))["targets"]
    first["met_vs_diffusers"] = not first["met_vs_diffusers"]
    compile_json.write_text(json.dumps(data))
    assert numbers.render("flux2-compile", results) != rendered

    emulators_json = results / "h200" / "emulators_gpu.json"
    emulators = json.loads(emulators_json.read_text())
    check = next(c for c in emulators["cases"][0]["checks"] if c["check"].startswith("rel_l2(emu_sage, sage)"))
    check["ok"] = False
    emulators_json.write_text(json.dumps(emulators))
    row = next(line for line in numbers.render("emulators-gpu", results).splitlines()
               if line.startswith(f"| {emulators['cases'][0]['distribution']}"))  # "| normal |" or "| normal, S … |"
    assert f"{check['value']:.3f} (not met)" in row
