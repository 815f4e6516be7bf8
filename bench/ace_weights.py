"""Random-weight ACE-Step 1.5 checkpoints for bench/ace_step.py, written once in the RELEASED layout and
shared by every implementation (ours converts them with our converter; the peers load them as upstream does).

    ROOT/acestep-v15-turbo/   config.json, model.safetensors (bf16, the released prefixes), silence_latent.pt
    ROOT/acestep-v15-base/    the same, model_version "base"
    ROOT/vae/                 config.json + diffusion_pytorch_model.safetensors (AutoencoderOobleck, fp32)
    ROOT/Qwen3-Embedding-0.6B/ config.json + model.safetensors (Qwen3Model, bf16) + the committed tiny
                              tokenizer files (tests/fixtures/ace): the bench feeds fixed ids (FixedTokens)

Sizes (`SIZES`): "real" = the released configs (reference README §6.2: 2B DiT 2048 x 24,
Qwen3-Embedding-0.6B 1024 x 28 with its 151,669-token vocabulary, the 48 kHz Oobleck VAE with 128
decoder channels); "small" = the real layer shapes with 4 DiT / 4 Qwen3 layers and a quarter-width VAE (an
affordable CPU comparison);
"tiny" = the committed tiny checkpoints of tests/fixtures/ace, sizes read from their configs (a smoke test
of the script). Shapes come from the reference classes (the upstream AceStep model and transformers'
Qwen3Model built on the meta device; the VAE's diffusers layout from `oobleck_shapes`, checked against
diffusers by tests/bench/test_ace_bench.py); values are drawn straight in the stored dtype with torch.randn
(on the GPU when there is one): no slow fp32 initialisers, no downloads. The silence latent is random too
(15,000 frames, as shipped). Random weights cost what trained ones do.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
from common import ROOT, log

TINY_TOKENIZER = ROOT / "tests" / "fixtures" / "ace" / "Qwen3-Embedding-0.6B"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VARIANTS = ("turbo", "base")
SILENCE_FRAMES = 15000  # 600 s of latents, as shipped (diffusers' AceStepConditionEncoder buffer size)
TEXT_MAX, LYRIC_MAX = 256, 2048  # the handler's tokenizer max_length for the text / lyric prompts

QWEN_REAL = dict(
    vocab_size=151669,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    attention_bias=False,
)
VAE_REAL = dict(
    encoder_hidden_size=128,
    downsampling_ratios=[2, 4, 4, 6, 10],
    channel_multiples=[1, 2, 4, 8, 16],
    decoder_channels=128,
    decoder_input_channels=64,
    audio_channels=2,
    sampling_rate=48000,
)
# AceStepConfig's own defaults are the 2B release (README §6.2); only the variant keys are set for "real"
DIT_REAL: dict = {}
TINY = ROOT / "tests" / "fixtures" / "ace"
# Keys of a saved config that name its file, class or version, not a size (dropped when one is reused).
_NOT_SIZES = {"architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "model_version",
              "is_turbo", "_name_or_path", "_class_name", "_diffusers_version"}  # fmt: skip


def _tiny_sizes() -> dict:
    """The sizes of the committed tiny checkpoints, read from their configs (never a second copy)."""

    def read(name: str) -> dict:
        config = json.loads((TINY / name / "config.json").read_text())
        return {k: v for k, v in config.items() if k not in _NOT_SIZES}

    return {"dit": read("acestep-v15-turbo"), "qwen": read("Qwen3-Embedding-0.6B"), "vae": read("vae")}


SIZES = {
    "real": {"dit": DIT_REAL, "qwen": QWEN_REAL, "vae": VAE_REAL},
    "small": {  # the real layer shapes, fewer layers; the VAE at a quarter of its decoder width
        "dit": dict(
            num_hidden_layers=4,
            layer_types=["sliding_attention", "full_attention"] * 2,
            num_lyric_encoder_hidden_layers=2,
            num_timbre_encoder_hidden_layers=1,
            num_attention_pooler_hidden_layers=1,
        ),
        "qwen": dict(QWEN_REAL, num_hidden_layers=4),
        "vae": dict(VAE_REAL, decoder_channels=32),
    },
    "tiny": _tiny_sizes(),  # the committed tiny checkpoints (tests/reference/ace.py wrote them)
}


def dit_config(size: str, variant: str) -> dict:
    return dict(SIZES[size]["dit"], model_version=variant, is_turbo=variant == "turbo")


# -------------------------------------------------------------------------------------------- fixed tokens


def fixed_ids(n: int, vocab: int, salt: int) -> np.ndarray:
    """n token ids in [4, vocab): the same for every implementation (tokenization is bypassed)."""
    return np.random.default_rng(salt).integers(4, max(5, min(vocab, 151643)), n).astype(np.int32)


class FixedTokens:
    """Stand-in for text.qwen3.Qwen3Tokenizer: a text prompt (max_length 256) becomes `text_tokens` fixed ids,
    a lyric prompt (max_length 2048) `lyric_tokens` fixed ids (a realistic song's lengths; the tiny committed
    tokenizer would split the real prompts into far more tokens than Qwen's BPE does)."""

    def __init__(self, vocab: int, text_tokens: int, lyric_tokens: int):
        self.vocab, self.text_tokens, self.lyric_tokens = vocab, text_tokens, lyric_tokens

    def ids(self, kind: str) -> np.ndarray:
        return (
            fixed_ids(self.text_tokens, self.vocab, 1)
            if kind == "text"
            else fixed_ids(self.lyric_tokens, self.vocab, 2)
        )

    def batch(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.ids("text" if max_length == TEXT_MAX else "lyric")
        ids = np.repeat(row[None], len(texts), axis=0)
        return ids, np.ones_like(ids)


# ------------------------------------------------------------------------------------------ the reference


def find_reference(ref_dir: str | None) -> Path:
    """The upstream folder holding acestep/ (6d467e4): --ref-dir, or ../shared/reference as the tests use."""
    cands = []
    if ref_dir:
        p = Path(ref_dir)
        cands += [p, p / "upstream-6d467e4", p / "ace-step-1.5" / "upstream-6d467e4"]
    else:
        cands.append(ROOT.parent / "shared" / "reference" / "ace-step-1.5" / "upstream-6d467e4")
    for c in cands:
        if (c / "acestep" / "models").is_dir():
            return c.resolve()
    raise FileNotFoundError(
        f"no acestep/models under {cands[0]} (pass --ref-dir: the upstream-6d467e4 folder)"
    )


def import_ace(ref_dir: str | None) -> list[str]:
    """Make upstream's `acestep` importable (transformers 5 lacks modeling_attn_mask_utils; stand-ins for the
    optional loguru / vector_quantize_pytorch when this machine lacks them); returns what was stood in."""
    import sys
    import types

    notes = []
    folder = str(find_reference(ref_dir))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        import transformers.modeling_attn_mask_utils  # noqa: F401
    except ImportError:
        mod = types.ModuleType("transformers.modeling_attn_mask_utils")
        mod._prepare_4d_causal_attention_mask = None
        sys.modules["transformers.modeling_attn_mask_utils"] = mod
    try:
        from loguru import logger

        logger.disable("acestep")  # upstream logs every decode at INFO
    except ImportError:
        import logging

        mod = types.ModuleType("loguru")
        log_ = logging.getLogger("acestep")
        log_.disable = lambda *a, **k: None  # type: ignore[attr-defined]
        log_.enable = lambda *a, **k: None  # type: ignore[attr-defined]
        mod.logger = log_
        sys.modules["loguru"] = mod
        notes.append("loguru missing: a logging stand-in")
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        mod = types.ModuleType("vector_quantize_pytorch")
        mod.ResidualFSQ = StandInResidualFSQ
        sys.modules["vector_quantize_pytorch"] = mod
        notes.append(
            "vector_quantize_pytorch missing: a stand-in ResidualFSQ (its projections and FSQ arithmetic; "
            "upstream's prepare_condition runs it on every call)"
        )
    return notes


def _standin_fsq():
    import torch

    class ResidualFSQ(torch.nn.Module):
        """vector_quantize_pytorch.ResidualFSQ with one quantizer, for a machine without the library: its
        persisted projections and an FSQ forward of the same shape (project_in, tanh bound, round, code
        index, project_out; values not bit-identical to the library's). Upstream's prepare_condition
        tokenizes the source latents on every call (text2music discards the result): the cost is kept."""

        def __init__(self, *, dim: int, levels: list[int], num_quantizers: int = 1, **_):
            super().__init__()
            if num_quantizers != 1:
                raise ValueError("the stand-in ResidualFSQ has one quantizer")
            self.codebook_size = int(np.prod(levels))
            self.project_in = torch.nn.Linear(dim, len(levels))
            self.project_out = torch.nn.Linear(len(levels), dim)
            lv = torch.tensor(levels, dtype=torch.float32)
            self.register_buffer("_levels", lv, persistent=False)
            basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.float32), 0)
            self.register_buffer("_basis", basis, persistent=False)

        def forward(self, x):
            z = self.project_in(x).float()
            half_l = (self._levels - 1) * (1 + 1e-3) / 2
            offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
            bounded = torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset
            half_w = self._levels // 2
            codes = torch.round(bounded) / half_w
            indices = ((codes * half_w + half_w) * self._basis).sum(-1).round().long()
            return self.project_out(codes.to(x.dtype)), indices[..., None]

    return ResidualFSQ


def StandInResidualFSQ(**kwargs):  # noqa: N802 (stands in for a class)
    return _standin_fsq()(**kwargs)


def model_class(variant: str):
    import importlib

    mod = importlib.import_module(f"acestep.models.{variant}.modeling_acestep_v15_{variant}")
    return mod, mod.AceStepConditionGenerationModel


# --------------------------------------------------------------------------------------------- the writer


def oobleck_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """diffusers AutoencoderOobleck's state dict (weight-normed convs as weight_g / weight_v, Snake alpha /
    beta (1, C, 1)) from its config: the layout `OobleckVAE.sanitize_diffusers` reads."""
    out: dict[str, tuple[int, ...]] = {}
    h, io = cfg["encoder_hidden_size"], cfg["audio_channels"]
    mults, ratios = [1, *cfg["channel_multiples"]], cfg["downsampling_ratios"]

    def conv(name: str, cout: int, cin: int, k: int, bias: bool = True, transposed: bool = False) -> None:
        out[f"{name}.weight_g"] = (cin if transposed else cout, 1, 1)
        out[f"{name}.weight_v"] = (cin, cout, k) if transposed else (cout, cin, k)
        if bias:
            out[f"{name}.bias"] = (cout,)

    def snake(name: str, c: int) -> None:
        out[f"{name}.alpha"] = out[f"{name}.beta"] = (1, c, 1)

    def res(name: str, c: int) -> None:
        snake(f"{name}.snake1", c)
        conv(f"{name}.conv1", c, c, 7)
        snake(f"{name}.snake2", c)
        conv(f"{name}.conv2", c, c, 1)

    conv("encoder.conv1", h, io, 7)
    for i, s in enumerate(ratios):
        cin, cout = h * mults[i], h * mults[i + 1]
        for j in range(3):
            res(f"encoder.block.{i}.res_unit{j + 1}", cin)
        snake(f"encoder.block.{i}.snake1", cin)
        conv(f"encoder.block.{i}.conv1", cout, cin, 2 * s)
    snake("encoder.snake1", h * mults[-1])
    conv("encoder.conv2", h, h * mults[-1], 3)  # h = 2 x the latent channels (mean + scale)
    d = cfg["decoder_channels"]
    conv("decoder.conv1", d * mults[-1], cfg["decoder_input_channels"], 7)
    for i, s in enumerate(reversed(ratios)):
        cin, cout = d * mults[len(ratios) - i], d * mults[len(ratios) - i - 1]
        snake(f"decoder.block.{i}.snake1", cin)
        conv(f"decoder.block.{i}.conv_t1", cout, cin, 2 * s, transposed=True)
        for j in range(3):
            res(f"decoder.block.{i}.res_unit{j + 1}", cout)
    snake("decoder.snake1", d)
    conv("decoder.conv2", io, d, 7, bias=False)
    return out


def _draw(shapes: dict[str, tuple], dtype, device: str, seed: int) -> dict:
    """Random tensors in `dtype`: matrices N(0, 0.7 / sqrt(fan_in)) (tests/reference/ace.py's scale), norm
    scales and weight-norm gains 1 + 0.1 N, the rest 0.1 N; copied to the CPU for saving."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("weight_g") or (len(shape) == 1 and ("norm" in name and name.endswith("weight"))):
            t = 1 + 0.1 * torch.randn(shape, generator=g, device=device, dtype=dtype)
        elif len(shape) >= 2 and not name.endswith((".alpha", ".beta")):
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g, device=device, dtype=dtype) * (0.7 / math.sqrt(fan_in))
        else:
            t = 0.1 * torch.randn(shape, generator=g, device=device, dtype=dtype)
        out[name] = t.cpu().contiguous()
    return out


def _meta_shapes(build) -> dict[str, tuple]:
    import torch

    with torch.device("meta"):
        m = build()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt"})


def build_checkpoints(root: Path, size: str, ref_dir: str | None, variants=VARIANTS) -> Path:
    """Write (or reuse) the random released-layout checkpoints for `size` under root/size/: the shared text
    encoder + VAE once, each DiT variant when first asked for (a later run adds the others)."""
    import torch

    out = root / size
    marker = out / "bench_weights.json"
    want = {"size": size, "sizes": SIZES[size], "version": 3}
    fresh = not (marker.is_file() and json.loads(marker.read_text()) == want)
    todo = [v for v in sorted(variants) if fresh or not (out / f"acestep-v15-{v}" / ".bench_done").is_file()]
    if not todo:
        return out
    t0 = time.perf_counter()
    import_ace(ref_dir)
    from acestep.models.common.configuration_acestep_v15 import AceStepConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if fresh:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        from transformers import Qwen3Config, Qwen3Model

        # text encoder (bf16 as stored) + the committed tokenizer files
        te = out / "Qwen3-Embedding-0.6B"
        te.mkdir()
        qcfg = Qwen3Config(**SIZES[size]["qwen"])
        qcfg.architectures = ["Qwen3Model"]
        qcfg.save_pretrained(te)
        _save(_draw(_meta_shapes(lambda: Qwen3Model(qcfg)), torch.bfloat16, dev, 1), te / "model.safetensors")
        for f in TOKENIZER_FILES:
            shutil.copy(TINY_TOKENIZER / f, te / f)
        # VAE (fp32; the release stores 16-bit: the dtype on disk does not change the timed compute)
        vdir = out / "vae"
        vdir.mkdir()
        vcfg = dict(SIZES[size]["vae"], _class_name="AutoencoderOobleck", _diffusers_version="0.42.1")
        (vdir / "config.json").write_text(json.dumps(vcfg, indent=2))
        _save(
            _draw(oobleck_shapes(vcfg), torch.float32, dev, 2), vdir / "diffusion_pytorch_model.safetensors"
        )
        marker.write_text(json.dumps(want))
    # DiTs (bf16, as released) + a silence latent (1, C, 15000)
    for variant in todo:
        mod, cls = model_class(variant)
        cfg = AceStepConfig(**dit_config(size, variant))
        cfg.architectures = ["AceStepConditionGenerationModel"]
        real_fsq = mod.ResidualFSQ
        mod.ResidualFSQ = StandInResidualFSQ  # the real one asserts on meta tensors; same persisted keys
        try:
            shapes = _meta_shapes(lambda cls=cls, cfg=cfg: cls(cfg))
        finally:
            mod.ResidualFSQ = real_fsq
        ddir = out / f"acestep-v15-{variant}"
        for stale in [ddir, *(out / "converted").glob(f"ace-step-1.5-{variant}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        ddir.mkdir()
        cfg.save_pretrained(ddir)
        _save(_draw(shapes, torch.bfloat16, dev, 10 + VARIANTS.index(variant)), ddir / "model.safetensors")
        c = cfg.audio_acoustic_hidden_dim
        g = torch.Generator().manual_seed(5)
        torch.save(0.5 * torch.randn(1, c, SILENCE_FRAMES, generator=g), ddir / "silence_latent.pt")
        (ddir / ".bench_done").write_text("ok")
    log(
        f"   random {size} checkpoints ({', '.join(todo)}) written to {out} in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return out


def convert_ours(ckpt_root: Path, variant: str, dtype: str | None) -> Path:
    """Our converted folder of the variant (our converter, as `mlx-audio-convert`), reused when present."""
    from mlx_audio_generate.convert import convert

    out = ckpt_root / "converted" / f"ace-step-1.5-{variant}-{dtype or 'stored'}"
    marker = out / ".bench_done"
    if marker.is_file():
        return out
    t0 = time.perf_counter()
    convert(str(ckpt_root / f"acestep-v15-{variant}"), out, dtype=dtype, force=True)
    marker.write_text("ok")
    log(f"   converted {variant} ({dtype or 'stored dtype'}) in {time.perf_counter() - t0:.1f} s")
    return out
