"""Presets and live progress in a real headless Chromium (as tests/test_browser.py): a family preset fills the
form; a preset saved from the page survives a reload and a restart of the server and fills the form again
(switching the model); while a job runs the page shows its stages, the decode stage and an estimate of the
time left.

The stage texts are collected by a MutationObserver on the status line, so every text the page showed is
seen, however briefly. The decode stage lasts long enough to be polled because the clip is long: 30 s of
the tiny stereo MusicGen decodes in about 2 s on this CPU (EnCodec runs once per channel), against the
page's 250 ms poll; nothing in the product waits for the test."""

from __future__ import annotations

import pytest
from test_browser import open_page

from mlx_audio_generate import registry
from mlx_audio_generate.server.launch import serve

LONG_SECONDS = 30.0  # the tiny MusicGen's window (its max_seconds)


@pytest.fixture()
def browser(tmp_path):
    with open_page(tmp_path) as pg:  # servers start inside the tests (restarts): no single origin to watch
        yield pg


def server_args(musicgen_converted, musicgen_stereo_converted, data) -> list[str]:
    return [
        "--model", f"tiny={musicgen_converted}", "--model", f"stereo={musicgen_stereo_converted}",
        "--data-dir", str(data),
    ]  # fmt: skip


def option_label(page, value_prefix: str, text: str) -> str:
    """The value of the picker's option whose label starts with `text`."""
    for opt in page.get_by_test_id("preset").locator("option").all():
        if opt.get_attribute("value").startswith(value_prefix) and opt.inner_text().startswith(text):
            return opt.get_attribute("value")
    raise AssertionError(f"no preset option {text!r}")


def test_a_family_preset_fills_the_form(browser, musicgen_converted, musicgen_stereo_converted, tmp_path):
    from playwright.sync_api import expect

    page = browser
    declared = registry.get("musicgen").presets
    with serve(server_args(musicgen_converted, musicgen_stereo_converted, tmp_path / "data")) as srv:
        page.goto(srv.url + "/")
        page.get_by_test_id("model").select_option("tiny")
        picker = page.get_by_test_id("preset")
        expect(picker.locator("optgroup")).to_have_attribute("label", "MusicGen presets")
        expect(picker.locator("option")).to_have_count(len(declared) + 1)  # + "Choose a preset…"
        page.locator("#advanced summary").click()
        page.get_by_test_id("param-top_p").fill("0.5")  # not in the preset: back to the default
        page.get_by_test_id("seed").fill("9")
        folk = next(p for p in declared if p.name.startswith("Acoustic folk"))
        picker.select_option(option_label(page, "f:", folk.name))
        expect(page.get_by_test_id("prompt")).to_have_value(folk.prompt)
        expect(page.get_by_test_id("seconds")).to_have_value(f"{folk.seconds:g}")
        for name, value in folk.settings.items():
            expect(page.get_by_test_id(f"param-{name}")).to_have_value(f"{value:g}")
        expect(page.get_by_test_id("param-top_p")).to_have_value("0")
        expect(page.get_by_test_id("seed")).to_have_value("9")  # a family preset leaves the seed
        expect(page.get_by_test_id("preset-note")).to_contain_text(folk.name)
        expect(page.get_by_test_id("preset-delete")).to_be_hidden()  # only saved presets are deleted
        assert not page.problems, page.problems


def test_a_saved_preset_survives_a_restart(browser, musicgen_converted, musicgen_stereo_converted, tmp_path):
    from playwright.sync_api import expect

    page = browser
    args = server_args(musicgen_converted, musicgen_stereo_converted, tmp_path / "data")
    with serve(args, log_path=tmp_path / "log1") as srv:
        page.goto(srv.url + "/")
        page.get_by_test_id("model").select_option("stereo")
        page.get_by_test_id("prompt").fill("my saved take")
        page.get_by_test_id("seconds").fill("1.5")
        page.get_by_test_id("seed").fill("42")
        page.locator("#advanced summary").click()
        page.get_by_test_id("param-top_k").fill("77")
        page.get_by_test_id("preset-save").click()  # no name: the server's message is shown
        expect(page.get_by_test_id("preset-note")).to_contain_text("name is empty")
        assert [p for p in page.problems if "422" not in p] == []  # Chromium logs the refused request
        page.problems.clear()
        page.get_by_test_id("preset-name").fill("Mine")
        page.get_by_test_id("preset-save").click()
        expect(page.get_by_test_id("preset-note")).to_have_text("Saved “Mine”")
        expect(page.get_by_test_id("preset-delete")).to_be_visible()
        page.reload()
        expect(page.get_by_test_id("preset").locator("option", has_text="Mine · stereo")).to_have_count(1)
    with serve(args, log_path=tmp_path / "log2") as srv:  # a new port: a new origin, no local storage
        page.goto(srv.url + "/")
        expect(page.get_by_test_id("model")).to_have_value("tiny")
        page.get_by_test_id("prompt").fill("something else")
        # the saved presets arrive by their own request: wait for the option before reading the picker
        expect(page.get_by_test_id("preset").locator("option", has_text="Mine · stereo")).to_have_count(1)
        page.get_by_test_id("preset").select_option(option_label(page, "u:", "Mine"))
        expect(page.get_by_test_id("model")).to_have_value("stereo")  # the preset's model
        expect(page.get_by_test_id("prompt")).to_have_value("my saved take")
        expect(page.get_by_test_id("seconds")).to_have_value("1.5")
        expect(page.get_by_test_id("seed")).to_have_value("42")
        page.locator("#advanced summary").click()
        expect(page.get_by_test_id("param-top_k")).to_have_value("77")
        expect(page.get_by_test_id("param-temperature")).to_have_value("1")  # a default
        page.get_by_test_id("generate").click()  # what the preset filled in runs as it was saved
        expect(page.get_by_test_id("current")).to_have_attribute("data-status", "done", timeout=60_000)
        job = page.request.get(f"{srv.url}/api/jobs").json()[0]
        assert (job["model"], job["seed"], job["params"]["top_k"], job["seconds"]) == ("stereo", 42, 77, 1.5)
        page.once("dialog", lambda d: d.accept())
        page.get_by_test_id("preset-delete").click()
        expect(page.get_by_test_id("preset-note")).to_have_text("Deleted “Mine”")
        page.reload()
        expect(page.get_by_test_id("preset").locator("option", has_text="Mine")).to_have_count(0)
        assert page.request.get(f"{srv.url}/api/presets").json() == []
        assert not page.problems, page.problems


# Every text of the status line, as it changes (installed before the page's scripts run).
WATCH_STATUS = """
window.seenStatus = [];
document.addEventListener("DOMContentLoaded", () => {
  const line = document.getElementById("status-line");
  const record = () => {
    const text = `${document.getElementById("status").textContent} | ` +
                 `${document.getElementById("progress-text").textContent}`;
    if (window.seenStatus[window.seenStatus.length - 1] !== text) window.seenStatus.push(text);
  };
  new MutationObserver(record).observe(line, { subtree: true, childList: true, characterData: true });
});
"""


def test_the_page_shows_the_decode_stage_and_an_eta(
    browser, musicgen_converted, musicgen_stereo_converted, tmp_path
):
    from playwright.sync_api import expect

    page = browser
    page.add_init_script(WATCH_STATUS)
    with serve(server_args(musicgen_converted, musicgen_stereo_converted, tmp_path / "data")) as srv:
        page.goto(srv.url + "/")
        page.get_by_test_id("model").select_option("stereo")
        page.get_by_test_id("prompt").fill("warm up")
        page.get_by_test_id("seconds").fill("2")
        page.get_by_test_id("generate").click()  # loads the model; its decode time seeds the next ETA
        expect(page.get_by_test_id("current")).to_have_attribute("data-status", "done", timeout=60_000)
        expect(page.get_by_test_id("generate")).to_be_enabled()
        page.evaluate("window.seenStatus = []")
        page.get_by_test_id("prompt").fill("a long one")
        page.get_by_test_id("seconds").fill(f"{LONG_SECONDS:g}")
        page.get_by_test_id("generate").click()
        # the panel still says "done" (the warm-up) until the new job is polled: wait for its clip
        long_item = page.get_by_test_id("history-item").filter(has_text="a long one")
        expect(long_item).to_have_count(1, timeout=120_000)
        expect(page.get_by_test_id("current")).to_have_attribute("data-status", "done")
        seen = page.evaluate("window.seenStatus")
        job = page.request.get(f"{srv.url}/api/jobs").json()[0]
    assert job["prompt"] == "a long one" and job["status"] == "done", job
    stages = {k: round(b - a, 3) for k, (a, b) in job["stage_times"].items()}
    print(f"stage seconds: {stages}; status texts seen: {len(seen)}")
    generating = [t for t in seen if t.startswith("Generating…") and "step " in t]
    decoding = [t for t in seen if t.startswith("Decoding audio…")]
    assert generating and decoding, seen
    assert any("s left" in t for t in generating), generating  # steps are timed: an ETA
    assert any("s left" in t and "elapsed" in t for t in decoding), decoding  # the last decode's time
    # in order: steps, then the decode, then done
    done = next(i for i, t in enumerate(seen) if t.startswith("Done"))
    assert seen.index(generating[-1]) < seen.index(decoding[0]) < done, seen
    assert not page.problems, page.problems
