"""End to end in a real browser: JupyterLab in headless Chromium runs notebook 05, a click on a
head button changes the live plot.

Needs Debian's ``chromium`` (``make browser`` installs it) and the ``playwright`` package
(its driver only: the browser is the system one, via ``executable_path``). Without them the
test is skipped, unless ``CAUSAL_NB_REQUIRE_BROWSER=1`` (set by CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "05_prompt_visualization.ipynb"
# Chromium's background services try to reach Google and are refused on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _need(what: str):
    if os.environ.get("CAUSAL_NB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (CAUSAL_NB_REQUIRE_BROWSER=1); run `make browser` to install it")
    pytest.skip(f"{what}; run `make browser` to install it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server over a scratch copy of notebook 05 (the committed file stays untouched)."""
    if _chromium() is None:
        _need("no chromium on PATH")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _need("the playwright package is not installed")
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, nbdir / NOTEBOOK)
    shutil.copytree(REPO / "scores", tmp_path / "scores")  # the notebook reads ../scores
    port, token = _free_port(), "causal-nb-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "TQDM_DISABLE": "1"}
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start in 60 s:\n" + (tmp_path / "lab.log").read_text()[-3000:])
        if proc.poll() is not None:
            pytest.fail("JupyterLab exited:\n" + (tmp_path / "lab.log").read_text()[-3000:])
        yield {"url": url, "token": token, "dir": tmp_path}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _bars(page) -> str:
    # the bar shapes of the first live figure (the per-token effect) in the head explorer
    return page.eval_on_selector_all(
        ".widget-vbox .js-plotly-plot", "els => els.length ? Array.from(els[0].querySelectorAll('.bars path'))"
        ".map(p => p.getAttribute('d')).join('|') : ''")


def _run_all(page, tries: int = 3) -> None:
    # A click that lands while the kernel's session is still settling can be dropped: check that
    # cells are running (a prompt shows [*]; the committed counts don't count) and click again if not.
    started = ("() => Array.from(document.querySelectorAll('.jp-InputArea-prompt'))"
               ".some(e => e.innerText.includes('[*]')) || document.querySelector('.widget-toggle-button')")
    for _ in range(tries):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all'], .lm-Menu-item[data-command='notebook:run-all-cells']"
                     ).first.click()
        try:
            page.wait_for_function(started, timeout=15_000)
            return
        except Exception:  # noqa: BLE001 - retried
            page.keyboard.press("Escape")
    raise AssertionError(f"Run All Cells did not start the notebook after {tries} clicks")


def test_click_a_head_and_the_plot_changes(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            _run_all(page)
            button = page.locator(".widget-toggle-button", has_text="L1H3").first
            button.wait_for(timeout=180_000)
            metric = page.locator(".cnb-metric").first
            metric.wait_for(timeout=60_000)
            assert metric.inner_text() == "+0.0000"  # no head selected yet
            page.wait_for_function("() => document.querySelectorAll('.widget-vbox .js-plotly-plot').length > 0",
                                   timeout=60_000)
            before = _bars(page)
            button.scroll_into_view_if_needed()
            button.click()
            page.wait_for_function("() => document.querySelector('.cnb-metric').innerText !== '+0.0000'",
                                   timeout=30_000)
            value = float(metric.inner_text())
            page.wait_for_function(
                "b => { const e = document.querySelector('.widget-vbox .js-plotly-plot');"
                " return e && Array.from(e.querySelectorAll('.bars path')).map(p => p.getAttribute('d')).join('|')"
                " !== b; }", arg=before, timeout=30_000)
            after = _bars(page)
            pressed = "mod-active" in (button.get_attribute("class") or "")  # ipywidgets' pressed state
            shot = lab["dir"] / "after_click.png"
            page.screenshot(path=str(shot), full_page=False)
            if os.environ.get("CAUSAL_NB_SCREENSHOT"):  # the README's picture comes from here
                shutil.copy(shot, os.environ["CAUSAL_NB_SCREENSHOT"])
        except Exception:
            page.screenshot(path=str(lab["dir"] / "failure.png"))
            raise
        finally:
            browser.close()
    assert pressed and value != 0.0 and after != before
