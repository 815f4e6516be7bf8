"""ACE-Step 1.5's 5 Hz LM planner (mlx_audio_generate.ace_step.planner*) against the original `acestep`
LLMHandler + MetadataConstrainedLogitsProcessor (PyTorch backend, CPU) on the committed tiny Qwen3 causal LM
(tests/fixtures/ace/planner, made by tests/reference/ace_planner.py):
- logits of mlx-lm's Qwen3 on our loader vs transformers' Qwen3ForCausalLM (fp32 rel err <= 1e-4);
- the prompt strings of both phases and their CFG negatives, the `<think>` YAML, the LM-output parser;
- the constrained processor's masked logits, step by step, on the reference's own walks (identical);
- whole greedy two-phase plans (temperature 0: the reference's argmax path, CFG 2.0, top-p 0.9, constraints
  on) token-identical: the metadata and every code.
Each against the committed outputs and, where the reference sources are here, a fresh run of the builder.
Sampled plans (temperature > 0) draw from an MLX key, not torch's generator: they are checked for seeding
and validity only. Then conversion (-q), the integration into AceStep.generate and the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlx_audio_generate.ace_step import planner_run
from mlx_audio_generate.ace_step.planner import Planner, max_new_tokens
from mlx_audio_generate.ace_step.planner_constraints import PlannerConstraints
from mlx_audio_generate.ace_step.planner_model import convert_planner, is_converted_planner
from mlx_audio_generate.ace_step.planner_prompt import (
    codes_negative_prompt,
    codes_prompt,
    cot_prompt,
    format_cot,
    parse_lm_output,
)
from mlx_audio_generate.errors import UserError
from tests.reference import ace, ace_planner
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
LM = FIXTURES / "planner" / ace_planner.LM_FOLDER
TOL = 1e-4


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    live = None if ace.reference_root() is None else ace_planner.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "planner", live), "planner")


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner.from_folder(LM)


def test_logits_match_transformers(ref, planner):
    _, t = ref
    err = rel_err(planner.logits(t["logits.ids"]), t["logits.ref"])
    assert err <= TOL, err


def test_prompts_identical(ref, planner):
    meta, _ = ref
    p, tok = meta["prompts"], planner.tokenizer
    cot = format_cot(meta["cot_examples"][0])
    assert cot_prompt(tok, "upbeat pop", "[Verse]\nHello") == p["cot"]
    assert codes_prompt(tok, "upbeat pop", "[Verse]\nHello", cot) == p["codes"]
    assert codes_negative_prompt(tok) == p["codes_negative"]
    assert codes_negative_prompt(tok, "noisy, distorted") == p["codes_negative_user"]
    assert [format_cot(m) for m in meta["cot_examples"]] == p["cots"]


def test_parser_on_reference_examples(ref):
    meta, _ = ref
    for text, metadata, codes in meta["parse"]:
        assert parse_lm_output(text) == (metadata, codes), text


def _fsm_prompt(tok, phase: str) -> list[int]:
    """drive_fsm's prompt (tests/reference/ace_planner.py)."""
    text = tok.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    return tok(text + ("<think>\nbpm: 1\n</think>\n\n" if phase == "codes" else ""))["input_ids"]


@pytest.mark.parametrize("case", list(ace_planner.FSM_CASES))
def test_constrained_masks_identical(ref, planner, case):
    """Step by step, the same input logits and the same token: the masked logits equal the reference's."""
    _, t = ref
    spec = ace_planner.FSM_CASES[case]
    c = PlannerConstraints(planner.tokenizer)
    c.configure(phase=spec["phase"], target_duration=spec["target_duration"], user_metadata=spec["user"])
    ids = _fsm_prompt(planner.tokenizer, spec["phase"])
    scores, outs = t[f"fsm.{case}.scores"].astype(np.float32), t[f"fsm.{case}.out"].astype(np.float32)
    tokens = t[f"fsm.{case}.tokens"]
    assert len(tokens) > 10
    for i, (s, o, tok) in enumerate(zip(scores, outs, tokens, strict=True)):
        np.testing.assert_array_equal(c(ids, s), o, err_msg=f"step {i} ({c.state.name})")
        c.update_state(int(tok))
        ids.append(int(tok))


def test_constraints_walk_whole_think_block(ref, planner):
    """The free walk reaches the codes (every field written), so the masks above cover each state."""
    _, t = ref
    text = planner.tokenizer.decode(t["fsm.cot_free.tokens"].tolist())
    assert text.startswith(ace_planner.COT_TARGET), text


@pytest.mark.parametrize("case", list(ace_planner.GREEDY))
def test_greedy_plan_token_identical(ref, planner, case):
    meta, t = ref
    spec = ace_planner.GREEDY[case]
    metadata, codes = planner.plan(
        spec["caption"], spec["lyrics"], duration=spec.get("duration"), bpm=spec.get("bpm"),
        keyscale=spec.get("keyscale"), timesignature=spec.get("timesignature"), temperature=0.0,
        cfg_scale=spec.get("cfg", 2.0),
    )  # fmt: skip
    assert metadata == meta["greedy"][case]
    assert codes == t[f"greedy.{case}.codes"].tolist()
    assert len(codes) == int(spec["duration"] * 5)


def test_sampled_plan_seeded(planner):
    """temperature 0.85 (the default): the same seed, the same codes; another seed, others; all valid."""
    kw = dict(duration=10, bpm=70, keyscale="C major", timesignature="4")
    a = planner.plan("lofi", "[Instrumental]", seed=3, **kw)
    b = planner.plan("lofi", "[Instrumental]", seed=3, **kw)
    c = planner.plan("lofi", "[Instrumental]", seed=4, **kw)
    assert a == b and a[1] != c[1]
    assert len(a[1]) == 50 and set(a[1]) <= set(ace_planner.AUDIO_CODES)


def test_max_new_tokens():
    assert max_new_tokens(30, "codes") == 160 and max_new_tokens(5, "codes") == 60
    assert max_new_tokens(None, "cot") == 3500 and max_new_tokens(700, "codes") == 3010


def test_convert_once_and_quantize(tmp_path, planner):
    ids = np.array([[1, 5, 9, 30, 400, 700]], dtype=np.int32)
    ref = np.array(planner.logits(ids))
    out = convert_planner(LM, tmp_path / "p", source=str(LM))
    assert is_converted_planner(out) and (out / "tokenizer.json").is_file()
    assert rel_err(Planner.from_folder(out).logits(ids), ref) == 0.0
    q = convert_planner(LM, tmp_path / "q8", source=str(LM), bits=8, group_size=32)
    config = json.loads((q / "config.json").read_text())
    assert config["mlx_audio_generate_planner"]["quantization"] == {
        "group_size": 32,
        "bits": 8,
        "mode": "affine",
    }
    assert rel_err(Planner.from_folder(q).logits(ids), ref) < 0.05
    with pytest.raises(UserError, match="already exists"):
        convert_planner(LM, tmp_path / "p", source=str(LM))


def test_setting_values(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    assert planner_run.planner_folder("off") is None and planner_run.planner_folder(" OFF ") is None
    raw = tmp_path / "lm"
    shutil.copytree(LM, raw)
    first = planner_run.planner_folder(str(raw))  # a released folder: converted once into the cache
    assert is_converted_planner(first) and first.is_relative_to(tmp_path / "cache")
    assert planner_run.planner_folder(str(raw)) == first and planner_run.planner_folder(str(first)) == first
    with pytest.raises(UserError, match="neither off"):
        planner_run.planner_folder(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no <|audio_code_N|> tokens|not a 5 Hz LM"):
        planner_run.planner_folder(str(FIXTURES / "Qwen3-Embedding-0.6B"))
    with pytest.raises(UserError, match="not a 5 Hz LM"):
        planner_run.planner_folder(str(FIXTURES / "acestep-v15-turbo"))


def test_fill_from_plan():
    v = {"bpm": None, "keyscale": None, "timesignature": None, "language": "unknown"}
    meta = {"bpm": 128, "keyscale": "F# minor", "timesignature": "4", "language": "en", "duration": 45}
    assert planner_run.fill_from_plan(v, None, meta) == 45.0
    assert v == {"bpm": 128, "keyscale": "F# minor", "timesignature": "4", "language": "en"}
    v = {"bpm": 90, "keyscale": "C major", "timesignature": "3", "language": "fr"}
    assert planner_run.fill_from_plan(v, 12.0, {**meta, "bpm": 999}) == 12.0
    assert v == {"bpm": 90, "keyscale": "C major", "timesignature": "3", "language": "fr"}
    v = {"bpm": None, "keyscale": None, "timesignature": None, "language": None}
    assert planner_run.fill_from_plan(v, None, {"bpm": 999, "keyscale": "H dur", "duration": 3}) is None
    assert v["bpm"] is None and v["keyscale"] is None


# -- integration: AceStep.generate(planner=...) and the CLI --------------------------------------------------

PLAN = dict(bpm=70, keyscale="C major", timesignature="4")  # all metas given: phase 2 only (fast)


@pytest.fixture(scope="module")
def turbo(tmp_path_factory):
    from mlx_audio_generate.convert import convert

    return convert(str(FIXTURES / "acestep-v15-turbo"), tmp_path_factory.mktemp("ace-planner") / "turbo")


def test_generate_uses_planner_codes_as_cover_hints(turbo, planner):
    """The planner's codes -> codes_to_hints -> every row's source latents, is_covers True, the cover
    instruction (the handler's LM-codes path); its duration fills unset seconds."""
    import mlx.core as mx

    import mlx_audio_generate as mag

    model = mag.load(str(turbo))
    seen = {}
    cond = model.model.conditioning
    prepare, to_hints = cond.prepare_condition, cond.codes_to_hints

    def spy_prepare(*a):
        seen["src"], seen["covers"], seen["hints"] = np.array(a[6]), np.array(a[8]), np.array(a[10])
        return prepare(*a)

    def spy_hints(codes):
        seen["codes"] = np.array(codes)[0, :, 0].tolist()
        return to_hints(codes)

    cond.prepare_condition, cond.codes_to_hints = spy_prepare, spy_hints
    texts = []
    condition = model.condition
    model.condition = lambda text, *a, **kw: (texts.append(text), condition(text, *a, **kw))[1]
    a = model.generate(["lofi", "lofi"], seconds=4, seed=[1, 2], steps=2, planner=str(LM), **PLAN)
    _, codes = planner.plan("lofi", "[Instrumental]", duration=4, seed=1, **PLAN)
    assert seen["codes"] == codes and len(codes) == 20
    hints = np.array(to_hints(mx.array(codes, dtype=mx.int32)[None, :, None]))
    assert seen["covers"].tolist() == [True, True]
    np.testing.assert_array_equal(seen["src"][:, :100], np.broadcast_to(hints, (2, *hints.shape[1:])))
    np.testing.assert_array_equal(seen["src"][0, 100:], np.array(model.silence(128))[:28])
    np.testing.assert_array_equal(seen["src"], seen["hints"])
    assert texts[0].startswith("# Instruction\nGenerate audio semantic tokens based on the given conditions:")
    assert "- bpm: 70\n" in texts[0] and "- duration: 4 seconds\n" in texts[0]
    model.condition = condition
    cond.prepare_condition, cond.codes_to_hints = prepare, to_hints
    b = model.generate(["lofi", "lofi"], seconds=4, seed=[1, 2], steps=2, **PLAN)
    assert a.shape == b.shape == (2, 2, 4 * 48000) and not np.allclose(a, b)
    with pytest.raises(UserError, match="one caption per call"):
        model.generate(["lofi", "rock"], seconds=4, steps=2, planner=str(LM), **PLAN)


def _run(args, capsys):
    from mlx_audio_generate.cli import generate as generate_cli

    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(x) for x in args])
    return e.value.code, capsys.readouterr().err


def test_cli_planner(turbo, tmp_path, capsys, monkeypatch):
    import soundfile as sf

    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    base = ["--model", "ace_step", "--weights-dir", turbo, "--prompt", "lofi", "--seconds", "4",
            "--steps", "2", "--seed", "3", "--bpm", "70", "--keyscale", "C major", "--timesignature", "4",
            "--quiet"]  # fmt: skip
    code, err = _run([*base, "--planner", LM, "--output", tmp_path / "a.wav"], capsys)
    assert code == 0, err
    audio, sr = sf.read(tmp_path / "a.wav", always_2d=True)
    assert sr == 48000 and audio.shape == (4 * 48000, 2)
    for bad, expect in (
        (tmp_path / "missing", "neither off"),
        (FIXTURES / "Qwen3-Embedding-0.6B", "audio_code"),
        (FIXTURES / "acestep-v15-turbo", "not a 5 Hz LM"),
    ):
        code, err = _run([*base, "--planner", bad, "--output", tmp_path / "b.wav"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert expect in lines[0], lines[0]
        assert not (tmp_path / "b.wav").exists()


def test_planner_convert_cli(tmp_path, capsys, planner):
    from mlx_audio_generate.ace_step import planner_convert

    def run(*args):
        with pytest.raises(SystemExit) as e:
            planner_convert.main([str(a) for a in args])
        return e.value.code, capsys.readouterr()

    code, out = run("--model", LM, "--output", tmp_path / "q4", "-q")
    assert code == 0, out.err
    meta = json.loads((tmp_path / "q4" / "config.json").read_text())["mlx_audio_generate_planner"]
    assert meta["quantization"]["bits"] == 4 and meta["source"] == str(LM)
    _, codes = Planner.from_folder(tmp_path / "q4").plan("lofi", "", duration=4, temperature=0.0, **PLAN)
    assert len(codes) == 20
    for args, expect in (
        (("--model", tmp_path / "none", "--output", tmp_path / "x"), "neither"),
        (("--model", FIXTURES / "Qwen3-Embedding-0.6B", "--output", tmp_path / "x"), "audio_code"),
        (("--model", LM, "--output", tmp_path / "q4"), "already exists"),
        (("--model", LM, "--output", tmp_path / "x", "--q-bits", "4"), "need -q"),
    ):
        code, out = run(*args)
        lines = out.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expect in lines[0], out.err
    assert not (tmp_path / "x").exists()
