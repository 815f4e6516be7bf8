"""Reference SAME decodes in half precision (`stable_audio_3`, the tiny checkpoints), for ours in fp16 / bf16.

The reference's `StableAudioModel.from_pretrained` runs the whole model in fp16 on CUDA (`model_half`), SAME
included: `sample_diffusion` casts the latents to the pretransform's dtype, decodes, and `generate` casts the
audio to float32. Here the reference pretransform is cast the same way (`.to(dtype)`) and run by torch on the
CPU, which computes float16 / bfloat16 in those dtypes too (results differ from a CUDA fp16 run by rounding).

`make(out_dir)` writes `{small,medium}.safetensors` into `out_dir` with float32 tensors:
- `latents` (2, 16, 6): the reference encode (fp32) of sa3_same's test signal;
- `decoded_fp32`, `decoded_float16`, `decoded_bfloat16`: the reference decode in that precision (mask_noise 0
  on every decoder module, as in sa3_same), the half ones cast back to float32 as `generate` does;
- `long_latents` (1, 16, 40) random latents and `long_decoded_{fp32,float16}`: a longer sequence (many
  chunked-attention rows).

Run: `python -m tests.reference.sa3_same_half tests/fixtures/sa3/same_half`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .sa3 import REPO, import_sa3, load_reference
from .sa3_same import FOLDERS, _no_mask_noise, signal

HALF = ("float16", "bfloat16")


def run(name: str) -> dict[str, np.ndarray]:
    import torch

    import_sa3()
    model, _ = load_reference(FOLDERS[name])
    pt = model.pretransform.eval()
    _no_mask_noise(pt.model.decoder)
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(5)
    with torch.no_grad():
        z = pt.encode(torch.from_numpy(signal(2, 768, 0)))
        out["latents"] = z.numpy()
        out["long_latents"] = rng.standard_normal((1, z.shape[1], 40)).astype(np.float32)
        zl = torch.from_numpy(out["long_latents"])
        out["decoded_fp32"] = pt.decode(z).numpy()
        out["long_decoded_fp32"] = pt.decode(zl).numpy()
        for dt in HALF:
            half = pt.to(getattr(torch, dt))
            out[f"decoded_{dt}"] = half.decode(z.to(half_dtype(half))).to(torch.float32).numpy()
            if dt == "float16":
                out["long_decoded_float16"] = half.decode(zl.to(torch.float16)).to(torch.float32).numpy()
            pt = half.to(torch.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def half_dtype(pt):
    """`sample_diffusion`'s cast: the pretransform's parameter dtype."""
    return next(pt.parameters()).dtype


def make(out_dir: str | Path) -> Path:
    """Write `{small,medium}.safetensors` (see the module doc) into `out_dir`."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FOLDERS:
        save_file(run(name), str(out_dir / f"{name}.safetensors"))
    return out_dir


if __name__ == "__main__":
    make(sys.argv[1] if len(sys.argv) > 1 else REPO / "tests/fixtures/sa3/same_half")
