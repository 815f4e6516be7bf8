"""Reference outputs of Stable Audio 3's SAME autoencoders (`stable_audio_3`) on the tiny checkpoints.

`make(out_dir)` loads tests/fixtures/sa3/{small,medium} (SAME-S style: chunked attention + midpoint shift,
kernel-3 decoder mapping; SAME-L style: sliding window [1, 1]) with `tests.reference.sa3.load_reference`
and writes `{small,medium}.safetensors` (fp32) into `out_dir` with:

- `audio` (2, 2, 768): a deterministic stereo signal, 6 latents; `latents` = reference pretransform
  `encode(audio)`; `decoded` = `decode(latents)`. `audio_pad` (2, 2, 677): a length that needs padding
  (to the patch and to the attention multiple), `latents_pad`, `decoded_pad`. `decoded_odd` = decode of
  `latents[..., :5]` (SAME-S pads to an even latent count).
- Chunked path (`pretransform.encode` / `decode` with `chunked=True`): `chunk_latents` (1, 16, 21) random
  latents decoded with (chunk, overlap) = (8, 4) and (7, 3) -> `chunk_decoded_8_4`, `chunk_decoded_7_3`;
  `long_latents` (1, 16, 230) with the defaults (128, 32) -> `long_decoded` (three windows, the last
  anchored); `chunk_audio` (1, 2, 21 x 128 + 50) encoded with (8, 4) -> `chunk_encoded`.
- The decoder's noise, injected: the reference decodes `latents` with `mask_noise` 0.01 and its bottleneck's
  `noise_regularize` switched on, its `torch.randn_like` draws recorded (bottleneck first, then each decoder
  block) and saved as scaled: `noise_latent` (1e-3 x running_std x randn), `noise_tokens_{i}` (0.01 x randn
  over the block's new tokens, '(b n) c d' -> 'b (n c) d') -> `noise_decoded`.
- medium only: `sin_decoded` = decode of `latents` by the same weights with decoder `sinusoidal_blocks` [2]
  (the committed config's [1] puts the sin(pi x) gate in no block of a depth-2 decoder; [2] puts it in
  block 1), so the sin gate is checked too. Everything else runs with `mask_noise` 0.
- `deep_chunked` / `deep_window`: two resampling blocks a side (`deep_config`: strides 2 and 4, fixed-stride
  new tokens, identity mappings, chunked + shifted attention or an asymmetric [1, 2] window), random
  weights written as a standalone SAME checkpoint (`*_model.safetensors`, no prefix) + `*_config.json`;
  outputs `audio`/`latents`/`decoded`, `chunk_decoded` / `chunk_encoded` with (4, 2), and the noise keys.

Run: `python -m tests.reference.sa3_same tests/fixtures/sa3/same`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np

from .sa3 import REPO, import_sa3, load_reference

FOLDERS = {"small": REPO / "tests/fixtures/sa3/small", "medium": REPO / "tests/fixtures/sa3/medium"}
NOISE_SEED = 1234


def signal(batch: int, samples: int, seed: int) -> np.ndarray:
    """A deterministic stereo test signal: two sines per channel plus a little seeded noise."""
    t = np.arange(samples, dtype=np.float64)[None, None] / 44100.0
    f = np.array([[[220.0], [331.0]], [[147.0], [523.0]]])[:batch]
    x = 0.4 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 3.7 * f * t + 0.5)
    x += 0.05 * np.random.default_rng(seed).standard_normal(x.shape)
    return x.astype(np.float32)


def _no_mask_noise(decoder) -> None:
    for m in decoder.modules():
        if hasattr(m, "mask_noise"):
            m.mask_noise = 0


def _with_sin(cfg: dict, folder: Path):
    """The reference pretransform of `cfg` with decoder sinusoidal_blocks [2], the checkpoint's weights."""
    from safetensors.torch import load_file
    from stable_audio_3.factory import create_pretransform_from_config

    model_cfg = copy.deepcopy(cfg["model"])
    model_cfg["pretransform"]["config"]["decoder"]["config"]["sinusoidal_blocks"] = [2]
    pt = create_pretransform_from_config(model_cfg, cfg["sample_rate"]).eval()
    state = load_file(str(folder / "model.safetensors"))
    state = {
        k[len("pretransform.model.") :]: v for k, v in state.items() if k.startswith("pretransform.model.")
    }
    pt.model.load_state_dict(state, strict=True)
    _no_mask_noise(pt.model.decoder)
    return pt


def noisy_decode(pt, out: dict, z) -> None:
    """Decode `z` with mask_noise 0.01 and noise_regularize on, recording the reference's own torch draws
    (bottleneck first, then each decoder block's tokens, '(b n) c d' -> 'b (n c) d'), scaled as it scales
    them: `noise_latent`, `noise_tokens_{i}`, `noise_decoded`."""
    import torch

    ae = pt.model
    draws = []
    randn_like = torch.randn_like

    def recording(t, *args, **kwargs):
        draws.append(randn_like(t, *args, **kwargs))
        return draws[-1]

    ae.bottleneck.noise_regularize = True
    for m in ae.decoder.modules():
        if hasattr(m, "mask_noise"):
            m.mask_noise = 0.01
    torch.manual_seed(NOISE_SEED)
    torch.randn_like = recording
    try:
        out["noise_decoded"] = pt.decode(z).numpy()
    finally:
        torch.randn_like = randn_like
        ae.bottleneck.noise_regularize = False
        _no_mask_noise(ae.decoder)
    out["noise_latent"] = (draws[0] * ae.bottleneck.running_std * 1e-3).numpy()
    for i, d in enumerate(draws[1:]):
        out[f"noise_tokens_{i}"] = (0.01 * d).reshape(z.shape[0], -1, d.shape[-1]).numpy()


def run(name: str) -> dict[str, np.ndarray]:
    import torch

    import_sa3()
    model, cfg = load_reference(FOLDERS[name])
    pt = model.pretransform
    pt.eval()
    ae = pt.model
    _no_mask_noise(ae.decoder)
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(7)
    with torch.no_grad():

        def enc(x: np.ndarray, **kw) -> np.ndarray:
            return pt.encode(torch.from_numpy(x), **kw).numpy()

        def dec(z: np.ndarray, **kw) -> np.ndarray:
            return pt.decode(torch.from_numpy(z), **kw).numpy()

        out["audio"] = signal(2, 768, 0)
        out["latents"] = enc(out["audio"])
        out["decoded"] = dec(out["latents"])
        out["audio_pad"] = signal(2, 677, 1)
        out["latents_pad"] = enc(out["audio_pad"])
        out["decoded_pad"] = dec(out["latents_pad"])
        out["decoded_odd"] = dec(np.ascontiguousarray(out["latents"][..., :5]))

        out["chunk_latents"] = rng.standard_normal((1, 16, 21)).astype(np.float32)
        for c, o in ((8, 4), (7, 3)):
            out[f"chunk_decoded_{c}_{o}"] = dec(out["chunk_latents"], chunked=True, chunk_size=c, overlap=o)
        out["long_latents"] = rng.standard_normal((1, 16, 230)).astype(np.float32)
        out["long_decoded"] = dec(out["long_latents"], chunked=True)
        out["chunk_audio"] = signal(1, 21 * 128 + 50, 2)
        out["chunk_encoded"] = ae.encode_audio(
            torch.from_numpy(out["chunk_audio"]), chunked=True, chunk_size=8, overlap=4
        ).numpy()

        noisy_decode(pt, out, torch.from_numpy(out["latents"]))
        if name == "medium":
            out["sin_decoded"] = (
                _with_sin(cfg, FOLDERS[name]).decode(torch.from_numpy(out["latents"])).numpy()
            )
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def deep_config(window: bool) -> dict:
    """A two-block SAME `model.pretransform` (strides 2 and 4, fixed-stride new tokens, identity mappings
    where widths match, k=3 decoder mapping, sin gate in the stride-4 decoder block)."""
    blk = dict(
        channels=16, c_mults=[1, 2], strides=[2, 4], latent_dim=8, transformer_depths=[2, 1],
        differential=True, dyt=True, dim_heads=8, variable_stride=False, ff_mult=2,
    )  # fmt: skip
    enc = dict(in_channels=16, mask_noise=0.0, **blk)
    dec = dict(out_channels=16, mask_noise=0.01, sinusoidal_blocks=[0, 2], conv_mapping=True, **blk)
    for side in (enc, dec):  # window: asymmetric band; else chunks of 16 frames, depth 1 all shifted
        side.update(sliding_window=[1, 2]) if window else side.update(
            chunk_size=16, chunk_midpoint_shift=True
        )
    return {
        "type": "autoencoder",
        "config": {
            "encoder": {"type": "same", "config": enc},
            "decoder": {"type": "same", "config": dec},
            "bottleneck": {
                "type": "softnorm",
                "config": {"dim": 8, "noise_augment_dim": 0, "auto_scale": True},
            },
            "pretransform": {"type": "patched", "config": {"channels": 2, "patch_size": 8}},
            "latent_dim": 8,
            "downsampling_ratio": 64,
            "io_channels": 2,
        },
    }


def run_deep(window: bool, seed: int = 3) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(reference outputs, its random checkpoint without prefix) of `deep_config(window)`."""
    import torch

    import_sa3()
    from stable_audio_3.factory import create_pretransform_from_config

    pt = create_pretransform_from_config({"pretransform": deep_config(window)}, 44100).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # re-draw everything (many layers are zero-initialised), as save_tiny_sa3 does
        for n, p in pt.model.named_parameters():
            if p.numel() == 0:
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / math.sqrt(p.shape[-1]))
            elif n.endswith(("gamma", "alpha", "weight_g", "scaling_factor", "running_std")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    _no_mask_noise(pt.model.decoder)
    state = {k: v.contiguous().numpy() for k, v in pt.model.state_dict().items()}
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(11)
    with torch.no_grad():
        out["audio"] = signal(2, 64 * 8 + 13, 3)
        z = pt.encode(torch.from_numpy(out["audio"]))
        out["latents"] = z.numpy()
        out["decoded"] = pt.decode(z).numpy()
        out["chunk_latents"] = rng.standard_normal((1, 8, 13)).astype(np.float32)
        chunk = torch.from_numpy(out["chunk_latents"])
        out["chunk_decoded"] = pt.decode(chunk, chunked=True, chunk_size=4, overlap=2).numpy()
        out["chunk_audio"] = signal(1, 13 * 64 + 5, 4)
        audio = torch.from_numpy(out["chunk_audio"])
        out["chunk_encoded"] = pt.model.encode_audio(audio, chunked=True, chunk_size=4, overlap=2).numpy()
        noisy_decode(pt, out, z)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, state


def make(out_dir: str | Path) -> Path:
    """Write `{small,medium}.safetensors` and `deep_{chunked,window}[_model].safetensors` (+ `_config.json`)
    (see the module doc) into `out_dir`."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FOLDERS:
        save_file(run(name), str(out_dir / f"{name}.safetensors"))
    for window in (False, True):
        name = "deep_window" if window else "deep_chunked"
        outputs, state = run_deep(window)
        save_file(outputs, str(out_dir / f"{name}.safetensors"))
        save_file(state, str(out_dir / f"{name}_model.safetensors"))
        (out_dir / f"{name}_config.json").write_text(json.dumps(deep_config(window), indent=2) + "\n")
    return out_dir


if __name__ == "__main__":
    make(sys.argv[1] if len(sys.argv) > 1 else REPO / "tests/fixtures/sa3/same")
