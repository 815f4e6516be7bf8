"""Tiny random MusicGen checkpoints written by transformers itself (real key names, real files).

The T5 width (32) differs from the decoder width (48) so `enc_to_dec_proj` exists, as in
musicgen-medium/large.
EnCodec keeps the real 32 kHz ratios [8, 5, 4, 4] with tiny widths.
"""

from __future__ import annotations

from pathlib import Path

from . import require
from .tokenizer import save_tiny_t5_tokenizer


def tiny_configs(audio_channels: int = 1, num_codebooks: int | None = None):
    require("transformers")
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    t5 = T5Config(
        vocab_size=96,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        dropout_rate=0.0,
    )
    encodec = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=64,
        codebook_dim=16,
        # 4 codebooks per channel, as the real 32 kHz codec: stereo checkpoints encode L and R separately.
        target_bandwidths=[1.2],
        num_lstm_layers=2,
        use_causal_conv=False,
        norm_type="weight_norm",
        pad_mode="reflect",
        compress=2,
        residual_kernel_size=3,
        kernel_size=7,
        last_kernel_size=7,
        normalize=False,
    )
    if num_codebooks is None:
        num_codebooks = 4 * audio_channels
    decoder = MusicgenDecoderConfig(
        vocab_size=64,
        max_position_embeddings=512,
        num_hidden_layers=2,
        ffn_dim=96,
        num_attention_heads=4,
        hidden_size=48,
        num_codebooks=num_codebooks,
        audio_channels=audio_channels,
        pad_token_id=64,
        bos_token_id=64,
        dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
    )
    return t5, encodec, decoder


def build_tiny_musicgen(seed: int = 0, audio_channels: int = 1):
    """A randomly initialised MusicgenForConditionalGeneration in eval mode (fp32)."""
    require("torch", "transformers")
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    t5, encodec, decoder = tiny_configs(audio_channels)
    config = MusicgenConfig(text_encoder=t5, audio_encoder=encodec, decoder=decoder)
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(config).eval()
    # Random init leaves LayerNorms at (1, 0) and the LSTM small; perturb every parameter so a
    # transposed or skipped weight cannot hide behind an identity.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        # EnCodec codebooks are zero-initialised buffers: give them distinct random entries.
        for name, buf in model.named_buffers():
            if name.endswith("codebook.embed") or name.endswith("codebook.embed_avg"):
                buf.copy_(torch.randn(buf.shape, generator=g))
    model.generation_config.max_length = 512
    return model


def save_tiny_musicgen(out_dir: str | Path, seed: int = 0, audio_channels: int = 1) -> Path:
    """Write a tiny musicgen checkpoint folder exactly as `save_pretrained` does, with a tokenizer."""
    out_dir = Path(out_dir)
    model = build_tiny_musicgen(seed=seed, audio_channels=audio_channels)
    model.save_pretrained(out_dir)
    save_tiny_t5_tokenizer(out_dir)
    return out_dir


def build_tiny_musicgen_melody(seed: int = 0, audio_channels: int = 1, chroma_length: int = 64):
    """A randomly initialised MusicgenMelodyForConditionalGeneration (fp32, eval), perturbed like
    `build_tiny_musicgen`. chroma_length is below the real 235 so tiling and truncation both show up."""
    require("torch", "transformers")
    import torch
    from transformers import (
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    t5, encodec, decoder = tiny_configs(audio_channels)
    fields = ("vocab_size", "max_position_embeddings", "num_hidden_layers", "ffn_dim", "num_attention_heads")
    fields += ("hidden_size", "num_codebooks", "audio_channels", "pad_token_id", "bos_token_id")
    dec = MusicgenMelodyDecoderConfig(
        **{f: getattr(decoder, f) for f in fields}, dropout=0.0, activation_dropout=0.0, attention_dropout=0.0
    )
    config = MusicgenMelodyConfig(
        text_encoder=t5, audio_encoder=encodec, decoder=dec, num_chroma=12, chroma_length=chroma_length
    )
    torch.manual_seed(seed)
    model = MusicgenMelodyForConditionalGeneration(config).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        for name, buf in model.named_buffers():
            if name.endswith("codebook.embed") or name.endswith("codebook.embed_avg"):
                buf.copy_(torch.randn(buf.shape, generator=g))
        # A strong chroma projection, so that a melody visibly steers the tokens (a test that drops or
        # misplaces the melody then fails on tokens, not only on logits).
        model.audio_enc_to_dec_proj.weight.mul_(25.0)
    model.generation_config.max_length = 512
    return model


def melody_feature_extractor():
    """transformers' MusicgenMelodyFeatureExtractor (real defaults: 12 bins, n_fft 16384, hop 4096, 30 s).

    It builds `torchaudio.transforms.Spectrogram(n_fft, win_length=n_fft, hop_length, power=2, center=True,
    pad=0, normalized=True)`; torchaudio's wheels do not load beside the CPU torch here, so its module gets
    a stand-in that is torchaudio's own `functional.spectrogram` for those arguments: torch.stft with a
    periodic Hann window, reflect padding, divided by the window's L2 norm, then |.|^2. Everything else
    (padding, truncation, chroma filter bank, inf-norm, argmax one-hot) is transformers' code."""
    require("torch", "transformers")
    import types

    import torch
    import transformers.models.musicgen_melody.feature_extraction_musicgen_melody as fe

    class Spectrogram(torch.nn.Module):
        def __init__(self, n_fft, win_length, hop_length, power, center, pad, normalized):
            super().__init__()
            assert (win_length, power, center, pad, normalized) == (n_fft, 2, True, 0, True)
            self.n_fft, self.hop_length = n_fft, hop_length
            self.window = torch.hann_window(win_length)

        def forward(self, waveform):
            shape = waveform.shape
            spec = torch.stft(
                waveform.reshape(-1, shape[-1]),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.n_fft,
                window=self.window,
                center=True,
                pad_mode="reflect",
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            spec = spec.reshape(shape[:-1] + spec.shape[-2:])
            spec = spec / self.window.pow(2.0).sum().sqrt()
            return spec.abs().pow(2.0)

    if not hasattr(fe, "torchaudio"):
        fe.torchaudio = types.SimpleNamespace(transforms=types.SimpleNamespace(Spectrogram=Spectrogram))
    return fe.MusicgenMelodyFeatureExtractor()


def save_tiny_musicgen_melody(out_dir: str | Path, seed: int = 0, audio_channels: int = 1) -> Path:
    """A tiny musicgen_melody folder as `save_pretrained` writes it, + tokenizer and preprocessor config."""
    out_dir = Path(out_dir)
    model = build_tiny_musicgen_melody(seed=seed, audio_channels=audio_channels)
    model.save_pretrained(out_dir)
    save_tiny_t5_tokenizer(out_dir)
    melody_feature_extractor().save_pretrained(out_dir)
    return out_dir
