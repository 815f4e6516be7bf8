"""Every family's presets (`Family.presets`, declared in its family.py) fit that family's settings schema:
each key is one of its server settings (no audio input, nothing the server does not offer), each value
passes the Setting's own check, the prompt is a prompt and the length fits the family's models."""

from __future__ import annotations

import dataclasses

import pytest

from mlx_audio_generate import registry
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.family import Preset
from mlx_audio_generate.settings import MAX_PROMPT_CHARS

# The longest length every released checkpoint of a family takes, from their configs as the docs cite them
# (real weights are not downloadable here): MusicGen's 30 s window (presets fit one window; longer requests
# are long form); Stable Audio Open small's sample_size 524288 at 44.1 kHz (~11.9 s; 1.0 has ~47.6 s);
# Stable Audio 3 small's 120 s (medium 380 s); ACE-Step 1.5's 10..600 s (constants.DURATION_MIN / MAX).
LONGEST = {"musicgen": 30.0, "stable_audio": 524288 / 44100, "stable_audio_3": 120.0, "ace_step": 600.0}
SHORTEST = {"ace_step": 10.0}


@pytest.mark.parametrize("name", list(registry.families()))
def test_presets_fit_the_family_schema(name):
    fam = registry.get(name)
    assert len(fam.presets) >= 3, f"{name}: the web UI offers a few presets per family"
    schema = {st.name: st for st in fam.settings(None)}
    names = [p.name for p in fam.presets]
    assert len({n.casefold() for n in names}) == len(names), f"{name}: preset names repeat: {names}"
    for preset in fam.presets:
        assert isinstance(preset, Preset)
        checked = preset.check(fam.settings(None), LONGEST[name])
        assert set(checked) == set(preset.settings)
        for key, value in preset.settings.items():
            st = schema[key]
            assert st.server and st.kind != "file", f"{name} / {preset.name}: {key} is not a server setting"
            assert st.check(value) == value, f"{name} / {preset.name}: {key}={value!r} is normalised"
        assert preset.seconds >= SHORTEST.get(name, 0.0), f"{name} / {preset.name}: too short"
        assert 0 < len(preset.prompt) <= MAX_PROMPT_CHARS and len(preset.name) <= 80


def test_every_setting_kind_of_mistake_is_caught():
    """The check the test above relies on refuses each kind of bad preset (so that test can fail)."""
    fam = registry.get("musicgen")
    schema = fam.settings(None)
    good = fam.presets[0]
    bad = [
        (dict(settings={"steps": 8}), "unknown setting 'steps'"),  # another family's
        (dict(settings={"top_k": 0}), "top_k must be an integer >= 1"),
        (dict(settings={"top_k": "250"}), "top_k must be"),
        (dict(settings={"guidance_coef": True}), "guidance_coef must be"),
        (dict(settings={"audio_prompt": "x.wav"}), "unknown setting 'audio_prompt'"),  # an audio input
        (dict(settings={"melody": "x.wav"}), "unknown setting 'melody'"),  # an audio input
        (dict(seconds=31.0), "at most 30"),
        (dict(seconds=0.0), "seconds must be"),
        (dict(prompt="  "), "prompt is empty"),
        (dict(name=" "), "empty name"),
    ]
    for change, words in bad:
        with pytest.raises(UserError, match=words):
            dataclasses.replace(good, **change).check(schema, LONGEST["musicgen"])
    acestep = registry.get("ace_step")
    with pytest.raises(UserError, match="does not fit"):
        dataclasses.replace(acestep.presets[0], settings={"keyscale": "H major"}).check(
            acestep.settings(None)
        )
