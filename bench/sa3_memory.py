"""Stable Audio 3 memory, stage by stage: a converted folder written from random weights at the released
config (as bench/stable_audio_3.py builds ours), loaded as the CLI loads it, one generation measured.

    python bench/sa3_memory.py --seconds 120 -q                         # real-size small, 4-bit DiT
    python bench/sa3_memory.py --seconds 120 -q --low-memory --steps 1  # T5Gemma released after conditioning
    python bench/sa3_memory.py --tiny                                   # a smoke test (seconds)

Unlike the speed bench (every weight drawn in memory and resident), the weights come from model.safetensors
the way `StableAudio3.from_pretrained` reads them: MLX loads safetensors lazily, so a tensor is read (and
counted) when a computation first needs it. Stages (`on_stage`): load, text (T5Gemma + conditioning + the
DiT's cross-attention keys), sampling (every step), decode (SAME + the copy to the host). Per stage:
`mx.get_peak_memory()` since the stage began (reset at each boundary) and `mx.get_active_memory()` at its end.
The peak of a sampling step does not depend on the step count (each step is evaluated before the next), so
`--steps 1` measures the same peak in an eighth of the time on a CPU. Decode speed: `--same-dtype float16`.
The folder is written once per configuration into `--cache` (default /tmp/sa3_memory) and reused.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import Report, log, mlx_device, mx, mx_dtype, parse_list
from sa3_peer import randomize_mlx, sa3_config, t5gemma_config
from stable_audio_3 import FixedTokens

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests/fixtures/sa3/small/t5gemma-b-b-ul2"  # any T5Gemma tokenizer: the ids are fixed


def build_folder(out: Path, tiny: bool, dtype: str, quantize: bool, chunked: bool) -> Path:
    """A converted folder of random weights at the released small config (what `mlx-audio-convert` writes)."""
    from mlx_audio_generate.converted import write_folder
    from mlx_audio_generate.quantize import model_weights, quantize_model
    from mlx_audio_generate.stable_audio_3.family import FAMILY
    from mlx_audio_generate.stable_audio_3.full_model import SA3Model

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg, t5 = sa3_config("small", tiny, chunked=chunked), t5gemma_config(tiny)
    model = SA3Model(cfg, t5)
    randomize_mlx(model, lambda k: mx_dtype(dtype))
    meta: dict = {"dtype": dtype, "source": "random"}
    if quantize:
        meta["quantization"] = quantize_model(model, FAMILY.quantize, 4, 64)
    files = [f for f in (TOKENIZER / n for n in ("tokenizer.json", "tokenizer_config.json")) if f.is_file()]
    write_folder(tmp, FAMILY.name, {"model_config": cfg, "t5gemma": t5}, model_weights(model), meta, files)
    del model
    tmp.rename(out)
    return out


def part_bytes(model) -> dict[str, float]:
    """GB of each part's parameters (what it holds once every tensor has been read)."""
    from mlx.utils import tree_flatten

    parts = {
        "T5Gemma": model.conditioner.conditioners[model.text_id],
        "DiT": model.dit,
        "SAME encoder": [b.parameters() for b in (*model.same.encoder_blocks, model.same.encoder_proj)],
        "SAME decoder": [b.parameters() for b in (*model.same.decoder_blocks, model.same.decoder_proj)],
    }
    out = {}
    for name, p in parts.items():
        out[name] = sum(v.nbytes for _, v in tree_flatten(p if isinstance(p, list) else p.parameters())) / 1e9
    return out


def measure(folder: Path, args) -> tuple[list[list], dict]:
    from mlx_audio_generate.stable_audio_3.generate import StableAudio3

    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    kwargs = {"low_memory": True} if args.low_memory else {}
    if args.same_dtype != "float32":
        kwargs["same_dtype"] = args.same_dtype
    m = StableAudio3.from_pretrained(folder, **kwargs)
    m.tokenizers = FixedTokens(m.config["t5gemma"]["vocab_size"])
    rows: list[list] = []
    state = {"t": t0, "stage": "load"}

    def close(stage_end: str) -> None:
        mx.synchronize()
        now = time.perf_counter()
        rows.append(
            [state["stage"], now - state["t"], mx.get_peak_memory() / 1e9, mx.get_active_memory() / 1e9]
        )
        log(f"   {rows[-1]}")
        mx.reset_peak_memory()
        state.update(t=time.perf_counter(), stage=stage_end)

    def on_stage(stage: str, done: int, total: int) -> None:
        if done == 0:
            close({"text": "text", "generate": "sampling", "decode": "decode"}[stage])

    t_gen = time.perf_counter()
    out = m.generate(
        "a prompt", seconds=args.seconds, seed=0, on_stage=on_stage, steps=args.steps, headroom_seconds=0.0,
        **({"stream": True} if args.stream else {}),
    )  # fmt: skip
    if args.stream:  # each decoded piece goes to the file as it comes (generate(stream=True))
        import soundfile as sf

        n = 0
        with sf.SoundFile(args.stream, "w", m.sample_rate, m.audio_channels, "FLOAT") as f:
            for piece in out:
                f.write(piece[0].T)
                n += piece.shape[-1]
        audio = np.zeros((1, m.audio_channels, n), np.float32)  # shape only: the audio is in the file
    else:
        audio = out
    close("")
    total = time.perf_counter() - t_gen
    info = {
        "parts": part_bytes(m.model),
        "total": total,
        "finite": bool(np.isfinite(audio).all()),
        "shape": audio.shape,
    }
    return rows, info


def decode_only(folder: Path, seconds: float) -> list[list]:
    """Peak of the SAME decode alone at `seconds`: the whole decode vs the exact tiles (same numbers)."""
    from mlx_audio_generate.codecs.same_tiles import decode_tiles
    from mlx_audio_generate.stable_audio_3.generate import StableAudio3

    m = StableAudio3.from_pretrained(folder)
    same = m.model.same
    n = m.sample_size(seconds, 0.0) // m.model.downsampling_ratio
    z = mx.random.normal((1, same.latent_dim, n), key=mx.random.key(0))
    mx.eval(z, [b.parameters() for b in (*same.decoder_blocks, same.decoder_proj)])
    rows, outs = [], {}
    runs = {"whole decode": lambda: same.decode(z)}
    runs["exact tiles (128)"] = lambda: mx.concatenate(list(decode_tiles(same, z)), axis=-1)
    for name, fn in runs.items():
        mx.synchronize()
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        out = fn()
        mx.eval(out)
        mx.synchronize()
        rows.append([name, n, time.perf_counter() - t0, base / 1e9, mx.get_peak_memory() / 1e9])
        outs[name] = np.array(out)
        del out
        log(f"   {rows[-1]}")
    a, b = outs.values()
    rows.append(["max |tiles - whole|", n, None, None, float(np.abs(a - b).max())])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", default="120", help="comma list of clip lengths")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("-q", "--quantize", action="store_true", help="4-bit DiT (group 64), as `convert -q`")
    ap.add_argument("--chunked-decode", action="store_true",
                    help="the config's pretransform.chunked (the released configs' default)")  # fmt: skip
    ap.add_argument("--low-memory", action="store_true", help="StableAudio3(low_memory=True)")
    ap.add_argument("--same-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--stream", default=None, help="write the audio to this .wav while decoding")
    ap.add_argument("--decode-only", action="store_true", help="the SAME decode alone: whole vs exact tiles")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--cache", default="/tmp/sa3_memory")
    ap.add_argument("--out")
    args = ap.parse_args()
    name = f"{'tiny' if args.tiny else 'small'}-{args.dtype}{'-q4' if args.quantize else ''}"
    name += "-chunked" if args.chunked_decode else ""
    folder = build_folder(Path(args.cache) / name, args.tiny, args.dtype, args.quantize, args.chunked_decode)
    title = (
        f"Stable Audio 3 memory by stage ({name}, steps {args.steps}, SAME {args.same_dtype}"
        f"{', low_memory' if args.low_memory else ''}{', streamed' if args.stream else ''})"
    )
    rep = Report(title, args.out)
    for s in parse_list(args.seconds, float):
        log(f"== {s:g} s")
        if args.decode_only:
            head = ["SAME decode", "latents", "time (s)", "resident before (GB)", "peak (GB)"]
            rep.table(head, decode_only(folder, s), note=f"{s:g} s x1, SAME float32, random latents")
            continue
        rows, info = measure(folder, argparse.Namespace(**{**vars(args), "seconds": s}))
        rep.table(
            ["stage", "time (s)", "peak (GB)", "active at end (GB)"],
            rows,
            note=f"{s:g} s x1, whole generation {info['total']:.2f} s, audio {info['shape']}, finite "
            f"{info['finite']}; weights if all read (GB): "
            + ", ".join(f"{k} {v:.3f}" for k, v in info["parts"].items())
            + f"; overall peak {max(r[2] for r in rows):.3f} GB",
        )
    rep.para(f"MLX device: {mlx_device()}.")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
