"""MusicGen streaming: chunks arrive during generation and join to exactly the non-streamed result."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.generate import MusicGen

# The tokens are the same either way; the codec decodes each chunk on its own. On the CPU that is exact up to
# a BLAS rounding; MLX-CUDA picks other conv/GEMM algorithms per chunk shape (measured: 8e-5 on an H100).
ATOL = 1e-6 if mx.default_device() == mx.cpu else 2e-4


@pytest.fixture(scope="module")
def model(musicgen_converted):
    return MusicGen.from_pretrained(musicgen_converted)


def test_chunks_join_to_the_non_streamed_result(model):
    args = dict(seconds=2.3, seed=[4, 5])
    ref = model.generate(["lofi piano", "dark techno"], **args)
    steps = []
    chunks = []
    for chunk in model.generate(
        ["lofi piano", "dark techno"], stream=True, progress=lambda d, t: steps.append(d), **args
    ):
        chunks.append((len(steps), chunk))
    assert len(chunks) == 3  # every second (50 frames) and the rest at the end
    # chunks come out while generating, not all at the end
    assert chunks[0][0] < steps[-1]
    out = np.concatenate([c for _, c in chunks], axis=-1)
    # equal up to float rounding: a multithreaded BLAS (OpenBLAS) may round a prefix-length GEMM differently
    np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


def test_stream_continuation_and_chunk_size(model):
    prompt = 0.05 * np.sin(np.arange(8000) / 9.0).astype(np.float32)
    ref = model.generate("lofi", seconds=1.0, seed=1, audio_prompt=prompt)
    chunks = list(model.stream("lofi", seconds=1.0, seed=1, audio_prompt=prompt, chunk_seconds=0.2))
    np.testing.assert_allclose(np.concatenate(chunks, axis=-1), ref, rtol=0, atol=ATOL)
    with pytest.raises(UserError, match="chunk_seconds"):
        next(model.stream("lofi", seconds=1.0, chunk_seconds=0))
    with pytest.raises(UserError, match="one 30 s window"):
        next(model.stream("lofi", seconds=31.0))
