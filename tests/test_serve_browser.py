"""`genlab serve`'s page in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python).

The real server (uvicorn on a free loopback port, in a thread) serves conftest's tiny runs; each test
does what a person does on the page and checks what the page shows, with screenshots in tmp_path.
Playwright's own browser download cannot work offline, so the system executable is launched.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="genlab serve needs the serve extra: pip install 'genlab[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="genlab serve needs the serve extra: pip install 'genlab[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need Playwright: pip install playwright")

from genlab.serve.app import create_app  # noqa: E402
from genlab.serve.sampling import Limits  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
#: a long job for the cancel test needs more steps than the default limit allows
LONG_STEPS = 100_000
#: milliseconds Playwright waits for the page (the tiny runs answer in about a second on a busy machine)
WAIT_MS = 60_000

if not Path(CHROMIUM).exists():
    pytest.skip("the browser tests need Chromium at /usr/bin/chromium: apt-get install -y chromium",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(serve_root):
    """The URL of a real `genlab serve` of the tiny runs (uvicorn in a thread, loopback)."""
    app = create_app([serve_root], limits=Limits(max_steps=LONG_STEPS))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < end and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    requested = []
    pg.on("request", lambda r: requested.append(r.url))
    pg.goto(server)
    pg.wait_for_selector("body[data-ready]")  # the run list, the first run's form and the reports are in
    yield pg
    assert all(url.startswith(server) for url in requested), [u for u in requested if not u.startswith(server)]
    context.close()


def choose(page, run: str) -> None:
    """Pick a run in the selector and wait for its form."""
    page.select_option("#run", run)
    page.wait_for_function("(run) => document.querySelector('#runs tr.selected')?.dataset.run === run && "
                           "document.getElementById('options').dataset.run === run", arg=run)


def record_progress(page) -> None:
    """Start recording the progress bar's value every 5 ms into window.seen."""
    page.evaluate("window.seen = []; setInterval(() => window.seen.push(document.getElementById('progress').value), 5)")


def test_run_list_shows_every_run(page, tmp_path):
    rows = page.locator("#runs tbody tr")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == ["digits", "gauss", "text/gpt",
                                                                              "text/mdlm"]
    gpt = page.locator("#runs tr[data-run='text/gpt'] td")
    assert gpt.nth(1).inner_text() == "gpt" and gpt.nth(3).inner_text() == "4" and "bits_per_char" in gpt.nth(4).inner_text()
    page.screenshot(path=tmp_path / "runs.png")


def test_generate_shows_progress_previews_and_a_downloadable_image(page, tmp_path):
    choose(page, "digits")
    assert page.locator("#opt-sampler option").count() > 3
    page.select_option("#opt-sampler", "euler")
    page.fill("#opt-steps", "200")
    page.fill("#n", "16")
    page.fill("#seed", "7")
    record_progress(page)
    page.click("#generate")
    page.wait_for_selector("#result-image", state="visible")
    page.wait_for_function("document.getElementById('result-image').naturalWidth > 0")
    seen = page.evaluate("window.seen")
    assert any(0 < v < 1 for v in seen) and seen[-1] == 1, seen[::20]
    assert page.locator("#preview-box").is_visible()
    assert "--sampler euler --steps 200" in page.inner_text("#command")
    page.screenshot(path=tmp_path / "generate.png", full_page=True)
    with page.expect_download() as download:
        page.click("#download-png")
    image = Image.open(io.BytesIO(Path(download.value.path()).read_bytes()))
    params = json.loads(image.text["genlab"])
    assert params["options"] == {"sampler": "euler", "steps": 200} and params["seed"] == 7 and params["n"] == 16


def test_cancel_stops_a_long_job(page, tmp_path):
    choose(page, "digits")
    page.select_option("#opt-sampler", "heun")
    page.fill("#opt-steps", str(LONG_STEPS))
    page.click("#generate")
    page.wait_for_function("document.getElementById('progress').value > 0")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('error').textContent.includes('cancelled')")
    job = page.evaluate("fetch('/api/jobs/' + state.job.id).then(r => r.json())")
    assert job["state"] == "cancelled" and job["progress"] < 0.5
    assert page.locator("#cancel").is_disabled() and not page.locator("#result-box").is_visible()
    page.screenshot(path=tmp_path / "cancel.png")


def test_compare_grid_of_two_samplers_by_two_step_counts(page, tmp_path):
    choose(page, "digits")
    page.fill("#n", "4")
    page.click("button[data-tab=compare]")
    page.select_option("#cmp-x-name", "sampler")
    page.fill("#cmp-x-values", "euler, heun")
    page.select_option("#cmp-y-name", "steps")
    page.fill("#cmp-y-values", "2, 8")
    page.click("#compare")
    page.wait_for_function("[...document.querySelectorAll('#compare-grid img')].filter(i => i.naturalWidth > 0)"
                           ".length === 4")
    headers = page.locator("#compare-grid th").all_inner_texts()
    assert headers[1:3] == ["euler", "heun"] and "2" in headers and "8" in headers
    assert page.locator("#cmp-download").is_visible()
    page.screenshot(path=tmp_path / "compare.png", full_page=True)


def test_text_runs_generate_and_infill(page, tmp_path):
    choose(page, "text/gpt")
    assert not page.locator("#infill-box").is_visible()
    page.fill("#opt-prompt", "ROMEO")
    page.fill("#opt-max_new_tokens", "8")
    page.click("#generate")
    page.wait_for_selector("#result-text", state="visible")
    assert page.inner_text("#result-text").startswith("ROMEO")
    assert not page.locator("#result-image").is_visible() and page.inner_text("#command").startswith("genlab generate")
    choose(page, "text/mdlm")
    page.fill("#infill", "ROMEO:[MASK:4] soft")
    page.click("#infill-go")
    page.wait_for_function("document.getElementById('result-text').textContent.startsWith('ROMEO:') && "
                           "!document.getElementById('result-text').hidden")
    text = page.inner_text("#result-text")
    assert text.endswith(" soft") and "[MASK" not in text
    page.screenshot(path=tmp_path / "text.png", full_page=True)


def test_training_tab_draws_the_curves(page, tmp_path):
    choose(page, "text/gpt")
    page.click("button[data-tab=curves]")
    page.wait_for_function("document.querySelectorAll('#curve-name option').length > 0")
    names = page.locator("#curve-name option").all_inner_texts()
    assert "eval/bits_per_char" in names and any(n.startswith("train/loss") for n in names)
    inked = page.evaluate("""() => { const c = document.getElementById('curves');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert inked > 500  # axes, labels and the curve drawn
    page.screenshot(path=tmp_path / "curves.png")


def test_an_error_is_shown_on_the_page(page):
    choose(page, "digits")
    page.fill("#n", "65")
    page.click("#generate")
    page.wait_for_function("document.getElementById('error').textContent.includes('between 1 and 64')")
