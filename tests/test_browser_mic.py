"""The web UI's microphone input, output settings and long-form progress in a real headless Chromium (as
tests/test_browser_studio.py). Chromium's fake microphone (`--use-fake-device-for-media-stream`, allowed by
`--use-fake-ui-for-media-stream`) records a beep: about a second of it is drawn live, decoded by the page
into a WAV (libsndfile cannot read the WebM/Opus that MediaRecorder makes), uploaded, used as the audio
prompt of a loudness-normalised job; the page shows the loudness reached. Where the browser has no
getUserMedia there is no Record button. No request leaves 127.0.0.1 (the CSP stays as it is)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from test_browser import open_page
from test_browser_studio import generate_job, shots, wait_done

from mlx_audio_generate.server.launch import serve

FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def server(musicgen_converted, tmp_path_factory):
    root = tmp_path_factory.mktemp("mic")
    args = ["--model", f"tiny={musicgen_converted}", "--data-dir", str(root / "data")]
    with serve(args, log_path=root / "server.log") as srv:
        yield srv


@contextmanager
def mic_page(server, tmp_path, no_mic: bool = False) -> Iterator[Any]:
    """The page with Chromium's fake microphone, the advanced settings open; `no_mic`: a browser without
    getUserMedia (an old one, or a page not served from a secure origin)."""
    hide = "Object.defineProperty(Navigator.prototype, 'mediaDevices', {get: () => undefined})"
    with open_page(tmp_path, server.url, FAKE_MIC, hide if no_mic else None) as page:
        page.goto(server.url + "/")
        page.locator("#advanced summary").click()
        yield page


def test_record_a_prompt_and_normalise(server, tmp_path):
    from playwright.sync_api import expect

    out = shots(tmp_path)
    with mic_page(server, tmp_path) as page:
        record = page.get_by_test_id("param-audio_prompt-record")
        expect(record).to_have_text("● Record")
        record.click()
        expect(record).to_have_attribute("aria-pressed", "true")
        expect(record).to_have_text(re.compile(r"Stop \(1\.\d s\)"), timeout=10_000)  # ~1 s recorded
        wave = page.get_by_test_id("param-audio_prompt-wave")
        expect(wave.locator("div")).not_to_have_count(0)  # drawn live while recording
        page.screenshot(path=str(out / "recording.png"), full_page=True)
        record.click()
        value = page.get_by_test_id("param-audio_prompt")
        expect(value).to_have_value(re.compile(r"^[0-9a-f-]{36}$"), timeout=10_000)  # uploaded
        expect(record).to_have_text("● Record")
        expect(page.locator(".file-field").filter(has=value)).to_contain_text("recording.wav")
        expect(wave.locator("div")).not_to_have_count(0)  # the uploaded WAV's waveform
        upload_id = value.input_value()
        data = page.request.get(f"{server.url}/api/uploads/{upload_id}/audio").body()
        assert data[:4] == b"RIFF"  # a WAV made in the page, which libsndfile read when it was uploaded
        audio, sr = sf.read(io.BytesIO(data), always_2d=True)
        assert sr == 48000 and 0.9 <= audio.shape[0] / sr <= 2.5, audio.shape
        assert np.abs(audio).max() > 0.01  # the fake microphone's beep, not silence

        page.get_by_test_id("seed").fill("4")
        page.get_by_test_id("param-normalize").fill("-20")
        page.get_by_test_id("param-format").select_option("flac")
        item, job = generate_job(page, server.url, "continue the beep", "3")
        loud = page.get_by_test_id("result-loudness")
        expect(loud).to_be_visible()
        expect(loud).to_have_text(re.compile(r"^loudness: -(19\.[5-9]|20(\.[0-4])?)\d* LUFS \(target -20"))
        expect(item).to_contain_text("LUFS · FLAC")
        assert job["params"]["audio_prompt"] == upload_id and job["normalize"] == -20.0
        assert job["format"] == "flac" and abs(job["loudness"]["output_lufs"] + 20) < 0.5
        assert page.get_by_test_id("download").get_attribute("href").endswith("?format=wav")
        page.screenshot(path=str(out / "recorded-prompt-normalised.png"), full_page=True)
        assert not page.problems, page.problems
        assert not page.foreign, page.foreign


def test_no_record_button_without_getusermedia(server, tmp_path):
    from playwright.sync_api import expect

    with mic_page(server, tmp_path, no_mic=True) as page:
        expect(page.get_by_test_id("param-audio_prompt-file")).to_be_visible()  # upload still offered
        expect(page.get_by_test_id("param-audio_prompt-record")).to_have_count(0)
        assert not page.problems, page.problems


def test_long_form_shows_its_windows(server, tmp_path):
    from playwright.sync_api import expect

    with mic_page(server, tmp_path) as page:
        expect(page.locator("#seconds-hint")).to_have_text(
            "up to 3600 s; beyond 30 s in overlapping 30 s windows"
        )
        assert page.get_by_test_id("seconds").get_attribute("max") == "3600"
        page.get_by_test_id("prompt").fill("a long piece")
        page.get_by_test_id("seconds").fill("45")
        page.get_by_test_id("param-extend_stride").fill("15")
        page.get_by_test_id("generate").click()
        progress = page.get_by_test_id("progress-text")
        expect(progress).to_contain_text("window 1 of 2", timeout=60_000)
        expect(progress).to_contain_text("window 2 of 2", timeout=60_000)
        wait_done(page)
        assert not page.problems, page.problems
