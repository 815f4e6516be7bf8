"""Stable Audio 3 LoRA parity: our `stable_audio_3.lora` (merged and unmerged) vs the reference's
`load_and_apply_loras` + `set_lora_strength` + per-LoRA sigma interval / layer filter, fp32, on the tiny
checkpoints (small: plain DiT, medium: differential).

The adapter files are made by the reference's own LoRA code (`tests.reference.sa3_lora`: every adapter type,
include / exclude filters, legacy "dora" with 1D and 2D magnitudes, a .ckpt, -XS bases from an SVD at load and
from a svd_bases_path file, two stacked adapters with different strengths, an interval + layer filter), random
non-zero tensors so every delta shows. Reference outputs: the committed tests/fixtures/sa3/lora/ and, where
the reference sources are here, a live rerun of the script into a tmp dir (its own adapter files).
The seconds conditioner's Fourier frequencies are injected from the reference (torch's CPU exp is 1 ulp off
on some, see test_sa3_conditioners); everything else is ours.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file, save_file

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio_3 import dit as dit_module
from mlx_audio_generate.stable_audio_3.conditioners import (
    Conditioners,
    ConditioningConfig,
    text_encoder_folder,
)
from mlx_audio_generate.stable_audio_3.dit import SA3DiT, SA3DiTConfig
from mlx_audio_generate.stable_audio_3.lora import LoRALinear, LoRASpec, apply_loras, read_lora, targets
from mlx_audio_generate.text.t5gemma import T5GemmaConfig
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference.parity import SOURCES, reference_outputs, rel_err
from tests.reference.sa3 import REPO, reference_root
from tests.reference.sa3_lora import LORAS, MODELS, SCENARIOS, SECONDS, T_VALUES, lora_file

TOL = 1e-4
FIXTURES = REPO / "tests/fixtures/sa3"
COMMITTED = FIXTURES / "lora"
BY_FILE = {x.file: x for x in LORAS}


def build(name: str) -> tuple[SA3DiT, Conditioners]:
    folder = FIXTURES / name
    cfg = json.loads((folder / "model_config.json").read_text())
    ckpt = Checkpoint(read_tensors(folder))
    dit = SA3DiT(SA3DiTConfig.from_dict(cfg))
    dit.load_weights(list(dit.sanitize(ckpt, "model.model.").items()), strict=True)
    ccfg = ConditioningConfig.from_dict(cfg)
    t5 = {
        c.id: T5GemmaConfig.from_dict(
            json.loads((text_encoder_folder(c, folder) / "config.json").read_text())
        )
        for c in ccfg.text
    }
    conds = Conditioners(ccfg, t5)
    conds.load_weights(list(conds.sanitize(ckpt, "conditioner.conditioners.").items()), strict=False)
    return dit, conds


@pytest.fixture(scope="module")
def ours():
    return {name: build(name) for name in MODELS}


@pytest.fixture(scope="module")
def base_out(ours):
    """(name, arrays) -> our outputs without adapters per t, computed once per set of inputs."""
    cache: dict = {}

    def get(name: str, arrays: dict) -> dict[str, np.ndarray]:
        # the frequencies too: a live run's may differ from the committed ones by an ulp (see below)
        key = tuple(arrays[k].tobytes() for k in ("in.x", "in.prompt", "in.expo_freqs"))
        key = (name, *key)
        if key not in cache:
            cache[key] = {t: np.array(run(*ours[name], arrays, t)[1]) for t in T_VALUES}
        return cache[key]

    return get


@pytest.fixture(scope="module")
def live_dir(tmp_path_factory):
    if reference_root() is None:
        return None
    from tests.reference.sa3_lora import make

    return make(tmp_path_factory.mktemp("sa3_lora"))


@pytest.fixture(params=SOURCES)
def ref(request, live_dir):
    """name -> (folder of its adapter files, reference arrays): committed, or a live run of the reference."""
    base = reference_outputs(request.param, COMMITTED, live_dir)
    return {name: (base / name, load_file(str(base / name / "reference.safetensors"))) for name in MODELS}


def test_live_files_match_committed(ref):
    """The fixture script is deterministic: a live run rebuilds the committed adapter files and inputs exactly
    (the .ckpt / bases.pt are pickles: compared through torch.load(weights_only=True))."""
    import torch

    for name in MODELS:
        folder, arrays = ref[name]
        committed = load_file(str(COMMITTED / name / "reference.safetensors"))
        for key in committed:
            if key == "in.expo_freqs":
                # torch's CPU exp is within 1 ulp, and which ulp depends on the CPU's vector unit (this
                # machine's AVX-512 Xeon and the AMD EPYC that wrote the fixtures differ in 3 of 128)
                np.testing.assert_array_max_ulp(arrays[key], committed[key], maxulp=1)
            elif key.startswith("in."):
                np.testing.assert_array_equal(arrays[key], committed[key])
        for lora in LORAS:
            path = lora_file(folder, lora)
            if lora.ckpt:
                a = torch.load(str(path), weights_only=True)
                b = torch.load(str(lora_file(COMMITTED / name, lora)), weights_only=True)
                assert a["lora_config"] == b["lora_config"]
                assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
            else:
                a, b = load_file(str(path)), load_file(str(lora_file(COMMITTED / name, lora)))
                assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def run(dit: SA3DiT, conds: Conditioners, arrays: dict, t: str, loras=None) -> tuple[mx.array, mx.array]:
    """(seconds embedding, DiT output) as the reference scenario computes them; `loras.activate` first, as the
    reference's DiT forward sets the adapters' interval state before it runs."""
    number = conds.conditioners["seconds_total"]
    number._freqs = mx.array(arrays["in.expo_freqs"])
    if loras is not None:
        loras.activate(float(arrays[f"in.{t}"][0]))
    seconds, _ = number(SECONDS)
    cross = mx.concatenate([mx.array(arrays["in.prompt"]), seconds], axis=1)
    out = dit(mx.array(arrays["in.x"]), mx.array(arrays[f"in.{t}"]), cross, seconds[:, 0])
    return seconds, out


def specs(folder: Path, scenario) -> list:
    out = []
    for i, f in enumerate(scenario.files):
        path = lora_file(folder, BY_FILE[f])
        if scenario.intervals is None:
            out.append((path, scenario.strengths[i]))
        else:
            out.append(LoRASpec(path, scenario.strengths[i], scenario.intervals[i], scenario.filters[i]))
    return out


def bases_path(folder: Path, scenario) -> Path | None:
    return folder / "bases.pt" if any(BY_FILE[f].bases for f in scenario.files) else None


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("name", MODELS)
def test_parity(ours, ref, base_out, name, scenario, merge):
    dit, conds = ours[name]
    folder, arrays = ref[name]
    before = base_out(name, arrays)
    for t in T_VALUES:  # our base model is the reference's
        assert rel_err(mx.array(before[t]), arrays[f"out.base.{t}"]) <= TOL
    loras = apply_loras(
        dit, conds, specs(folder, scenario), merge=merge, svd_bases_path=bases_path(folder, scenario)
    )
    try:
        assert any(isinstance(m, LoRALinear) for _, m in dit.named_modules()) is not merge
        for t in T_VALUES:
            seconds, out = run(dit, conds, arrays, t, loras)
            want = arrays[f"out.{scenario.name}.{t}"]
            assert rel_err(out, want) <= TOL, t
            assert rel_err(seconds, arrays[f"seconds.{scenario.name}"]) <= TOL
            # the adapters matter (a no-op LoRA fails here), except at strength 0 where nothing may change
            change = rel_err(mx.array(want), arrays[f"out.base.{t}"])
            if all(s == 0 for s in scenario.strengths):
                assert change == 0 and np.array_equal(np.array(out), before[t])
            else:
                assert change > 1e-2, t
        if any(s != 0 for s in scenario.strengths) and any(
            k.startswith("conditioners.")
            for f in scenario.files
            for k in read_lora(lora_file(folder, BY_FILE[f])).layers
        ):  # an adapted seconds conditioner changes the seconds embedding
            assert rel_err(mx.array(arrays[f"seconds.{scenario.name}"]), arrays["seconds.base"]) > 1e-2
    finally:
        loras.remove()
    for t in T_VALUES:  # removed: the model is back to its base weights exactly
        assert np.array_equal(np.array(run(dit, conds, arrays, t)[1]), before[t])


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_set_strength_and_interval_state(ours, ref, merge):
    """set_lora_strength after applying = applying at that strength; the interval state follows t."""
    dit, conds = ours["small"]
    folder, arrays = ref["small"]
    loras = apply_loras(dit, conds, [lora_file(folder, BY_FILE["lora_all"])], merge=merge)
    try:
        loras.set_strength(0.7, index=0)
        for t in T_VALUES:
            assert rel_err(run(dit, conds, arrays, t, loras)[1], arrays[f"out.lora_all_s07.{t}"]) <= TOL
        with pytest.raises(UserError):
            loras.set_strength(1.0, index=1)
    finally:
        loras.remove()
    stack = next(s for s in SCENARIOS if s.name == "stack_interval")
    for t in T_VALUES:  # the reference's interval and filter change its output (what activate() must follow)
        assert rel_err(mx.array(arrays[f"out.stack_interval.{t}"]), arrays[f"out.stack.{t}"]) > 1e-2
    loras = apply_loras(dit, conds, specs(folder, stack), merge=merge)
    try:
        assert loras.strengths_at(0.9) == (0.7, 1.3) and loras.strengths_at(0.3) == (0.0, 1.3)
        assert loras.activate(0.9) is True  # the filter switches LoRA 1 off on self_attn / ff layers
        assert loras.activate(0.8) is False
        assert loras.activate(0.3) is True  # LoRA 0 leaves its interval
    finally:
        loras.remove()


def test_targets_are_the_reference_layers(ours, ref):
    """Every Linear / Conv1d the reference parametrizes (lora_all has no filter, so it names all of them) is
    one of our layers, and no other."""
    for name in MODELS:
        dit, conds = ours[name]
        folder, _ = ref[name]
        names = set(read_lora(lora_file(folder, BY_FILE["lora_all"])).layers)
        assert names == set(targets(dit, conds))
        assert "conditioners.seconds_total.embedder.embedding.1" in names and "model.preprocess_conv" in names


def test_compiled_unmerged_follows_strengths(ours, ref, monkeypatch):
    """The mx.compile'd DiT (the GPU default) with unmerged adapters: strength and interval changes are
    arrays in the module state, picked up without a retrace."""
    dit, conds = ours["medium"]
    folder, arrays = ref["medium"]
    stack = next(s for s in SCENARIOS if s.name == "stack_interval")
    monkeypatch.setattr(dit_module, "_on_gpu", lambda: True)
    loras = apply_loras(dit, conds, specs(folder, stack), merge=False)
    try:
        for t in ("hi", "lo", "hi"):
            assert rel_err(run(dit, conds, arrays, t, loras)[1], arrays[f"out.stack_interval.{t}"]) <= TOL
        assert len(dit._jit.fns) == 1
    finally:
        loras.remove()
        monkeypatch.undo()


# -- bad input ---------------------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, config=None, rename=None) -> Path:
    """A copy of an adapter file with another lora_config (None: none at all) and renamed keys."""
    from safetensors import safe_open

    with safe_open(str(src), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {(rename(k) if rename else k): v for k, v in tensors.items()}
    save_file(tensors, str(dst), metadata=None if config is None else {"lora_config": json.dumps(config)})
    return dst


def _one_line_error(dit, conds, loras, match: str, **kw) -> None:
    weights = tree_flatten(dit.parameters()) + tree_flatten(conds.parameters())
    with pytest.raises(UserError, match=match) as e:
        apply_loras(dit, conds, loras, **kw)
    assert "\n" not in str(e.value)
    assert not any(isinstance(m, LoRALinear) for _, m in dit.named_modules())
    after = tree_flatten(dit.parameters()) + tree_flatten(conds.parameters())
    assert len(after) == len(weights) and all(a[1] is b[1] for a, b in zip(after, weights, strict=True))


def test_bad_files(ours, tmp_path):
    dit, conds = ours["small"]
    src = lora_file(COMMITTED / "small", BY_FILE["lora_all"])
    cfg = {"rank": 4, "alpha": 8, "adapter_type": "lora"}
    cases = {
        "unknown LoRA adapter_type": (
            _rewrite(src, tmp_path / "a.safetensors", dict(cfg, adapter_type="vera")),
            None,
        ),
        "no 'lora_config'": (_rewrite(src, tmp_path / "b.safetensors"), None),
        "does not have": (
            _rewrite(src, tmp_path / "c.safetensors", cfg, lambda k: k.replace("layers.1.", "layers.7.")),
            None,
        ),
        "leave out": (_rewrite(src, tmp_path / "d.safetensors", dict(cfg, include=["transformer"])), None),
        "needs": (_rewrite(src, tmp_path / "e.safetensors", dict(cfg, rank=2)), None),
        "not parameters": (
            _rewrite(src, tmp_path / "f.safetensors", dict(cfg, adapter_type="lora-xs")),
            None,
        ),
        "stacked": (
            _rewrite(src, tmp_path / "g.safetensors", cfg, lambda k: k.replace(".weight.0.", ".weight.1.")),
            None,
        ),
        "must be .safetensors": (tmp_path / "h.bin", b"x"),
        "does not exist": (tmp_path / "missing.safetensors", None),
        "not a valid safetensors": (tmp_path / "i.safetensors", b"garbage"),
    }
    for match, (path, content) in cases.items():
        if content is not None:
            path.write_bytes(content)
        _one_line_error(dit, conds, [path], match)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_one_stack_at_a_time(ours, merge):
    """A second apply_loras on an adapted model is refused (merged weights would be adapted twice)."""
    dit, conds = ours["small"]
    path = lora_file(COMMITTED / "small", BY_FILE["lora_xs"])
    loras = apply_loras(dit, conds, [path], merge=merge)
    try:
        with pytest.raises(UserError, match="already applied"):
            apply_loras(dit, conds, [path], merge=merge)
    finally:
        loras.remove()
    apply_loras(dit, conds, [path], merge=merge).remove()  # after remove() it can be applied again
    with pytest.raises(UserError, match="removed"):
        loras.set_strength(0.5)


def test_misaligned_stack_refused(ours):
    """LoRA 1 adapting a layer LoRA 0 leaves out: the reference would load it into slot 1 of a layer that
    has one slot (silently dropped), so it is refused."""
    dit, conds = ours["small"]
    folder = COMMITTED / "small"
    files = [
        lora_file(folder, BY_FILE[f]) for f in ("stack_b", "stack_a")
    ]  # b: layers only; a: all of transformer
    _one_line_error(dit, conds, files, "earlier LoRA")


class _Touch:
    """A pickle payload that creates a marker file when unpickled (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["torch_save", "raw_pickle"])
def test_malicious_ckpt_never_executes(ours, tmp_path, container):
    import torch

    dit, conds = ours["small"]
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "lora_config": _Touch(marker)}
    if container == "torch_save":
        torch.save(payload, str(path))
    else:
        path.write_bytes(pickle.dumps(payload))
    with contextlib.suppress(Exception):  # the payload is live: a plain unpickling runs it (then may fail)
        torch.load(str(path), weights_only=False)
    assert marker.exists()
    marker.unlink()
    _one_line_error(dit, conds, [path], "weights_only")
    assert not marker.exists()
