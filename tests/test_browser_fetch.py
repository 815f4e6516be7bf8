"""Fetching a model from the page in a real headless Chromium (as tests/test_browser_studio.py): a server
with no model yet, whose Hugging Face hub is tests/local_hub.py on a loopback port holding the tiny MusicGen
as facebook/musicgen-small (sent slowly, so the download can be watched); click Fetch, see the bytes counted
and the row served (after a Cancel and a second Fetch), the model selected, generate with it. No request
of the page leaves the server. Screenshots go to the folder printed at the end (MLX_AUDIO_SCREENSHOTS)."""

from __future__ import annotations

import re

import pytest
from local_hub import LocalHub
from test_browser import open_page
from test_browser_studio import generate_job, shots

from mlx_audio_generate.server.launch import serve


@pytest.fixture(scope="module")
def server(musicgen_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-fetch")
    (root / "models").mkdir()
    args = ["--models-dir", str(root / "models"), "--data-dir", str(root / "data")]
    with LocalHub({"facebook/musicgen-small": musicgen_dir}, delay=0.2) as hub:  # ~4 s: time to cancel
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(root / "hf")}
        with serve(args, log_path=root / "server.log", env=env) as srv:
            yield srv


@pytest.fixture()
def page(server, tmp_path):
    with open_page(tmp_path, server.url) as pg:
        yield pg


def test_fetch_a_model_then_generate_with_it(page, server, tmp_path):
    from playwright.sync_api import expect

    out = shots(tmp_path)
    page.goto(server.url + "/")
    # no model served yet: the catalog is open, every registry model listed, fetchable
    expect(page.get_by_test_id("models-panel")).to_have_attribute("open", "")
    expect(page.get_by_test_id("model").locator("option")).to_have_count(0)
    row = page.locator('[data-testid="catalog-item"][data-name="musicgen-small"]')
    expect(row).to_have_attribute("data-state", "fetchable")
    expect(row).to_contain_text("MusicGen · 1.4 MB")  # the hub's file listing, asked by the server
    expect(row).not_to_contain_text("downloaded")
    other = page.locator('[data-testid="catalog-item"][data-name="musicgen-medium"]')
    expect(other).to_contain_text("size unknown")  # a repo this hub does not have
    expect(page.get_by_test_id("catalog-summary")).to_contain_text("0 served")
    page.screenshot(path=str(out / "catalog.png"), full_page=True)

    row.get_by_test_id("fetch-button").click()
    expect(row).to_have_attribute("data-state", "fetching")  # shown from the POST's answer at once
    expect(row.get_by_test_id("fetch-progress")).to_be_visible()
    # the bytes written of the files' total while the weights arrive (the small files come first)
    expect(row.get_by_test_id("fetch-status")).to_have_text(
        re.compile(r"downloading [\d.]+ kB / 1\.4 MB · file \d / 5")
    )
    expect(row.get_by_test_id("fetch-progress")).to_have_attribute("aria-valuenow", re.compile(r"^\d$"))
    page.screenshot(path=str(out / "fetching.png"), full_page=True)
    # cancelled mid-download: fetchable again; fetched again, it completes
    row.get_by_test_id("cancel-fetch").click()
    expect(row).to_have_attribute("data-state", "fetchable", timeout=30_000)
    expect(row.get_by_test_id("fetch-status")).to_have_text("cancelled")
    expect(row.get_by_test_id("fetch-error")).to_have_count(0)
    row.get_by_test_id("fetch-button").click()
    expect(row).to_have_attribute("data-state", "fetching")
    served = page.locator('[data-testid="catalog-item"][data-name="musicgen-small"][data-state="served"]')
    expect(served).to_be_visible(timeout=60_000)
    expect(served.get_by_test_id("fetch-status")).to_have_text("served as musicgen-small")
    expect(page.get_by_test_id("catalog-item").first).to_have_attribute("data-name", "musicgen-small")
    # it joined the model select and is selected: its family's settings are shown
    expect(page.get_by_test_id("model")).to_have_value("musicgen-small")
    expect(page.get_by_test_id("model-info")).to_contain_text("MusicGen")
    expect(page.get_by_test_id("param-top_k")).to_have_value("250")
    page.screenshot(path=str(out / "fetched.png"), full_page=True)

    _, job = generate_job(page, server.url, "fetched and played", "0.5")
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
    row.get_by_test_id("fetch-button").click()  # a repo this hub does not have
    expect(row).to_have_attribute("data-state", "failed", timeout=60_000)
    expect(row.get_by_test_id("fetch-error")).to_contain_text(
        "Hugging Face repo 'facebook/musicgen-large' not found"
    )
    expect(row.get_by_test_id("fetch-button")).to_have_text("Retry")
    assert not page.problems, page.problems
    assert not page.foreign, page.foreign
