"""Tiny random MusicGen checkpoints written by transformers itself (real key names, real files).

The T5 width (32) differs from the decoder width (48) so `enc_to_dec_proj` exists, as in
musicgen-medium/large.
EnCodec keeps the real 32 kHz ratios [8, 5, 4, 4] with tiny widths.
"""

from __future__ import annotations

from pathlib import Path

from .tokenizer import save_tiny_t5_tokenizer


def tiny_configs(audio_channels: int = 1, num_codebooks: int | None = None):
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
        target_bandwidths=[1.2] if audio_channels == 1 else [2.4],
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
