"""Fetching a model from the page in a real headless Chromium (as tests/test_browser_studio.py): a server
with no model yet, offline, over a Hugging Face cache holding the tiny MusicGen as facebook/musicgen-small
(tests/test_server_fetch.py); click Fetch, see the row fetching and then served, select the model, generate.
No request leaves 127.0.0.1. Screenshots go to the folder printed at the end (MLX_AUDIO_SCREENSHOTS)."""

from __future__ import annotations

import pytest
from test_browser import CHROMIUM_ARGS, chromium_path
from test_browser_studio import shots, wait_done
from test_hub import populate_hf_cache

from mlx_audio_generate.server.launch import serve


@pytest.fixture(scope="module")
def server(musicgen_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-fetch")
    populate_hf_cache(root / "hf", "facebook/musicgen-small", musicgen_dir)
    (root / "models").mkdir()
    args = ["--models-dir", str(root / "models"), "--data-dir", str(root / "data")]
    env = {"HF_HUB_CACHE": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    with serve(args, log_path=root / "server.log", env=env) as srv:
        yield srv


@pytest.fixture()
def page(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 1200},
        )  # fmt: skip
        try:
            pg = context.new_page()
            pg.problems, pg.foreign = [], []
            pg.on("console", lambda m: m.type == "error" and pg.problems.append(m.text))
            pg.on("pageerror", lambda e: pg.problems.append(str(e)))
            pg.on(
                "request",
                lambda r: r.url.startswith((server.url, "data:", "blob:")) or pg.foreign.append(r.url),
            )
            yield pg
        finally:
            context.close()


def test_fetch_a_model_then_generate_with_it(page, server, tmp_path):
    from playwright.sync_api import expect

    out = shots(tmp_path)
    page.goto(server.url + "/")
    # no model served yet: the catalog is open, every registry model listed, fetchable
    expect(page.get_by_test_id("models-panel")).to_have_attribute("open", "")
    expect(page.get_by_test_id("model").locator("option")).to_have_count(0)
    row = page.locator('[data-testid="catalog-item"][data-name="musicgen-small"]')
    expect(row).to_have_attribute("data-state", "fetchable")
    expect(row).to_contain_text("MusicGen")
    expect(row).to_contain_text("downloaded")  # in the Hugging Face cache: no download needed
    expect(row).not_to_contain_text("size unknown")
    other = page.locator('[data-testid="catalog-item"][data-name="musicgen-medium"]')
    expect(other).to_contain_text("size unknown")  # offline: the hub cannot say
    expect(page.get_by_test_id("catalog-summary")).to_contain_text("0 served")
    page.screenshot(path=str(out / "catalog.png"), full_page=True)

    row.get_by_test_id("fetch-button").click()
    expect(row).to_have_attribute("data-state", "fetching")  # shown from the POST's answer at once
    expect(row.get_by_test_id("fetch-progress")).to_be_visible()
    page.screenshot(path=str(out / "fetching.png"), full_page=True)
    served = page.locator('[data-testid="catalog-item"][data-name="musicgen-small"][data-state="served"]')
    expect(served).to_be_visible(timeout=60_000)
    expect(served.get_by_test_id("fetch-status")).to_have_text("served as musicgen-small")
    expect(page.get_by_test_id("catalog-item").first).to_have_attribute("data-name", "musicgen-small")
    # it joined the model select and is selected: its family's settings are shown
    expect(page.get_by_test_id("model")).to_have_value("musicgen-small")
    expect(page.get_by_test_id("model-info")).to_contain_text("MusicGen")
    expect(page.get_by_test_id("param-top_k")).to_have_value("250")
    page.screenshot(path=str(out / "fetched.png"), full_page=True)

    page.get_by_test_id("prompt").fill("fetched and played")
    page.get_by_test_id("seconds").fill("0.5")
    page.get_by_test_id("generate").click()
    wait_done(page)
    item = page.get_by_test_id("history-item").filter(has_text="fetched and played")
    job = page.request.get(f"{server.url}/api/jobs/{item.get_attribute('data-job-id')}").json()
    assert job["model"] == "musicgen-small" and job["status"] == "done"
    page.screenshot(path=str(out / "generated.png"), full_page=True)
    assert not page.problems, page.problems
    assert not page.foreign, page.foreign
    print(f"screenshots: {out}")


def test_failed_fetch_shows_its_error(page, server):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    expect(page.get_by_test_id("catalog-summary")).to_contain_text("served")  # the catalog is read
    if page.get_by_test_id("models-panel").get_attribute("open") is None:  # (open when nothing is served)
        page.locator("#models-panel summary").click()
    row = page.locator('[data-testid="catalog-item"][data-name="musicgen-large"]')
    row.get_by_test_id("fetch-button").click()  # not in the Hugging Face cache, offline
    expect(row).to_have_attribute("data-state", "failed", timeout=60_000)
    expect(row.get_by_test_id("fetch-error")).to_contain_text("not in the local Hugging Face cache")
    expect(row.get_by_test_id("fetch-button")).to_have_text("Retry")
    assert not page.problems, page.problems
    assert not page.foreign, page.foreign
