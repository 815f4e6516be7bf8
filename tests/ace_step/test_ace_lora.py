"""ACE-Step 1.5 adapters (mlx_audio_generate.ace_step.lora) against the reference: PEFT LoRA folders made by
peft and LyCORIS LoKr files made by lycoris-lora on the tiny turbo DiT, applied to the original PyTorch
decoder as the handler applies them (tests/reference/ace_lora.py), fp32:
- one DiT call per case: PEFT (ACE-Step's trainer config; rsLoRA with rank / alpha patterns), LoKr (low-rank
  w2; whole w2 with a low-rank w1), strengths 1 and 0.5, two PEFT adapters at once, LoKr + PEFT; each
  unmerged and merged;
- a whole turbo generation with LoKr + PEFT (the reference's torch noise injected through `draw_noise`);
- the CLI's --lora; bad input (one-line UserError, nothing applied).
Every comparison is against the committed outputs (tests/fixtures/ace/lora) and, where the reference
sources are here, a fresh run of the builder (its adapters rebuilt from the same seeds).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file, save_file

from mlx_audio_generate.ace_step.generate import AceStep
from mlx_audio_generate.ace_step.lora import apply_loras, parse_loras
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from tests.reference import ace, ace_lora
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
COMMITTED = FIXTURES / "lora"
CASES = list(ace_lora.CASES)


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    live = None if ace.reference_root() is None else ace_lora.live
    folder = reference_outputs(request.param, COMMITTED, live)
    return folder, *meta_and_arrays(folder, "lora")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return convert(str(FIXTURES / "acestep-v15-turbo"), tmp_path_factory.mktemp("ace-lora") / "turbo")


@pytest.fixture(scope="module")
def model(weights) -> AceStep:
    return AceStep.from_pretrained(weights)


def dit_call(model: AceStep, arrays: dict, t_case: str) -> mx.array:
    a = {k[3:]: mx.array(v) for k, v in arrays.items() if k.startswith("in.")}
    return model.model.dit(a["x"], a[t_case], a["context"], a["enc"])


def adapters(folder: Path, case: list) -> list[tuple[str, float]]:
    return [(str(folder / name), strength) for name, strength in case]


def test_live_adapters_match_committed(ref):
    """The builder is deterministic: a live run rebuilds the committed adapter files and inputs."""
    folder, _, arrays = ref
    for name in (*ace_lora.PEFT, *ace_lora.LOKR):
        for f in sorted((COMMITTED / name).iterdir()):
            if f.suffix == ".safetensors":
                committed, rebuilt = load_file(str(f)), load_file(str(folder / name / f.name))
                assert set(committed) == set(rebuilt)
                for k in committed:
                    np.testing.assert_array_equal(committed[k], rebuilt[k], err_msg=f"{name}/{k}")
            else:  # peft writes target_modules from a set: its order follows the string hash seed
                configs = [json.loads(p.read_text()) for p in (f, folder / name / f.name)]
                for c in configs:
                    c["target_modules"] = sorted(c["target_modules"])
                assert configs[0] == configs[1]
    committed = load_file(str(COMMITTED / "lora.safetensors"))
    for k in committed:
        if k.startswith("in.") or k == "gen.noise":
            np.testing.assert_array_equal(committed[k], arrays[k], err_msg=k)


@pytest.mark.parametrize("merge", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("case", CASES)
def test_dit_parity(model, ref, case, merge):
    folder, meta, arrays = ref
    expected = arrays[f"out.{case}"]
    base = dit_call(model, arrays, meta["t_case"])
    assert rel_err(base, expected) > 0.1  # the adapters do change the reference's output
    handle = apply_loras(model.model.dit, adapters(folder, meta["cases"][case]), merge=merge)
    try:
        out = dit_call(model, arrays, meta["t_case"])
    finally:
        handle.remove()
    assert rel_err(out, expected) <= TOL
    np.testing.assert_array_equal(np.array(dit_call(model, arrays, meta["t_case"])), np.array(base))


@pytest.mark.parametrize("merge", [False, True], ids=["unmerged", "merged"])
def test_set_strength(model, ref, merge):
    """A strength changed after applying (merged layers re-merged) is the reference at that strength."""
    folder, meta, arrays = ref
    with apply_loras(model.model.dit, [(str(folder / "lokr_a"), 1.0)], merge=merge) as handle:
        assert rel_err(dit_call(model, arrays, meta["t_case"]), arrays["out.lokr_a_1"]) <= TOL
        handle.set_strength(0, 0.5)
        assert rel_err(dit_call(model, arrays, meta["t_case"]), arrays["out.lokr_a_half"]) <= TOL


def test_generation_parity(model, ref):
    folder, meta, arrays = ref
    g = meta["gen"]
    captured = []
    decode = AceStep.decode.__get__(model)

    def spy(latents):
        captured.append(np.array(latents))
        return decode(latents)

    model.draw_noise = lambda seed, shape: mx.array(arrays["gen.noise"])
    model.decode = spy
    try:
        audio = model.generate(
            g["caption"], seconds=g["seconds"], seed=g["seed"], lyrics=g["lyrics"], language=g["language"],
            bpm=g["bpm"], keyscale=g["keyscale"], timesignature=g["timesignature"], steps=g["steps"],
            shift=g["shift"], lora=adapters(folder, meta["cases"][meta["gen_case"]]),
        )  # fmt: skip
    finally:
        del model.draw_noise, model.decode
    assert rel_err(captured[0], arrays["gen.latents"]) <= TOL
    assert rel_err(audio[..., :: meta["audio_stride"]], arrays["gen.audio.strided"]) <= TOL
    assert model.model.dit._adapters_handle is None  # removed after the call


def test_parse_loras():
    specs = parse_loras("a/peft:0.5,b/lokr_weights.safetensors,c:d")
    got = [(str(s.path), s.strength) for s in specs]
    assert got == [("a/peft", 0.5), ("b/lokr_weights.safetensors", 1.0), ("c:d", 1.0)]
    for bad in ("a:1.5", "a:-0.1", "a:nan", "a,,b"):
        with pytest.raises(UserError):
            parse_loras(bad)


# -- bad input ------------------------------------------------------------------------------------------


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(COMMITTED / name, dst)
    return dst


def _edit_config(folder: Path, **changes) -> Path:
    p = folder / "adapter_config.json"
    config = json.loads(p.read_text()) | changes
    p.write_text(json.dumps(config))
    return folder


def _rename_tensor(path: Path, old: str, new: str, meta: dict | None = None) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    t = load_file(str(path))
    t[new] = t.pop(old)
    save_file(t, str(path), metadata=meta if meta is not None else metadata)


def _bad_inputs(tmp_path: Path) -> dict:
    cases = {"missing": (tmp_path / "nope", "does not exist")}
    empty = tmp_path / "empty"
    empty.mkdir()
    cases["no adapter"] = (empty, "not an adapter")
    (tmp_path / "a.bin").write_bytes(b"\x80\x04")
    cases["pickle file"] = (tmp_path / "a.bin", "pickle")
    binary = _copy("peft_a", tmp_path / "bin")
    (binary / "adapter_model.safetensors").rename(binary / "adapter_model.bin")
    cases["pickle weights"] = (binary, "pickle")
    cases["unknown type"] = (
        _edit_config(_copy("peft_a", tmp_path / "t"), peft_type="IA3"),
        "unknown adapter",
    )
    cases["rank"] = (_edit_config(_copy("peft_a", tmp_path / "r"), r=4), "rank")
    cases["untargeted"] = (_edit_config(_copy("peft_a", tmp_path / "u"), target_modules=["q_proj"]), "target")
    absent = _copy("peft_a", tmp_path / "absent")
    w = absent / "adapter_model.safetensors"
    _rename_tensor(w, "base_model.model.layers.0.self_attn.q_proj.lora_A.weight",
                   "base_model.model.layers.9.self_attn.q_proj.lora_A.weight")  # fmt: skip
    _rename_tensor(w, "base_model.model.layers.0.self_attn.q_proj.lora_B.weight",
                   "base_model.model.layers.9.self_attn.q_proj.lora_B.weight")  # fmt: skip
    cases["target not in model"] = (absent, "does not have")
    lokr = _copy("lokr_a", tmp_path / "lk") / "lokr_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(lokr), "np") as f:
        meta = f.metadata()
    config = json.loads(meta["lokr_config"]) | {"linear_dim": 3}
    save_file(load_file(str(lokr)), str(lokr), metadata=meta | {"lokr_config": json.dumps(config)})
    cases["lokr rank"] = (lokr, "mismatch")
    return cases


def test_bad_input_refused(model, tmp_path):
    dit = model.model.dit
    before = {k: np.array(v) for k, v in dit.parameters().items() if isinstance(v, mx.array)}
    for name, (path, expect) in _bad_inputs(tmp_path).items():
        # a good adapter first: a refused second one must leave nothing applied
        with pytest.raises(UserError) as e:
            apply_loras(dit, [(str(COMMITTED / "peft_a"), 1.0), (str(path), 1.0)])
        msg = str(e.value)
        assert expect in msg.lower() and "\n" not in msg, (name, msg)
        assert getattr(dit, "_adapters_handle", None) is None, name
    after = {k: np.array(v) for k, v in dit.parameters().items() if isinstance(v, mx.array)}
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- CLI ------------------------------------------------------------------------------------------------


def _cli(weights: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    args = ["--model", "ace_step", "--weights-dir", weights, "--prompt", "upbeat pop", "--seconds", "4",
            "--seed", "7", "--steps", "3", "--output", out, "--quiet", *extra]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def test_cli_lora_flag(weights, model, tmp_path, capsys):
    spec = f"{COMMITTED / 'lokr_a'}:0.5,{COMMITTED / 'peft_b'}"
    code, err = _cli(weights, tmp_path / "a.wav", capsys, "--lora", spec)
    assert code == 0, err
    audio, _ = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    api = model.generate(["upbeat pop"], seconds=4, seed=[7], steps=3, lora=spec)[0]
    plain = model.generate(["upbeat pop"], seconds=4, seed=[7], steps=3)[0]
    np.testing.assert_allclose(audio.T, api, atol=1e-4)  # the written file is the API's audio
    assert np.abs(api - plain).max() > 1e-3  # the adapters are applied

    code, err = _cli(weights, tmp_path / "b.wav", capsys, "--lora", str(tmp_path / "missing"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "b.wav").exists()


def test_quantized_dit_refused(weights):
    """As the handler refuses LoRA on a quantized model: a quantized DiT layer is not adapted."""
    import mlx.nn as nn

    quantized = AceStep.from_pretrained(weights)
    nn.quantize(quantized.model.dit, group_size=32, bits=4)
    with pytest.raises(UserError, match="unquantized"):
        apply_loras(quantized.model.dit, [(str(COMMITTED / "peft_a"), 1.0)])
