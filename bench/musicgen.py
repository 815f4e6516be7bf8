"""MusicGen, ours (MLX) and transformers side by side: decode steps/s and whole clip, real sizes.


    python bench/musicgen.py --models small,medium,large --seconds 10,30 --dtype float16 --out mg.md
    python bench/musicgen.py --models small --seconds 5 --dtype float32 --ref-steps 20   # a CPU run
    python bench/musicgen.py --models small,large --seconds 10 --no-ref --no-compiled --clip-modes eager \
        --batches 1 --out mg.md          # ours only, short (~1 min on an H100): op count, steps/s, 10 s clip
    BENCH_PKG_ROOT=/path/to/old/checkout python bench/musicgen.py ...   # the same for another commit

Whole clip = T5 + LM decode (CFG batch 2, top-k 250, guidance 3) + EnCodec decode, after one warm-up.
Decode steps/s are timed over `--steps` steps after 8 warm steps, eager and with `compiled=True`.
transformers `generate` is timed through a stopping criterion called once per step (steps/s); its whole-clip
time is measured for clips up to `--ref-full-max` seconds and otherwise estimated as T5 + steps / (steps/s)
+ EnCodec decode, each measured on the reference itself (marked "est.").
`--tiny` shrinks every model (a smoke test of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from common import (
    Report,
    TorchMem,
    count_ops,
    log,
    mx,
    mx_dtype,
    mx_free,
    mx_peak_gb,
    mx_reset_mem,
    mx_sync,
    parse_list,
    time_steps,
    torch_device,
    torch_free,
    torch_sync,
)

SIZES = {  # decoder: hidden, layers, heads, ffn (the public facebook/musicgen-* configs)
    "small": (1024, 24, 16, 4096),
    "medium": (1536, 48, 24, 6144),
    "large": (2048, 48, 32, 8192),
}
T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
    feed_forward_proj="relu", dropout_rate=0.0,
)  # fmt: skip
ENCODEC_32K = dict(
    sampling_rate=32000, audio_channels=1, hidden_size=128, num_filters=64, num_residual_layers=1,
    upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm", kernel_size=7, last_kernel_size=7,
    residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=False, pad_mode="reflect", compress=2,
    num_lstm_layers=2, trim_right_ratio=1.0, codebook_size=2048, codebook_dim=128, use_conv_shortcut=False,
    target_bandwidths=[2.2], normalize=False, chunk_length_s=None, overlap=None,
)  # fmt: skip
PROMPT_TOKENS = 12
FRAME_RATE = 50
K = 4


def decoder_config(name: str, tiny: bool) -> dict:
    d, n, h, f = SIZES[name]
    if tiny:
        n = 2
    return dict(
        vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=n, ffn_dim=f, num_attention_heads=h,
        hidden_size=d, num_codebooks=K, audio_channels=1, pad_token_id=2048, bos_token_id=2048,
        activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )  # fmt: skip


def t5_config(tiny: bool) -> dict:
    return {**T5_BASE, "num_layers": 1} if tiny else dict(T5_BASE)


def encodec_config(tiny: bool) -> dict:
    return {**ENCODEC_32K, "num_filters": 8, "hidden_size": 128} if tiny else dict(ENCODEC_32K)


def steps_for(seconds: float) -> tuple[int, int]:
    frames = math.ceil(seconds * FRAME_RATE)
    return frames, frames + K - 1


# ---------------------------------------------------------------------------------------------------- ours


def build_ours(name: str, dtype: str, tiny: bool, bits: int = 0):
    from mlx_audio_generate.musicgen.family import FAMILY
    from mlx_audio_generate.musicgen.full_model import MusicGenModel
    from mlx_audio_generate.quantize import quantize_model

    cfg = {
        "text_encoder": t5_config(tiny),
        "decoder": decoder_config(name, tiny),
        "audio_encoder": encodec_config(tiny),
    }
    m = MusicGenModel(cfg)
    m.set_dtype(mx_dtype(dtype))
    m.audio_encoder.set_dtype(mx.float32)  # as MusicGen.from_pretrained: the codec runs in fp32
    if bits:  # as `mlx-audio-convert -q --q-bits bits --q-group-size 64`: the LM linears
        quantize_model(m, FAMILY.quantize, bits, 64)
    mx.eval(m.parameters())
    return m


def text_inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(5, 32000, (batch, PROMPT_TOKENS)).astype(np.int32), np.ones(
        (batch, PROMPT_TOKENS), np.int32
    )


def run_ours_clip(m, batch: int, seconds: float, compiled: bool) -> dict:
    from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_codes

    frames, steps = steps_for(seconds)
    ids, mask = (mx.array(a) for a in text_inputs(batch))
    mx_sync()
    t0 = time.perf_counter()
    states = m.text_encoder(ids, mask)
    mx.eval(states)
    t1 = time.perf_counter()
    codes = generate_codes(m.lm, states, mask, frames, SamplingOptions(), key=0, compiled=compiled)
    mx.eval(codes)
    t2 = time.perf_counter()
    audio = m.audio_encoder.decode(codes)
    mx.eval(audio)
    t3 = time.perf_counter()
    return dict(text=t1 - t0, lm=t2 - t1, codec=t3 - t2, total=t3 - t0, steps_s=steps / (t2 - t1))


def ours_steps_per_s(m, n_steps: int, compiled: bool, warm: int = 8) -> float:
    from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_steps

    ids, mask = (mx.array(a) for a in text_inputs(1))
    states = m.text_encoder(ids, mask)
    frames = n_steps + warm  # enough steps
    gen = generate_steps(m.lm, states, mask, frames, SamplingOptions(), key=0, compiled=compiled)
    return time_steps(gen, n_steps, warm)


def ours_step_ops(m) -> tuple[int, int, dict]:
    """Primitives of one eager decode step (decoder + CFG + top-k sampling) with a KV cache."""
    from mlx_audio_generate.musicgen.model import cross_attention_mask
    from mlx_audio_generate.sampling import sample_tokens

    ids, mask = (mx.array(a) for a in text_inputs(1))
    lm = m.lm
    states, tmask = lm.project_text(m.text_encoder(ids, mask), mask, True)
    dec = lm.decoder
    kv = dec.precompute_cross_kv(states.astype(dec.layer_norm.weight.dtype))
    cmask = cross_attention_mask(tmask)
    cache = dec.make_cache(2, 64)
    col = mx.full((2, K, 1), 2048, dtype=mx.int32)
    mx.eval(kv, cmask, [c.state for c in cache])
    dec(col, kv, cmask, cache, 0, last_only=True)
    mx.eval([c.state for c in cache])
    logits = dec(col, kv, cmask, cache, 1, last_only=True)[:, :, -1].astype(mx.float32)
    logits = logits[1:] + (logits[:1] - logits[1:]) * 3.0
    tok = sample_tokens(logits, mx.random.key(0), 1.0, 250, None)
    return count_ops(tok)


# --------------------------------------------------------------------------------------------- reference


def build_ref(name: str, dtype: str, tiny: bool):
    import torch
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    dev = torch_device()
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    config = MusicgenConfig(
        text_encoder=T5Config(**t5_config(tiny)),
        audio_encoder=EncodecConfig(**encodec_config(tiny)),
        decoder=MusicgenDecoderConfig(**decoder_config(name, tiny)),
    )
    with torch.device(dev):
        model = MusicgenForConditionalGeneration(config).eval()
    model = model.to(tdt)
    model.generation_config.max_length = 4096
    return model, dev


class StepClock:
    """A stopping criterion that never stops: it records the time of each decode step."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        torch_sync()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def steps_per_s(self, skip: int = 4) -> float:
        t = self.times[skip:]
        return (len(t) - 1) / (t[-1] - t[0])


def ref_generate(model, dev, batch: int, steps: int, clock=None):
    import torch
    from transformers import StoppingCriteriaList

    ids, mask = (torch.tensor(a, device=dev, dtype=torch.long) for a in text_inputs(batch))
    kw = {"stopping_criteria": StoppingCriteriaList([clock])} if clock else {}
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=3.0, top_k=250,
            max_new_tokens=steps, **kw,
        )  # fmt: skip
    torch_sync()
    return out


def ref_parts(model, dev, batch: int, frames: int) -> tuple[float, float]:
    """(T5 time, EnCodec decode time of `frames` frames) on the reference."""
    import torch

    ids, mask = (torch.tensor(a, device=dev, dtype=torch.long) for a in text_inputs(batch))
    codes = torch.randint(0, 2048, (1, batch, K, frames), device=dev)
    with torch.no_grad():
        model.text_encoder(input_ids=ids, attention_mask=mask)
        model.audio_encoder.decode(codes[..., :8], [None])  # warm
        torch_sync()
        t0 = time.perf_counter()
        model.text_encoder(input_ids=ids, attention_mask=mask)
        torch_sync()
        t1 = time.perf_counter()
        model.audio_encoder.decode(codes, [None])
        torch_sync()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,medium,large")
    ap.add_argument("--seconds", default="10,30")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--ref-dtype", default=None, help="dtype of transformers (default: --dtype)")
    ap.add_argument("--steps", type=int, default=200, help="decode steps timed for steps/s")
    ap.add_argument("--ref-steps", type=int, default=100, help="transformers decode steps for steps/s")
    ap.add_argument("--ref-full-max", type=float, default=0.0, help="measure (not estimate) the reference "
                    "whole clip up to this many seconds")  # fmt: skip
    ap.add_argument("--batches", default="1,4", help="ours' batches (first --seconds)")
    ap.add_argument("--no-ref", action="store_true")
    ap.add_argument("--ref-only", action="store_true", help="only the transformers reference")
    ap.add_argument("--no-compiled", action="store_true", help="skip ours with compiled=True")
    ap.add_argument("--clip-modes", default="eager,compiled", help="ours' modes for whole clips")
    ap.add_argument("--q-bits", type=int, default=0, help="ours with the LM quantized (4 or 8, group 64)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    ref_dtype = args.ref_dtype or args.dtype
    seconds_list = parse_list(args.seconds, float)
    q = f", LM {args.q_bits}-bit" if args.q_bits else ""
    rep = Report(f"MusicGen ({args.dtype}{q}{', TINY models' if args.tiny else ''})", args.out)
    step_rows, clip_rows, prof_rows, thr_rows = [], [], [], []
    modes = [False] if args.no_compiled else [False, True]
    for name in parse_list(args.models):
        if args.ref_only:
            modes_here: list[bool] = []
        else:
            modes_here = modes
        log(f"== musicgen-{name}: ours")
        mx_reset_mem()
        m = build_ours(name, args.dtype, args.tiny, args.q_bits) if modes_here else None
        if m is not None:
            log(f"   weights: {mx.get_active_memory() / 1e9:.2f} GB (build peak {mx_peak_gb():.2f} GB)")
        try:
            if m is None:
                raise RuntimeError("ours skipped (--ref-only)")
            total, kernels, counts = ours_step_ops(m)
            rep.para(
                f"musicgen-{name}: one eager decode step (CFG batch 2, top-k sampling) builds {total} "
                f"primitives ({kernels} non-view). Top: "
                + ", ".join(f"{k} {v}" for k, v in list(counts.items())[:14])
            )
        except Exception as e:
            log(f"op count failed: {e!r}")
        for compiled in modes_here:
            label = "compiled" if compiled else "eager"
            try:
                ours_steps_per_s(m, 16, compiled)  # warm-up (traces, kernel caches)
                sps = ours_steps_per_s(m, args.steps, compiled)
                step_rows.append([f"musicgen-{name}", f"ours MLX {args.dtype} ({label})", sps])
                log(f"   {label}: {sps:.1f} steps/s")
            except Exception as e:
                log(f"ours {label} steps/s failed: {e!r}")
        for si, seconds in enumerate(seconds_list):
            for batch in parse_list(args.batches, int) if si == 0 else [1]:
                for compiled in [c for c in modes_here if ("compiled" if c else "eager") in args.clip_modes]:
                    label = "compiled" if compiled else "eager"
                    try:
                        run_ours_clip(m, batch, min(seconds, 0.5), compiled)  # warm-up
                        mx_reset_mem()
                        r = run_ours_clip(m, batch, seconds, compiled)
                        r["mem"] = mx_peak_gb()
                    except Exception as e:
                        log(f"ours clip {seconds}s b{batch} {label} failed: {e!r}")
                        continue
                    log(f"   clip {seconds:g}s batch {batch} {label}: {r}")
                    thr_rows.append([f"musicgen-{name}", f"{seconds:g} s", label, batch, r["total"],
                                     batch * seconds / r["total"]])  # fmt: skip
                    if batch == 1:
                        ours_label = f"ours MLX {args.dtype} ({label})"
                        clip_rows.append([f"musicgen-{name}", f"{seconds:g} s", ours_label, r["total"],
                                          r["mem"]])  # fmt: skip
                        prof_rows.append([f"musicgen-{name}", f"{seconds:g} s", label, r["text"], r["lm"],
                                          r["steps_s"], r["codec"], r["total"]])  # fmt: skip
        del m
        mx_free()
        if args.no_ref:
            write_tables(rep, step_rows, clip_rows, prof_rows, thr_rows)
            continue
        log(f"== musicgen-{name}: transformers")
        try:
            import torch

            tb = time.perf_counter()
            model, dev = build_ref(name, ref_dtype, args.tiny)
            log(f"   built in {time.perf_counter() - tb:.1f} s")
            where = "CUDA" if dev.type == "cuda" else f"CPU {torch.get_num_threads()} threads"
            ref_label = f"transformers torch {ref_dtype} ({where})"
            ref_generate(model, dev, 1, 8)  # warm-up
            clock = StepClock()
            with TorchMem() as mem:
                t0 = time.perf_counter()
                ref_generate(model, dev, 1, args.ref_steps, clock)
                short = time.perf_counter() - t0
            sps = clock.steps_per_s()
            step_rows.append([f"musicgen-{name}", ref_label, sps])
            log(f"   {sps:.1f} steps/s ({args.ref_steps} steps in {short:.2f} s), peak {mem.peak_gb:.2f} GB")
            for seconds in seconds_list:
                frames, steps = steps_for(seconds)
                if seconds <= args.ref_full_max:
                    with TorchMem() as mem2:
                        t0 = time.perf_counter()
                        ref_generate(model, dev, 1, steps)
                        total = time.perf_counter() - t0
                    clip_rows.append([f"musicgen-{name}", f"{seconds:g} s", ref_label, total, mem2.peak_gb])
                else:
                    t5_s, codec_s = ref_parts(model, dev, 1, frames)
                    total = t5_s + steps / sps + codec_s
                    clip_rows.append([f"musicgen-{name}", f"{seconds:g} s", ref_label + ", est.", total,
                                      mem.peak_gb])  # fmt: skip
                log(f"   clip {seconds:g}s: {total:.2f} s")
            del model
        except Exception as e:
            log(f"transformers failed: {e!r}")
            err = f"transformers: failed ({type(e).__name__}: {str(e)[:100]})"
            step_rows.append([f"musicgen-{name}", err, None])
        torch_free()
        write_tables(rep, step_rows, clip_rows, prof_rows, thr_rows)


def write_tables(rep, step_rows, clip_rows, prof_rows, thr_rows) -> None:
    rep.table(["model", "implementation", "decode steps/s"], step_rows, key="steps")
    hdr = ["model", "clip", "implementation", "whole clip (s)", "peak memory (GB)"]
    rep.table(hdr, clip_rows, key="clip",
              note="Whole clip: T5 + LM (CFG, top-k 250) + EnCodec decode, batch 1. Peak memory: MLX "
              "`mx.get_peak_memory()` (weights included); torch on CUDA `max_memory_allocated()`, on CPU the "
              "peak RSS growth during generate (weights not included). 'est.': T5 + steps / (steps/s) + "
              "EnCodec, each measured on the reference (its memory is that of the steps/s run).",
              )  # fmt: skip
    rep.table(["model", "clip", "ours", "T5 (s)", "LM (s)", "LM steps/s", "EnCodec (s)", "total (s)"],
              prof_rows, note="Where ours spends a whole clip (batch 1).", key="prof")  # fmt: skip
    rep.table(["model", "clip", "ours", "batch", "wall (s)", "audio s / s"], thr_rows,
              note="Throughput: batch x clip seconds / wall time.", key="thr")  # fmt: skip


if __name__ == "__main__":
    main()
