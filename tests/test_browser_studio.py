"""The web studio in a real headless Chromium (as tests/test_browser.py): upload a melody and an init audio
file, select a region on the waveform and inpaint it, make variations, A/B two takes, download FLAC, send a
take to the init audio; waveforms drawn by the shipped wavesurfer.js; no request leaves 127.0.0.1.
Screenshots of the main states go to the folder printed at the end of each test
(MLX_AUDIO_SCREENSHOTS, default: the test's tmp folder)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_browser import open_page

from mlx_audio_generate.server.launch import serve


@pytest.fixture(scope="module")
def server(musicgen_converted, melody_converted, stable_audio_1_0_converted, tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    args = [
        "--model", f"tiny={musicgen_converted}", "--model", f"melody={melody_converted}",
        "--model", f"sa1={stable_audio_1_0_converted}", "--data-dir", str(root / "data"),
    ]  # fmt: skip
    with serve(args, log_path=root / "server.log") as srv:
        yield srv


@pytest.fixture()
def page(server, tmp_path):
    with open_page(tmp_path, server.url, accept_downloads=True) as pg:
        yield pg


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MLX_AUDIO_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def audio_file(path: Path, seconds: float, sample_rate: int, channels: int) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([tone] * channels, axis=1), sample_rate)
    return path


def wait_done(page, timeout: float = 120_000) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_test_id("current")).to_have_attribute("data-status", "done", timeout=timeout)
    expect(page.get_by_test_id("generate")).to_be_enabled(timeout=timeout)


def generate_job(page, url: str, prompt: str, seconds: str) -> tuple:
    """Fill the prompt and seconds (the other fields as the caller set them), generate, wait until done, and
    return the job's history item and its record from the server."""
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("seconds").fill(seconds)
    page.get_by_test_id("generate").click()
    wait_done(page)
    item = page.get_by_test_id("history-item").filter(has_text=prompt)
    return item, page.request.get(f"{url}/api/jobs/{item.get_attribute('data-job-id')}").json()


def test_melody_upload_variations_ab_and_flac(page, server, tmp_path):
    from playwright.sync_api import expect

    out = shots(tmp_path)
    page.goto(server.url + "/")
    page.get_by_test_id("model").select_option("melody")
    page.locator("#advanced summary").click()
    page.get_by_test_id("param-melody-file").set_input_files(
        str(audio_file(tmp_path / "m.wav", 1.0, 32000, 1))
    )
    # the hidden value is the upload's id once the server has it
    expect(page.get_by_test_id("param-melody")).to_have_value(re.compile(r"^[0-9a-f-]{36}$"))
    expect(page.get_by_test_id("param-melody-wave").locator("div")).not_to_have_count(0)
    examples = page.get_by_test_id("example")  # the family's example prompts fill the prompt
    expect(examples).not_to_have_count(0)
    examples.first.click()
    expect(page.get_by_test_id("prompt")).to_have_value(examples.first.inner_text())
    page.get_by_test_id("prompt").fill("hummed tune")
    page.get_by_test_id("seconds").fill("1")
    page.get_by_test_id("seed").fill("11")
    page.get_by_test_id("variations").fill("2")
    page.screenshot(path=str(out / "melody-uploaded.png"), full_page=True)
    page.get_by_test_id("generate").click()
    wait_done(page)
    items = page.get_by_test_id("history-item").filter(has_text="hummed tune")
    expect(items).to_have_count(2)
    jobs = [page.request.get(f"{server.url}/api/jobs/{items.nth(i).get_attribute('data-job-id')}").json()
            for i in range(2)]  # fmt: skip
    assert sorted(j["seed"] for j in jobs) == [11, 12]
    assert all(j["params"]["melody"] == page.get_by_test_id("param-melody").input_value() for j in jobs)
    expect(page.get_by_test_id("player-wave").locator("div")).not_to_have_count(0)
    page.get_by_test_id("spectrogram").check()
    page.get_by_test_id("loop").check()
    assert page.evaluate("document.getElementById('player').loop")

    # A/B: the two takes, then switch plays A from the start
    items.nth(0).get_by_test_id("ab-set-a").click()
    items.nth(1).get_by_test_id("ab-set-b").click()
    expect(page.get_by_test_id("ab-switch")).to_be_enabled()
    page.get_by_test_id("ab-switch").click()
    expect(page.get_by_test_id("ab-playing")).to_have_text("playing A")
    page.get_by_test_id("ab-switch").click()
    expect(page.get_by_test_id("ab-playing")).to_have_text("playing B")
    page.screenshot(path=str(out / "takes-ab.png"), full_page=True)

    with page.expect_download() as dl:
        page.get_by_test_id("download-flac").click()
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.suffix == ".flac" and saved.read_bytes()[:4] == b"fLaC"
    assert sf.info(str(saved)).samplerate == 32000
    assert not page.problems, page.problems
    assert not page.foreign, page.foreign
    print(f"screenshots: {out}")


def test_inpaint_a_region_selected_on_the_waveform(page, server, tmp_path):
    from playwright.sync_api import expect

    out = shots(tmp_path)
    page.goto(server.url + "/")
    page.get_by_test_id("model").select_option("sa1")
    page.locator("#advanced summary").click()
    page.get_by_test_id("param-steps").fill("2")
    clip = audio_file(tmp_path / "in.wav", 0.5, 44100, 2)
    page.get_by_test_id("param-inpaint_audio-file").set_input_files(str(clip))
    wave = page.get_by_test_id("param-inpaint_audio-wave")
    expect(wave.locator("div")).not_to_have_count(0)
    page.wait_for_timeout(500)  # the waveform is drawn once the audio is decoded
    wave.scroll_into_view_if_needed()  # the mouse only reaches what is inside the viewport
    box = wave.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.25 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 * box["width"], y, steps=8)
    page.mouse.move(box["x"] + 0.75 * box["width"], y, steps=8)
    page.mouse.up()
    start = float(page.get_by_test_id("param-mask_start").input_value())
    end = float(page.get_by_test_id("param-mask_end").input_value())
    assert 0.05 < start < end < 0.45, (start, end)
    page.screenshot(path=str(out / "inpaint-region.png"), full_page=True)
    item, job = generate_job(page, server.url, "rain on a tin roof", "0.5")
    assert (job["params"]["mask_start"], job["params"]["mask_end"]) == (start, end)
    got, sr = sf.read(io.BytesIO(page.request.get(server.url + job["audio_url"]).body()), always_2d=True)
    assert sr == 44100 and got.shape == (22050, 2)

    # send the take to the init audio of the next generation
    item.get_by_test_id("use-init_audio").click()
    expect(page.get_by_test_id("param-init_audio")).to_have_value(job["id"])
    page.screenshot(path=str(out / "send-to-init.png"), full_page=True)
    assert not page.problems, page.problems
    assert not page.foreign, page.foreign
    print(f"screenshots: {out}")
