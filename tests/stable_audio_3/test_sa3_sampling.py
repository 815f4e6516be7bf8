"""Parity of diffusion/flow.py (with samplers.py's euler / ping-pong / rk4) with Stable Audio 3's
`sample_diffusion`, `build_schedule` and distribution shifts (`stable_audio_3/inference/`).

No DiT: a tiny fixed random MLP over (x, t) is written in torch (tests/reference/sa3_sampling.py) and here in
MLX with the same weights. Both sides start from the same noise (and init latents for audio-to-audio);
ping-pong's per-step `torch.randn_like` draws are recorded on the reference side (randn_like replaced by a
seeded recorder) and injected here through `noise_fn`. Every step's clean estimate, the state before each step
and the output are compared, fp32: relative error max|ours - ref| / max|ref| <= 1e-4.

Reference outputs: the committed tests/fixtures/sa3/sampling/ always; when the reference sources are here
(tests.reference.sa3.reference_root()), also a live run of `make()` into a tmp folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors import safe_open

from mlx_audio_generate.diffusion import flow as F
from mlx_audio_generate.diffusion import samplers as S
from mlx_audio_generate.errors import UserError
from tests.reference.parity import SOURCES, reference_outputs
from tests.reference.sa3 import reference_root

TOL = 1e-4
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sa3" / "sampling" / "sampling.safetensors"
# The README's 8-step values (4 decimals).
README_8 = [1.0, 0.9944, 0.9845, 0.9579, 0.8909, 0.7455, 0.5125, 0.2739, 0.0]


class Ref:
    def __init__(self, path: Path):
        with safe_open(str(path), "numpy") as f:
            self.t = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
        self.cases = json.loads(meta["cases"])
        self.schedules = json.loads(meta["schedules"])
        w = {k.split("/")[1]: mx.array(v) for k, v in self.t.items() if k.startswith("weights/")}

        def model(x: mx.array, t: mx.array) -> mx.array:
            tt = t[:, None, None]
            h = mx.tanh(mx.matmul(w["w1"], x) + w["b1"] + w["wt"] * tt)
            return mx.matmul(w["w2"], h) + w["b2"] * mx.cos(2 * tt) - 0.4 * x * (1 - tt)

        self.model = model


@pytest.fixture(scope="module", params=SOURCES)
def ref(request, tmp_path_factory) -> Ref:

    def live() -> Path:
        from tests.reference.sa3_sampling import make  # torch and the reference: only for the live run

        return make(tmp_path_factory.mktemp("sa3-sampling"))

    return Ref(reference_outputs(request.param, FIXTURE, None if reference_root() is None else live))


def rel(ours, ref: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return float(np.abs(np.array(ours, dtype=np.float64) - r).max() / max(np.abs(r).max(), 1e-30))


def run_case(ref: Ref, case: dict) -> float:
    name = case["name"]
    drawn = ref.t.get(f"{name}/drawn")
    infos: list[S.StepInfo] = []
    calls: list[np.ndarray] = []

    def model(x: mx.array, t: mx.array) -> mx.array:
        calls.append(np.array(t))
        return ref.model(x, t)

    level = case["level"]
    out = F.sample_flow(
        model, mx.array(ref.t["noise"]), case["steps"], objective=case["objective"], sampler=case["sampler"],
        init_data=mx.array(ref.t["init"]) if level is not None else None, init_noise_level=level or 1.0,
        seq_len=[16, 8] if case.get("rows") else None,
        noise_fn=(lambda i, shape: mx.array(drawn[i])) if drawn is not None else None, callback=infos.append,
    )  # fmt: skip
    den, xs = ref.t[f"{name}/denoised"], ref.t[f"{name}/x"]
    assert len(infos) == case["steps"] == len(den)
    # The times the model sees, call by call (rk4's last-stage clamp at 1e-5 shows only here).
    np.testing.assert_allclose(np.stack(calls), ref.t[f"{name}/calls"], rtol=0, atol=2e-7, err_msg=name)
    errs = [rel(out, ref.t[f"{name}/out"])]
    for i, info in enumerate(infos):
        errs.append(rel(info.denoised, den[i]))
        if i + 1 < len(xs):  # ours: state after step i = the reference's state before step i + 1
            errs.append(rel(info.x, xs[i + 1]))
    assert max(errs) <= TOL, (name, errs)
    return max(errs)


# ------------------------------------------------------------------------------------------- schedules


def test_readme_schedule_values():
    t = F.build_schedule(8)
    assert t.dtype == np.float32 and t[0] == 1 and t[-1] == 0
    np.testing.assert_allclose(t, README_8, rtol=0, atol=5e-5)


def test_schedules(ref: Ref):
    worst = 0.0
    for s in ref.schedules:
        shift = F.shift_from_options(s["options"])
        ours = F.build_schedule(s["steps"], s["sigma"], shift, s["n"])
        assert ours.dtype == np.float32 and ours[0] == np.float32(s["sigma"]) and ours[-1] == 0
        for path in ("scalar", "tensor"):
            r = ref.t[f"{s['name']}/{path}"]
            assert ours.shape == r.shape
            # float32 ulps: torch's SIMD linspace/sigmoid/exp; scalar lengths go through float64 there.
            np.testing.assert_allclose(ours, r, rtol=0, atol=2e-6, err_msg=f"{s} {path}")
            worst = max(worst, float(np.abs(ours - r).max()))
    assert worst <= 2e-6


def test_default_shift_is_length_free():
    assert F.shift_from_options(None) == F.DEFAULT_SHIFT == F.LogSNRShift(2000, -6.2, 0.0, 2.0)
    assert F.length_free(F.DEFAULT_SHIFT)
    np.testing.assert_array_equal(F.build_schedule(8, seq_len=[3, 5000]), F.build_schedule(8))


def test_audio_to_audio_schedule_is_not_monotone():
    """The reference re-pins t[0] = sigma_max after the warp; the warp of t[1] lies above it."""
    t = F.build_schedule(8, 0.9)
    assert t[0] == np.float32(0.9) and t[1] > t[0]


def test_schedule_errors():
    with pytest.raises(UserError):
        F.shift_from_options({"type": "cosine"})
    with pytest.raises(UserError):
        F.shift_from_options({"type": "logsnr", "slope": 1})
    with pytest.raises(UserError):
        F.build_schedule(0)
    with pytest.raises(ValueError):
        F.build_schedule(8, shift=F.shift_from_options({"type": "full"}))
    with pytest.raises(UserError):  # rows of different lengths, length-dependent shift
        F.build_schedule(8, shift=F.shift_from_options({"type": "full"}), seq_len=[300, 3000])


# --------------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("sampler", F.SAMPLER_NAMES)
def test_samplers(ref: Ref, sampler: str):
    """Every sampler x steps (1, 3, 8, 50) x (text-to-audio, init audio at 0.9 and 0.5)."""
    cases = [c for c in ref.cases if c["sampler"] == sampler and not c.get("rows")]
    assert len(cases) == 12
    errs = {c["name"]: run_case(ref, c) for c in cases}
    assert max(errs.values()) <= TOL


@pytest.mark.parametrize("objective", ["rf_denoiser", "rectified_flow"])
def test_default_sampler_per_objective(ref: Ref, objective: str):
    case = next(c for c in ref.cases if c["name"] == f"default-{objective}")
    assert F.default_sampler(objective) == {"rf_denoiser": "pingpong", "rectified_flow": "euler"}[objective]
    run_case(ref, case)


def test_per_row_schedules(ref: Ref):
    """Generation's path (lengths from seconds_total -> a (batch, steps + 1) schedule) equals one schedule."""
    cases = [c for c in ref.cases if c.get("rows")]
    assert len(cases) == 6
    for c in cases:
        run_case(ref, c)


def test_sampler_errors():
    noise = mx.zeros((1, 2, 4))
    with pytest.raises(UserError):
        F.sample_flow(lambda x, t: x, noise, 8, objective="v")
    with pytest.raises(UserError):
        F.sample_flow(lambda x, t: x, noise, 8, objective="rf_denoiser", sampler="dpmpp-3m-sde")
    with pytest.raises(UserError):
        F.sample_flow(
            lambda x, t: x, noise, 8, objective="rectified_flow", init_data=noise, init_noise_level=0
        )
    with pytest.raises(ValueError):  # ping-pong needs its noise
        F.sample_flow(lambda x, t: x, noise, 8, objective="rf_denoiser")


def test_pingpong_key_is_deterministic():
    noise = mx.random.normal((1, 2, 4), key=mx.random.key(0))
    a, b = (F.sample_flow(lambda x, t: x * 0.5, noise, 4, objective="rf_denoiser", key=mx.random.key(1))
            for _ in range(2))  # fmt: skip
    assert np.array_equal(np.array(a), np.array(b))
