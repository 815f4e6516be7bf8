"""Reference outputs of Stable Audio 3's samplers and schedules (`stable_audio_3/inference/sampling.py`,
`distribution_shift.py`) for tests/stable_audio_3/test_sa3_sampling.py.

The sampler maths needs no DiT: a tiny fixed random MLP over (x, t), written here in torch and in the test
in MLX from the weights saved with the outputs, stands in for it. Everything goes through the reference's
own entry point `sample_diffusion` (objective, sampler routing, init-audio mix, `build_schedule`), with the
shift the reference model wrapper builds by default (`ConditionedDiffusionModelWrapper.sampling_dist_shift`)
or from config options (`_create_dist_shift`). Ping-pong's fresh noise: `torch.randn_like` is replaced for
the call by a recorder that draws from a seeded generator, and the draws are saved so the test can inject
them.

    python -m tests.reference.sa3_sampling tests/fixtures/sa3/sampling

writes `sampling.safetensors` (fp32; case list in its metadata) into that folder.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

B, C, T, H = 2, 4, 16, 8
SAMPLERS = ("euler", "rk4", "dpmpp", "pingpong")
STEPS = (1, 3, 8, 50)
INIT_LEVELS = (None, 0.9, 0.5)
# Schedule cases: (config options or None = the wrapper's default, steps, sigma_max, sequence lengths)
SHIFT_OPTIONS = [
    None,
    {"type": "none"},
    {"type": "logsnr", "anchor_length": 2000, "anchor_logsnr": -6.2, "rate": 1.0, "logsnr_end": 2.0},
    {"type": "logsnr", "anchor_length": 500, "anchor_logsnr": -5.0, "rate": 0.5, "logsnr_end": 3.0},
    {"type": "flux", "min_length": 256, "max_length": 4096, "alpha_min": 1.0, "alpha_max": 6.93},
    {"type": "flux", "alpha_min": 3.0, "alpha_max": 3.0},
    {"type": "full"},
    {
        "type": "full",
        "base_shift": 0.3,
        "max_shift": 2.0,
        "min_length": 64,
        "max_length": 1024,
        "use_sine": True,
    },
]
SCHEDULE_STEPS = (1, 8, 50)
SCHEDULE_SIGMAS = (1.0, 0.9, 0.3)
SCHEDULE_LENGTHS = (1, 100, 1000, 6000)


def weights() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(7)
    return {
        "w1": (rng.randn(H, C) / math.sqrt(C)).astype(np.float32),
        "b1": (rng.randn(H, 1) * 0.2).astype(np.float32),
        "wt": (rng.randn(H, 1)).astype(np.float32),
        "w2": (rng.randn(C, H) / math.sqrt(H)).astype(np.float32),
        "b2": (rng.randn(C, 1) * 0.2).astype(np.float32),
    }


def torch_model(w: dict):
    """v(x, t) = w2 tanh(w1 x + b1 + wt t) + b2 cos(2t) - 0.4 x (1 - t); x (B, C, T), t (B,)."""
    import torch

    p = {k: torch.from_numpy(v) for k, v in w.items()}

    def model(x, t, **kwargs):  # sample_diffusion also passes cfg_scale, padding_mask, ...: unused here
        tt = t[:, None, None]
        h = torch.tanh(torch.matmul(p["w1"], x) + p["b1"] + p["wt"] * tt)
        return torch.matmul(p["w2"], h) + p["b2"] * torch.cos(2 * tt) - 0.4 * x * (1 - tt)

    return model


def _run(sampling, model, noise, objective, sampler, steps, init, level, shift, conditioning=None):
    import torch

    drawn: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(1000 + steps)
    real = torch.randn_like

    def randn_like(x, *args, **kwargs):
        drawn.append(torch.randn(x.shape, generator=gen, dtype=x.dtype))
        return drawn[-1]

    seen: list[dict] = []
    calls: list[torch.Tensor] = []

    def recording(x, t, **kwargs):  # the times the model is evaluated at (rk4's clamp shows only here)
        calls.append(t.detach().clone().reshape(-1))
        return model(x, t, **kwargs)

    torch.randn_like = randn_like
    try:
        out = sampling.sample_diffusion(
            recording, noise.clone(), {}, objective, steps, conditioning=conditioning, sample_rate=T,
            use_effective_length_for_schedule=conditioning is not None, dist_shift=shift,
            sampler_type=sampler, init_data=init, init_noise_level=level if level is not None else 1.0,
            callback=seen.append, disable_tqdm=True, decode=False,
        )  # fmt: skip
    finally:
        torch.randn_like = real
    return out, seen, drawn, calls


def make(out_dir: str | Path) -> Path:
    """Run the reference; write `out_dir/sampling.safetensors`; return its path."""
    import torch
    from safetensors.numpy import save_file

    from tests.reference.sa3 import import_sa3

    import_sa3()
    from stable_audio_3.inference import sampling
    from stable_audio_3.models.diffusion import ConditionedDiffusionModelWrapper as Wrapper

    torch.manual_seed(0)
    w = weights()
    model = torch_model(w)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((B, C, T), generator=gen)
    init = torch.randn((B, C, T), generator=gen) * 0.5
    default_shift = Wrapper(torch.nn.Identity(), None, C, T, 1, "rf_denoiser").sampling_dist_shift

    tensors: dict[str, np.ndarray] = {f"weights/{k}": v for k, v in w.items()}
    tensors["noise"], tensors["init"] = noise.numpy(), init.numpy()
    cases: list[dict] = []

    def add(name: str, out, seen, drawn, calls, **meta):
        tensors[f"{name}/out"] = out.numpy()
        tensors[f"{name}/calls"] = torch.stack(calls).numpy()
        # The callback sees each step's clean estimate and the state *before* the step.
        tensors[f"{name}/denoised"] = torch.stack([s["denoised"] for s in seen]).numpy()
        tensors[f"{name}/x"] = torch.stack([s["x"] for s in seen]).numpy()
        if drawn:
            tensors[f"{name}/drawn"] = torch.stack(drawn).numpy()
        cases.append({"name": name, **meta})

    for sampler in SAMPLERS:
        for steps in STEPS:
            for level in INIT_LEVELS:
                name = f"{sampler}-{steps}-{level or 'none'}"
                data = init if level is not None else None
                res = _run(sampling, model, noise, "rf_denoiser", sampler, steps, data, level, default_shift)
                add(name, *res, sampler=sampler, objective="rf_denoiser", steps=steps, level=level)
    # The per-objective default sampler (sampler_type None).
    for objective in ("rf_denoiser", "rectified_flow"):
        res = _run(sampling, model, noise, objective, None, 8, None, None, default_shift)
        add(f"default-{objective}", *res, sampler=None, objective=objective, steps=8, level=None)
    # Generation's path: lengths from seconds_total as a tensor -> one schedule per row (B, steps + 1).
    # rk4 is left out: with a per-row schedule the reference's rk4 loop takes no step (returns its input).
    conditioning = [{"seconds_total": 1.0}, {"seconds_total": 0.5}]
    for sampler in ("euler", "dpmpp", "pingpong"):
        for level in (None, 0.9):
            data = init if level is not None else None
            res = _run(
                sampling, model, noise, "rf_denoiser", sampler, 8, data, level, default_shift, conditioning
            )
            name = f"rows-{sampler}-{level or 'none'}"
            add(name, *res, sampler=sampler, objective="rf_denoiser", steps=8, level=level, rows=True)

    schedules: list[dict] = []
    for k, options in enumerate(SHIFT_OPTIONS):
        shift = default_shift if options is None else Wrapper._create_dist_shift(options)
        for steps in SCHEDULE_STEPS:
            for sigma in SCHEDULE_SIGMAS:
                for n in SCHEDULE_LENGTHS:
                    name = f"schedule/{k}-{steps}-{sigma}-{n}"
                    # Scalar and tensor (generation's) lengths take different float paths in the reference.
                    tensors[f"{name}/scalar"] = sampling.build_schedule(steps, sigma, shift, n).numpy()
                    per_row = sampling.build_schedule(steps, sigma, shift, torch.tensor([n]))
                    tensors[f"{name}/tensor"] = per_row.reshape(-1).numpy()
                    schedules.append(
                        {"name": name, "options": options, "steps": steps, "sigma": sigma, "n": n}
                    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sampling.safetensors"
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"cases": json.dumps(cases), "schedules": json.dumps(schedules)})
    return path


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/sa3/sampling"))
