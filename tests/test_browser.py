"""JupyterLab in a real browser: a JupyterLab server on loopback, Debian's chromium driven headless by
Playwright (the system browser, no downloaded one), `30_figures` opened, Run All from the menu, the
kernel left to go idle; no cell may show an error and every figure must render as an image.

The screenshot is kept beside the test's output (its path is printed; pytest keeps the last runs'
tmp folders). Where the browser or Playwright is missing the test skips and says which; under CI
(`CI=true`, where `.ci/run` installs chromium) it fails instead, so it cannot silently stop running.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from labserver import jupyterlab

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOKEN = "xrstudy-browser-" + uuid.uuid4().hex
BROWSERS = ("chromium", "chromium-browser")


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser test must run in CI: {reason} (.ci/run installs chromium with apt-get)")
    pytest.skip(reason)


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    _cannot_run("no system chromium (apt-get install chromium)")
    raise AssertionError  # unreachable


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab serving a copy of 30_figures and the bundled store (Run All never touches the repo)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOKS / "30_figures.ipynb", root)
    shutil.copytree(NOTEBOOKS / "example-results", root / "example-results")
    # Every cell stays in the page (no windowed rendering), so every output can be counted.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # The notebook's kernel starts without asking (as "Always start the preferred kernel" would).
    (settings / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True})
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel keeps its inline backend
    env.update({f"JUPYTER_{k}": str(tmp_path / k.lower()) for k in ("CONFIG_DIR", "DATA_DIR", "RUNTIME_DIR")})
    env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    with jupyterlab(
        root,
        TOKEN,
        env,
        tmp_path / "lab.log",
        extra=["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
    ) as base:
        yield base, root


def _expected_figures(root: Path, scratch: Path) -> int:
    """How many figures 30_figures shows for the bundled store: every default-style figure of
    the bars / model-size / few-shot kinds, every paper-style figure, and the restyled one."""
    from xrstudy.plots import render

    default = render.render_all(root / "example-results", scratch / "default")
    paper = render.render_all(root / "example-results", scratch / "paper", style="paper")
    shown = [key for key in default if key[0] in ("bars", "model_size", "fewshot")]
    return len(shown) + len(paper) + 1


def test_run_all_of_30_figures_in_jupyterlab_in_chromium(lab, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if sync_api is None:  # pragma: no cover - importorskip returns the module
        _cannot_run("playwright missing")
    executable = _browser()
    base, root = lab
    expected = _expected_figures(root, tmp_path / "expected")
    screenshot = tmp_path / "30_figures-run-all.png"
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
        except Exception as err:  # noqa: BLE001 - Playwright raises its own Error type
            _cannot_run(f"chromium at {executable} does not start under Playwright: {err}")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Offline: only the loopback server answers; anything else is refused, not waited for.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())
            page.goto(f"{base}/lab/tree/30_figures.ipynb?token={TOKEN}", timeout=120_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            try:  # a JupyterLab that still asks which kernel: answer as a user would
                page.locator(".jp-Dialog button:has-text('Select')").click(timeout=10_000)
            except sync_api.TimeoutError:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            page.click(".lm-MenuBar-item:has-text('Run')")
            page.click("[data-command='runmenu:run-all']")
            # Idle again with every code cell numbered -- or stopped at an error (Run All stops there).
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                    const state = document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
                    const failed = [...document.querySelectorAll('.jp-OutputArea-output')]
                        .some(o => o.innerText.includes('Traceback'));
                    return state === 'idle' && prompts.length
                        && (failed || prompts.every(p => /\\[\\d+\\]/.test(p.textContent)));
                }""",
                timeout=540_000,
            )
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-OutputArea-output img')].every(i => i.complete)",
                timeout=60_000,
            )
            texts = page.locator(".jp-OutputArea-output").all_inner_texts()
            unrun = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            errors = [t for t in texts if "Traceback" in t or "Error:" in t]
            images = page.locator(".jp-OutputArea-output img")
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            if len(widths):
                images.first.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot))
        finally:
            if not screenshot.exists():
                page.screenshot(path=str(screenshot))  # the state it failed in
            browser.close()
    print(f"\nscreenshot of 30_figures after Run All: {screenshot}")
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    assert not errors, "a cell shows an error:\n" + "\n---\n".join(errors)[:3000]
    assert all("[" in p and "[ ]" not in p and "[*]" not in p for p in unrun), f"cells not run: {unrun}"
    assert len(widths) == expected, f"{len(widths)} images rendered, {expected} figures expected"
    assert all(w > 100 for w in widths), f"an image did not render: natural widths {widths}"
