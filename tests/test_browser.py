"""The web page in a real browser (Debian's headless Chromium through Playwright) against uvicorn
on a free loopback port: pick a user, see recommendations, like one, watch the list change, ask
why. With MMKGREC_UPDATE_SCREENSHOT=1 the screenshot is copied to docs/img/serve.png."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent "
                                "(apt-get install -y chromium)")
pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parents[1]
API_KEY = "browser-test-key-0123456789"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from mmkgrec.serve.app import create_app
    from mmkgrec.serve.edge import server_config
    from mmkgrec.serve.service import RecService
    from mmkgrec.train.run import RunSpec, run_experiment

    out = tmp_path_factory.mktemp("browser") / "run"
    run_experiment(RunSpec(model="mkgcn", dataset="synthetic-tiny", protocol="topk",
                           model_options={"dim": 8, "n_heads": 2},
                           train_options={"epochs": 2}), out, progress=False)
    service = RecService.from_run_dir(out, out.parent / "feedback.sqlite", index="flat")
    app = create_app(service, api_key=API_KEY)  # the page asks for the key on its first 401
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = server_config(app, "127.0.0.1", port)  # mmkgrec serve's limits and protocol
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


def test_pick_a_user_like_a_song_and_see_the_list_change(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, prompts = [], []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("dialog", lambda dialog: (prompts.append(dialog.message), dialog.accept(API_KEY)))
        page.goto(server + "/")
        expect(page.locator("#model-info")).to_contain_text("mkgcn")
        page.select_option("#user-select", "u3")
        items = page.locator("#recs .rec-item")
        expect(items).to_have_count(10)
        before = items.evaluate_all("nodes => nodes.map(n => n.dataset.itemId)")
        assert len(set(before)) == 10
        first = before[0]
        page.locator(f'#recs .rec-item[data-item-id="{first}"] .like-btn').click()
        expect(page.locator("#status")).to_contain_text(f"liked {first}")
        expect(page.locator(f'#recs .rec-item[data-item-id="{first}"]')).to_have_count(0)
        after = items.evaluate_all("nodes => nodes.map(n => n.dataset.itemId)")
        assert first not in after and after != before and len(after) == 10
        expect(page.locator("#rec-meta")).to_contain_text("1 liked here")
        top = page.locator("#recs .rec-item").first
        top.locator(".why-btn").click()
        expect(top.locator(".why")).to_contain_text("Paths from your history")
        expect(top.locator(".why .bar-row")).to_have_count(5)  # id + 4 modalities
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert len(prompts) == 1 and "API key" in prompts[0]  # asked once, on the first like
    assert shot.stat().st_size > 10_000
    if os.environ.get("MMKGREC_UPDATE_SCREENSHOT"):  # refresh the picture in docs/serving.md
        target = REPO / "docs" / "img" / "serve.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_a_new_listener_likes_songs_from_the_search(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept(API_KEY))
        page.goto(server + "/")
        expect(page.locator("#model-info")).to_contain_text("mkgcn")
        page.click("#new-listener")
        page.fill("#song-query", "Song 2")
        results = page.locator("#song-results li")
        expect(results.first).to_contain_text("Song 2")
        results.first.locator("button").click()
        expect(page.locator("#recs .rec-item")).to_have_count(10)
        expect(page.locator("#rec-meta")).to_contain_text("1 liked here")
        browser.close()
