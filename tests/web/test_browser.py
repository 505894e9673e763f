"""suti serve in a real browser: Debian's Chromium driven by playwright, against a server on 127.0.0.1.

Install the browser with the system package manager (``apt-get install chromium``), never with
``playwright install``. Without a browser the test is skipped, except under CI (``CI`` set), where it
fails. ``SUTI_SCREENSHOT_DIR=docs/images`` saves the page's screenshot there as ``serve.png``;
``SUTI_SERVE_TEST_MODEL=FOLDER`` serves that checkpoint instead of the tiny random one.
"""
import contextlib
import importlib.util
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from web_helpers import render_subject

pytest.importorskip("fastapi", reason="suti serve needs the web extra: pip install -e '.[web]'")

pytestmark = pytest.mark.browser


def _chromium() -> str:
    path = os.environ.get("SUTI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if path is None:
        missing = missing or "no Chromium found (apt-get install chromium)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    return path


@contextlib.contextmanager
def running_server(app):
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free port, this machine only
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def served_pipe(request):
    folder = os.environ.get("SUTI_SERVE_TEST_MODEL")
    if folder:
        from suti.pipeline import SuTIPipeline

        return SuTIPipeline.from_pretrained(folder), Path(folder).name
    return request.getfixturevalue("tiny_suti"), "tiny test checkpoint"


def test_personalise_in_the_browser(served_pipe, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from suti.serve import ServeSettings
    from suti.serve.app import create_app
    from suti.serve.png import read_png_settings

    chromium = _chromium()
    pipe, model_name = served_pipe
    photos = []
    captions = ["a photo of my orange mug", "my mug on the floor", "my striped mug"]
    if os.environ.get("SUTI_SERVE_TEST_MODEL"):
        # a real model of the world gets what its users upload: renders of a world subject it never saw
        from suti.demo.heldout import heldout_subject

        h = heldout_subject(0)  # a mug
        for i, im in enumerate(h.exemplar_images(256)):
            photos.append(tmp_path / f"mug-{i}.jpg")
            im.resize((256 + 40 * i, 256)).save(photos[-1], quality=92)
        captions = list(h.exemplar_texts[:3])
    for i in range(len(photos), 5):
        path = tmp_path / f"mug-{i}.jpg"
        path.write_bytes(render_subject(i % 3, size=(320 + 40 * i, 240)))
        photos.append(path)
    notes = tmp_path / "notes.jpg"
    notes.write_text("holiday notes, not a photo\n")

    app = create_app(pipe, ServeSettings(), model_name=model_name)
    with running_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            expect(page.locator("#model-name")).to_contain_text(model_name)

            page.set_input_files("#photo-input", [str(p) for p in photos[:3]])
            expect(page.locator("#photos .photo")).to_have_count(3, timeout=30_000)
            for i, caption in enumerate(captions):
                page.locator("#photos .photo input.caption").nth(i).fill(caption)
            page.fill("#prompt", "the mug on the beach")
            page.fill("#num-images", "3")
            steps = 50 if os.environ.get("SUTI_SERVE_TEST_MODEL") else 4  # a real model needs real steps
            page.fill("#steps", str(steps))
            page.fill("#seed", "7")
            page.click("#generate")

            results = page.locator("#results figure.result img")
            expect(results).to_have_count(3, timeout=600_000)
            page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
            size = pipe.cascade.stages[-1].image_size
            assert page.evaluate("() => [...document.querySelectorAll('#results img')].map(i => i.naturalWidth)") \
                == [size] * 3  # the browser decoded them
            expect(page.locator("#status-text")).to_contain_text("Done")
            expect(page.locator("#exemplars figure")).to_have_count(3)  # the subject beside the results
            for i in range(3):
                png = page.request.get(url + results.nth(i).get_attribute("src")).body()
                assert Image.open(io.BytesIO(png)).size == (size, size)
            with page.expect_download() as info:
                page.locator("#results a", has_text="Download PNG").first.click()
            saved = tmp_path / info.value.suggested_filename
            info.value.save_as(saved)
            meta = read_png_settings(saved.read_bytes())
            assert meta["prompt"] == "the mug on the beach" and meta["seed"] == 7 and meta["steps"] == steps
            assert meta["subject_texts"][0] == captions[0]

            shot = tmp_path / "serve.png"
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(shot))
            assert Image.open(shot).size == (1280, 860)
            if os.environ.get("SUTI_SCREENSHOT_DIR"):
                from retrieval.atomic import atomic_write_bytes

                atomic_write_bytes(Path(os.environ["SUTI_SCREENSHOT_DIR"]) / "serve.png", shot.read_bytes())

            # Bad input gets a message on the page: a file that is not a photo, a 6th photo, no prompt.
            page.set_input_files("#photo-input", str(notes))
            expect(page.locator("#message")).to_contain_text("notes.jpg: not an image")
            page.set_input_files("#photo-input", [str(p) for p in photos[3:]])
            expect(page.locator("#photos .photo")).to_have_count(5, timeout=30_000)
            page.set_input_files("#photo-input", str(photos[0]))
            expect(page.locator("#message")).to_contain_text("At most 5 photos")
            expect(page.locator("#photos .photo")).to_have_count(5)
            page.fill("#prompt", "")
            page.click("#generate")
            expect(page.locator("#message")).to_contain_text("write a prompt")
        finally:
            browser.close()


def test_queue_position_upload_cap_and_search_tab(tiny_suti, tmp_path, request):
    """Two requests at once: the second page shows its place in the queue. A photo over the cap gets a
    message. With a database, the search tab finds pairs and adds one as a subject photo."""
    from playwright.sync_api import expect, sync_playwright
    from web_helpers import GatedPipe

    from retrieval import PairsDatabase
    from suti.serve import ServeSettings
    from suti.serve.app import create_app

    chromium = _chromium()
    db = PairsDatabase.open(request.getfixturevalue("pairs_db_folder"))
    big = tmp_path / "big.jpg"
    big.write_bytes(render_subject(0, size=(900, 700)))
    gated = GatedPipe(tiny_suti)
    app = create_app(gated, ServeSettings(max_upload_bytes=len(big.read_bytes()) - 1), database=db, model_name="tiny")
    with running_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
        try:
            first, second = browser.new_page(), browser.new_page()
            for page in (first, second):
                page.goto(url)
                expect(page.locator("#model-name")).to_contain_text("tiny")
                page.fill("#prompt", "a mug")
                page.fill("#steps", "2")
            first.click("#generate")
            assert gated.entered.acquire(timeout=60)  # the first request is running, held at the gate
            expect(first.locator("#status-text")).to_contain_text("Sampling")
            second.click("#generate")
            expect(second.locator("#status-text")).to_contain_text("In the queue: 1 request ahead of yours")
            gated.gate.set()
            expect(first.locator("#results figure.result img")).to_have_count(2, timeout=120_000)
            expect(second.locator("#results figure.result img")).to_have_count(2, timeout=120_000)

            second.set_input_files("#photo-input", str(big))
            expect(second.locator("#message")).to_contain_text("big.jpg: the photo is")
            expect(second.locator("#message")).to_contain_text("over the")
            expect(second.locator("#photos .photo")).to_have_count(0)

            second.click("#tab-search")
            second.fill("#search-text", "a red mug")
            second.click("#search-form button")
            expect(second.locator("#search-results .pair")).to_have_count(3)
            second.wait_for_function("() => [...document.querySelectorAll('#search-results img')]"
                                     ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
            second.locator("#search-results .pair button").first.click()
            expect(second.locator("#search-message")).to_contain_text("Added")
            second.click("#tab-personalise")
            expect(second.locator("#photos .photo")).to_have_count(1)
            caption = second.locator("#photos .photo input.caption").first.input_value()
            assert caption.startswith("a ") and caption.endswith(" mug")
        finally:
            browser.close()
