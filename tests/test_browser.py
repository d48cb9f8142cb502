"""The notebooks in a real JupyterLab, in Debian's Chromium driven by Playwright: run all, click a backend, see the
result change, take a screenshot. The screenshots go to a temporary folder: a test run leaves the checkout as it was;
``FLUXLAB_UPDATE_SCREENSHOTS=1`` (``make screenshots``) writes them to docs/screenshots/, which the README shows.

Needs /usr/bin/chromium (``make browser-deps``, as root; ``make test`` run as root installs it; without it these tests
are skipped with one line saying so) and the ``playwright`` Python package (test extra). Never ``playwright
install``: the browser is Debian's.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from _jupyter import NOTEBOOK_DIR, NOTEBOOKS, ROOT, chromium_path, missing_outputs
from _jupyterlab import CHROMIUM_FLAGS, BrowserTestError, JupyterLab, wait_for

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "docs" / "screenshots"  # committed; written only when UPDATE_SCREENSHOTS is set
UPDATE_SCREENSHOTS = "FLUXLAB_UPDATE_SCREENSHOTS"
VIEWPORT = {"width": 1280, "height": 1000}
# Bounded waits (seconds). Measured on 2 shared cores: server ready 3-9 s, notebook open 5-10 s, kernel 2-4 s,
# run all 10-40 s, a click's regeneration under 2 s.
OPEN_S, KERNEL_S, RUN_ALL_S, CLICK_S, SAVE_S = 90, 120, 300, 120, 90


def chromium_executable() -> str:
    path = chromium_path()
    if not Path(path).is_file():  # no root to install it: skipped, said once in the summary (-ra); CI is root
        pytest.skip(f"no Chromium at {path}: `sudo make browser-deps` installs Debian's (`make test` does when run as "
                    "root), or FLUXLAB_CHROMIUM=/path/to/chromium names one")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("jupyterlab")
    work = base / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, work)
    with JupyterLab(base, work) as server:
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package `playwright` is missing: pip install -e '.[test]' (never `playwright "
                    "install`: the test drives Debian's chromium)", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        context.set_default_timeout(90_000)  # a wait for any page action under load, not a speed budget
        try:
            yield context
        finally:
            context.close()


# ------------------------------------------------------------------------------------------------ driving


class Notebook:
    """One notebook open in JupyterLab: open it, wait for a connected idle kernel, run all, save, inspect."""

    def __init__(self, lab: JupyterLab, browser, name: str):
        self.lab, self.name = lab, name
        self.page = browser.new_page()
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))

    def detail(self) -> str:
        prompts = self._prompts()
        return (f"notebook {self.name}; input prompts {prompts}; kernel session "
                f"{self.lab.session_for(self.name)}\n{self.lab.log_tail(1500)}")

    def open(self):
        # ?reset: a fresh workspace, so only this notebook is open (not the ones earlier tests left in it)
        self.page.goto(f"{self.lab.url}/lab/tree/{self.name}?reset&token={self.lab.token}")
        try:
            self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=OPEN_S * 1000)
        except Exception as exc:
            raise BrowserTestError(f"{self.name} did not open in JupyterLab within {OPEN_S} s: {exc}\n"
                                   f"{self.lab.log_tail()}") from None
        # On a fresh profile the status bar can say idle before the kernel is connected, and Run All then does
        # nothing: the server's view (idle and a websocket connection) is the one to trust.
        wait_for(lambda: self.lab.kernel_ready(self.name), KERNEL_S,
                 f"{self.name}'s kernel to be idle and connected (/api/sessions)", detail=self.detail)
        self.page.keyboard.press("Control+b")  # hide the file browser: the screenshots show the notebook

    def _prompts(self) -> list[str]:
        try:
            return [p.strip() for p in self.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
        except Exception:  # noqa: BLE001 - page gone; report what we can
            return []

    def code_cells(self) -> int:
        return self.page.locator(".jp-CodeCell").count()

    def run_all(self):
        self.page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        self.page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        cells = self.code_cells()

        def finished():
            prompts = self._prompts()
            numbered = [p for p in prompts if p.startswith("[") and p[1:-2].isdigit()]
            return len(prompts) == cells and len(numbered) == cells and self.lab.kernel_idle(self.name)

        wait_for(finished, RUN_ALL_S, f"Run All in {self.name} to finish (every code cell numbered, kernel idle)",
                 interval_s=0.5, detail=self.detail)

    def wait_idle(self):
        wait_for(lambda: self.lab.kernel_idle(self.name), CLICK_S, f"{self.name}'s kernel to be idle",
                 detail=self.detail)

    def save_and_read(self) -> dict:
        """Save from the browser (Ctrl+S) and read the notebook back from the server: the outputs as stored."""
        # content=0: metadata only, so polling does not re-read a notebook full of image outputs
        before = self.lab.api(f"/api/contents/{self.name}?content=0")["last_modified"]
        self.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        wait_for(lambda: self.lab.api(f"/api/contents/{self.name}?content=0")["last_modified"] != before, SAVE_S,
                 f"{self.name} to be saved from the browser", detail=self.detail)
        return self.lab.notebook(self.name)

    def widget(self, selector: str):
        locator = self.page.locator(selector).first
        try:
            locator.wait_for(state="visible", timeout=CLICK_S * 1000)
        except Exception:
            raise BrowserTestError(f"no visible {selector} in {self.name}: the widget did not render (is "
                                   f"ipywidgets' JupyterLab extension installed?)\n{self.detail()}") from None
        return locator

    def text(self, selector: str) -> str:
        return self.widget(selector).inner_text()

    def wait_text(self, selector: str, predicate, what: str) -> str:
        return wait_for(lambda: (lambda t: t if predicate(t) else None)(self.page.locator(selector).first.inner_text()),
                        CLICK_S, what, detail=self.detail)

    def screenshot(self, anchor: str) -> Path:
        """The notebook scrolled so that ``anchor``'s cell starts at the top, as the README shows it."""
        self.page.locator(anchor).first.evaluate(
            "el => (el.closest('.jp-Cell') || el).scrollIntoView({block: 'start'})")
        self.wait_idle()
        time.sleep(0.5)  # let images decode and layout settle
        update = os.environ.get(UPDATE_SCREENSHOTS, "") not in ("", "0")
        folder = SCREENSHOTS if update else self.lab.base / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (Path(self.name).stem + ".png")
        self.page.screenshot(path=str(path))
        return path

    def close(self):
        try:
            self.lab.shutdown_session(self.name)  # free the cores for the next notebook
        finally:
            self.page.close()


def stored_errors(nb: dict) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for cell in nb["cells"] for o in cell.get("outputs", [])
            if o.get("output_type") == "error"]


# ----------------------------------------------------------------------------------------------- per notebook


def click_tour(nb: Notebook, stored: dict):
    """01: the toggle demo ran on the default backend; clicking `reference` regenerates on float64 attention."""
    demo = ".fluxlab-toggle-demo"
    before = nb.wait_text(f"{demo} .fluxlab-result", lambda t: t.startswith("ran on "), "the demo's first generation")
    assert "reference" not in before.split(":")[0]
    image_before = nb.widget(f"{demo} .fluxlab-image").get_attribute("src")
    # a bad size is flagged next to its box, nothing runs, and the panel keeps working
    height = nb.widget(f"{demo} .fluxlab-height input")
    height.fill("60")
    height.press("Enter")
    nb.widget(f"{demo} .fluxlab-generate").click()
    # the notebook's embedded model: VAE x4 and 2x2 latent patches, so sides are multiples of 8 (models/limits.py)
    nb.wait_text(f"{demo} .fluxlab-size-message", lambda t: "not a multiple of 8" in t and "use 56 or 64" in t,
                 "the size message next to the height box")
    height.fill("64")
    height.press("Enter")
    nb.widget(f"{demo} .fluxlab-backend-reference").click()
    after = nb.wait_text(f"{demo} .fluxlab-result", lambda t: t.startswith("ran on reference"),
                         "the label to say the demo ran on reference after the click")
    assert "reference: " in after and "attention calls" in after and "run 2" in after, after
    assert nb.widget(f"{demo} .fluxlab-image").get_attribute("src"), "the image disappeared"
    assert image_before
    # a greyed-out backend explains itself on hover
    disabled = nb.page.locator(f"{demo} .fluxlab-backend:disabled").first
    assert disabled.count() and "unavailable here" in (disabled.get_attribute("title") or "")
    return demo


def click_equivalence(nb: Notebook, stored: dict):
    """02: the panel compared sdpa and flex (pass); adding the planted-bug backend and comparing shows FAIL."""
    panel = ".fluxlab-comparison-panel"
    nb.wait_text(f"{panel} .fluxlab-verdicts", lambda t: "PASS" in t, "the panel's first verdicts")
    assert "planted_scale_bug" not in nb.text(f"{panel} .fluxlab-verdicts")
    nb.widget(f"{panel} .fluxlab-backend-planted_scale_bug").click()
    nb.widget(f"{panel} .fluxlab-compare").click()
    verdicts = nb.wait_text(f"{panel} .fluxlab-verdicts", lambda t: "planted_scale_bug" in t,
                            "the planted-bug backend's verdict after the click")
    assert "planted_scale_bug FAIL" in " ".join(verdicts.split()), verdicts
    assert "FAIL for planted_scale_bug" in nb.text(f"{panel} .fluxlab-result")
    nb.wait_idle()
    heatmap = nb.widget(f"{panel} .fluxlab-heatmap")
    wait_for(lambda: heatmap.evaluate("img => img.complete && img.naturalWidth > 0"), CLICK_S,
             "the error heatmap to be drawn", detail=nb.detail)
    return panel


def click_side_by_side(nb: Notebook, stored: dict):
    """03: the gallery shows one card per backend; deselecting one and generating again drops its card."""
    gallery = ".fluxlab-image-gallery"
    nb.wait_text(f"{gallery} .fluxlab-result", lambda t: "image(s) vs" in t, "the gallery's first generation")
    cards = nb.page.locator(f"{gallery} .fluxlab-gallery-card")
    before = cards.count()
    assert before >= 3 and "sdpa_math" in nb.text(f"{gallery} .fluxlab-gallery")
    nb.widget(f"{gallery} .fluxlab-backend-sdpa_math").click()
    nb.widget(f"{gallery} .fluxlab-generate").click()
    nb.wait_text(f"{gallery} .fluxlab-result", lambda t: f"{before - 1} image(s) vs" in t,
                 "the gallery to generate again without the deselected backend")
    wait_for(lambda: cards.count() == before - 1, CLICK_S, "the gallery to drop the deselected backend's card",
             detail=nb.detail)
    assert "sdpa_math" not in nb.text(f"{gallery} .fluxlab-gallery")
    return gallery


# The pixels of every drawn <img> under a selector, read back from the page (what the user sees), [H, W, 4] each.
READ_PIXELS = """els => els.map(img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    return {width: canvas.width, height: canvas.height,
            data: Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)};
})"""


def notebook_prompt(stored: dict) -> str:
    """The prompt the notebook generated with: its ``CANDIDATE, RUN`` cell's stored result."""
    import ast

    for cell in stored["cells"]:
        for out in cell.get("outputs", []):
            text = "".join(out.get("data", {}).get("text/plain", ""))
            if text.startswith("(") and "'prompt'" in text:
                return ast.literal_eval(text)[1]["prompt"]
    raise AssertionError("04 stored no (CANDIDATE, RUN) result to read the prompt from")


def click_decide(nb: Notebook, stored: dict):
    """04: the drift map, the frontier and the autotune plan are rendered, with figures; clicking a cell of the drift
    explorer generates the image with only that cell on the candidate, beside the all-exact and all-candidate ones,
    and all three show the caption's scene under the embedded-model tests' pixel test."""
    import numpy as np

    from training.shapes_data import scene_problems

    rendered = ".jp-OutputArea .jp-RenderedHTMLCommon"  # the results' _repr_html_ (fluxlab.results)
    wait_for(lambda: nb.page.locator(f"{rendered}:has-text('Drift of')").count() > 0, CLICK_S,
             "the drift map's table", detail=nb.detail)
    for text in ("Pareto", "Never chosen"):
        assert nb.page.locator(f"{rendered}:has-text('{text}')").count() > 0, f"04 shows no {text!r} table"
    assert nb.page.locator(".jp-OutputArea-output img").count() >= 2, "04's figures are missing"
    explorer = ".fluxlab-drift-explorer"
    assert "nothing is generated until" in nb.text(f"{explorer} .fluxlab-result")
    nb.widget(f"{explorer} .fluxlab-drift-cell-0-0").click()  # the first layer at step 0
    status = nb.wait_text(f"{explorer} .fluxlab-result", lambda t: "vs all good" in t,
                          "the explorer to show the clicked cell")
    assert status.startswith("transformer_blocks.0.attn at step 0: final-latent rel-L2"), status
    images = nb.page.locator(f"{explorer} .fluxlab-image")
    wait_for(lambda: images.evaluate_all("els => els.filter(i => i.complete && i.naturalWidth > 0).length") == 3,
             CLICK_S, "the all-exact, one-cell and all-candidate images to be drawn", detail=nb.detail)
    caption = notebook_prompt(stored)
    drawn = images.evaluate_all(READ_PIXELS)
    problems = {}
    for name, pixels in zip(("all good", "one cell bad", "all bad"), drawn):
        image = np.array(pixels["data"], dtype=np.uint8).reshape(pixels["height"], pixels["width"], 4)[..., :3]
        problems[name] = scene_problems(image, caption)
    assert problems == {"all good": [], "one cell bad": [], "all bad": []}, \
        f"04's explorer does not draw {caption!r}: {problems}"
    return explorer


SCENARIOS = {
    "01_backends_tour.ipynb": click_tour,
    "02_attention_equivalence.ipynb": click_equivalence,
    "03_flux2_side_by_side.ipynb": click_side_by_side,
    "04_decide.ipynb": click_decide,
}


def test_every_notebook_has_a_browser_scenario():
    assert sorted(SCENARIOS) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_jupyterlab(name, browser, lab):
    nb = Notebook(lab, browser, name)
    try:
        start = time.perf_counter()
        nb.open()
        nb.run_all()
        ran = time.perf_counter() - start
        stored = nb.save_and_read()
        assert not stored_errors(stored), f"{name}: cells raised in JupyterLab: {stored_errors(stored)}"
        # what the headless test checks (tests/test_notebooks.py runs it only where this test cannot run)
        missing = missing_outputs(nbformat.from_dict(stored), name)
        assert not missing, f"{name} ran in JupyterLab but lacks: {'; '.join(missing)}"
        anchor = SCENARIOS[name](nb, stored)
        shot = nb.screenshot(anchor)
        assert shot.stat().st_size > 10_000, f"{shot} looks empty"
        print(f"{name}: open + run all {ran:.1f} s; screenshot {shot}")
    finally:
        nb.close()
