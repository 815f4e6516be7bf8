"""The web UI in a real headless Chromium (Playwright) against the real server process with a tiny model.

Chromium comes from the system (Debian's `chromium`, installed by scripts/test.sh; or set CHROMIUM=/path):
Playwright's own browser download needs internet access. Missing on Linux is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlx_audio_generate.server.launch import serve

SECONDS = 2.0
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found and Path(found).exists():
        return found
    msg = (
        "no Chromium found: install it (scripts/test.sh does: apt-get install chromium) or set CHROMIUM=/path"
    )
    if sys.platform == "darwin":
        pytest.skip(msg)
    pytest.fail(msg)


@pytest.fixture(scope="module")
def server(musicgen_converted, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    broken = root / "broken"
    shutil.copytree(musicgen_converted, broken)
    (broken / "model.safetensors").unlink()  # described from its config; fails when a job loads it
    args = ["--model", f"tiny={musicgen_converted}", "--model", f"broken={broken}", "--output-dir", str(root)]
    args += ["--data-dir", str(root / "data")]
    with serve(args, log_path=root / "server.log") as srv:
        yield srv


@contextmanager
def open_page(
    tmp_path: Path,
    origin: str | None = None,
    extra_args: Sequence[str] = (),
    init_script: str | None = None,
    viewport: tuple[int, int] = (1000, 1200),
    accept_downloads: bool = False,
) -> Iterator[Any]:
    """A page of headless Chromium with a fresh profile in `tmp_path`. `page.problems` collects console
    errors (CSP violations included: anything loaded from elsewhere) and page errors; with `origin` (the
    server's URL), `page.foreign` collects every request that goes anywhere else."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_path(), headless=True,
            args=[*CHROMIUM_ARGS, *extra_args], accept_downloads=accept_downloads,
            viewport={"width": viewport[0], "height": viewport[1]},
        )  # fmt: skip
        try:
            if init_script is not None:
                context.add_init_script(init_script)
            pg = context.new_page()
            pg.problems, pg.foreign = [], []
            pg.on("console", lambda m: m.type == "error" and pg.problems.append(m.text))
            pg.on("pageerror", lambda e: pg.problems.append(str(e)))
            if origin is not None:
                pg.on(
                    "request",
                    lambda r: r.url.startswith((origin, "data:", "blob:")) or pg.foreign.append(r.url),
                )
            yield pg
        finally:
            context.close()


@pytest.fixture()
def page(tmp_path):
    with open_page(tmp_path, viewport=(900, 1000), accept_downloads=True) as pg:
        yield pg


def audio_duration(page, selector: str) -> float:
    """The element's `duration` once its metadata has loaded (fails on a media error)."""
    return page.evaluate(
        """(sel) => new Promise((resolve, reject) => {
            const a = document.querySelector(sel);
            if (a.readyState >= 1) return resolve(a.duration);
            a.addEventListener("loadedmetadata", () => resolve(a.duration), { once: true });
            a.addEventListener("error", () => reject(new Error("media error " + (a.error && a.error.code))));
            if (a.preload === "none") a.load();
        })""",
        selector,
    )


def test_generate_play_download_history(page, server, tmp_path):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    expect(page.get_by_test_id("model").locator("option")).to_have_count(2)
    page.get_by_test_id("model").select_option("tiny")
    page.get_by_test_id("prompt").fill("gentle lofi piano")
    page.get_by_test_id("seconds").fill(str(SECONDS))
    page.get_by_test_id("seed").fill("3")
    page.locator("#advanced summary").click()
    expect(page.get_by_test_id("param-top_k")).to_have_value("250")  # the model's default
    page.get_by_test_id("param-top_k").fill("100")
    page.get_by_test_id("generate").click()

    expect(page.get_by_test_id("current")).to_have_attribute("data-status", "done", timeout=60_000)
    expect(page.get_by_test_id("progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(page.get_by_test_id("generate")).to_be_enabled()

    # The player holds the clip: its duration is the requested one (to one sample at 32 kHz).
    assert abs(audio_duration(page, "#player") - SECONDS) <= 1 / 32000 + 1e-6
    download = page.get_by_test_id("download")
    assert download.get_attribute("download") == "tiny_gentle-lofi-piano_3.wav"
    with page.expect_download() as dl:
        download.click()
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == "tiny_gentle-lofi-piano_3.wav" and saved.read_bytes()[:4] == b"RIFF"

    item = page.get_by_test_id("history-item")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("gentle lofi piano")
    expect(item.locator("a[download]")).to_have_attribute(  # the same clip as the result's download
        "href", page.get_by_test_id("download").get_attribute("href")
    )
    assert abs(audio_duration(page, "[data-testid=history-item] audio") - SECONDS) <= 1 / 32000 + 1e-6
    job = page.request.get(f"{server.url}/api/jobs/{item.get_attribute('data-job-id')}").json()
    assert job["params"]["top_k"] == 100 and job["seed"] == 3

    shot = Path(os.environ.get("MLX_AUDIO_SCREENSHOT", tmp_path / "ui.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    assert not page.problems, page.problems

    # The history outlives a reload of the page (this browser session).
    page.reload()
    expect(page.get_by_test_id("history-item")).to_have_count(1)


def test_errors_are_shown(page, server):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    expect(page.get_by_test_id("model").locator("option")).to_have_count(2)
    page.get_by_test_id("generate").click()  # no prompt: refused by the server, shown by the page
    expect(page.get_by_test_id("error")).to_contain_text("prompt is empty")
    expect(page.get_by_test_id("prompt")).to_have_attribute("aria-invalid", "true")

    page.get_by_test_id("prompt").fill("strings")
    page.get_by_test_id("seconds").fill("1")
    page.get_by_test_id("model").select_option("broken")
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("current")).to_have_attribute("data-status", "failed", timeout=60_000)
    expect(page.get_by_test_id("error")).to_contain_text("model.safetensors")
    expect(page.get_by_test_id("result")).to_be_hidden()
    expect(page.get_by_test_id("history-item").filter(has_text="strings")).to_have_count(0)


def test_history_after_a_server_restart(page, musicgen_converted, tmp_path):
    """The page shows the server's history: after a restart of the server the clip is still there, and the
    star and the search box filter it."""
    import httpx
    from playwright.sync_api import expect

    args = ["--model", f"tiny={musicgen_converted}", "--data-dir", str(tmp_path / "data")]
    with serve(args, log_path=tmp_path / "log1") as srv:
        for prompt in ("rainy cello", "bright banjo"):
            body = {"model": "tiny", "prompt": prompt, "seconds": SECONDS}
            job_id = httpx.post(f"{srv.url}/api/jobs", json=body).json()["id"]
        while httpx.get(f"{srv.url}/api/jobs/{job_id}").json()["status"] in ("queued", "running"):
            time.sleep(0.1)
    with serve(args, log_path=tmp_path / "log2") as srv:
        page.goto(srv.url + "/")
        items = page.get_by_test_id("history-item")
        expect(items).to_have_count(2)
        expect(items.first).to_contain_text("bright banjo")  # newest first
        assert abs(audio_duration(page, "[data-testid=history-item] audio") - SECONDS) <= 1 / 32000 + 1e-6
        items.filter(has_text="rainy cello").get_by_test_id("star").click()
        page.get_by_test_id("history-starred").check()
        expect(items).to_have_count(1)
        expect(items.first).to_contain_text("rainy cello")
        page.get_by_test_id("history-starred").uncheck()
        page.get_by_test_id("history-search").fill("banjo")
        expect(items).to_have_count(1)
        expect(items.first).to_contain_text("bright banjo")
        assert not page.problems, page.problems
