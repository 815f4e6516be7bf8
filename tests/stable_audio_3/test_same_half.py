"""SAME decode in float16 / bfloat16 (StableAudio3's `same_dtype`) against the reference decoding in the same
precision (tests.reference.sa3_same_half: the reference pretransform cast with `.to(dtype)`, as its CUDA
`model_half` runs it; committed outputs always, a live run when the reference sources are here).

Tolerances, stated honestly: two independent half-precision computations of the same decode differ by
rounding, about as much as either differs from float32. Measured on the tiny checkpoints: the reference's own
fp16 decode is 4.8e-4 / 8.5e-4 (medium / small) from its fp32 decode, ours in fp16 5.6e-4 / 7.6e-4 from the
reference's fp16; bf16 (8 mantissa bits): 3.8e-3 from fp32, ours 4.4e-3 / 5.3e-3 from the reference's bf16.
So fp16 is checked at 2e-3 and bf16 at 1e-2 (relative to the peak), both against the reference in that
precision AND against the reference's fp32 decode (ours in half is as close to fp32 as the reference's half
is). float32 stays the parity default (1e-4, test_same.py); a wrong operation moves these decodes by O(1).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file
from test_same import convert

from mlx_audio_generate.codecs.same_tiles import decode_tiles
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio_3.generate import same_dtype_for
from tests.reference.parity import SOURCES, reference_outputs, rel_err
from tests.reference.sa3 import REPO, reference_root

COMMITTED = REPO / "tests/fixtures/sa3/same_half"
TOL = {"float16": 2e-3, "bfloat16": 1e-2}


@pytest.fixture(scope="module")
def live_dir(tmp_path_factory):
    if reference_root() is None:
        return None
    from tests.reference.sa3_same_half import make

    return make(tmp_path_factory.mktemp("sa3_same_half"))


@pytest.fixture(params=SOURCES)
def source(request, live_dir):
    return reference_outputs(request.param, COMMITTED, live_dir)


def decode(name: str, dtype: str, z: np.ndarray) -> np.ndarray:
    """Ours as generate decodes: weights and latents cast to `dtype`, exact tiles, float32 out."""
    same = convert(name)
    same.set_dtype(getattr(mx, dtype))
    pieces = decode_tiles(same, mx.array(z).astype(getattr(mx, dtype)), 4)
    return np.concatenate([np.array(p.astype(mx.float32)) for p in pieces], axis=-1)


@pytest.mark.parametrize("name", ("small", "medium"))
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_half_decode_matches_the_reference_in_that_precision(source, name, dtype):
    ref = load_file(str(source / f"{name}.safetensors"))
    ours = decode(name, dtype, ref["latents"])
    assert rel_err(ours, ref[f"decoded_{dtype}"]) <= TOL[dtype]
    assert rel_err(ours, ref["decoded_fp32"]) <= TOL[dtype]
    # the half decode is not the fp32 one (the precision really changed)
    assert rel_err(ours, ref["decoded_fp32"]) > 1e-5


@pytest.mark.parametrize("name", ("small", "medium"))
def test_half_decode_of_a_longer_sequence(source, name):
    ref = load_file(str(source / f"{name}.safetensors"))
    ours = decode(name, "float16", ref["long_latents"])
    assert rel_err(ours, ref["long_decoded_float16"]) <= TOL["float16"]
    assert rel_err(ours, ref["long_decoded_fp32"]) <= TOL["float16"]


def test_same_dtype_choice():
    assert same_dtype_for("float16") == mx.float16
    assert same_dtype_for("bfloat16") == mx.bfloat16
    assert same_dtype_for("float32") == mx.float32
    cuda = getattr(mx, "cuda", None)
    on_cuda = mx.default_device().type == mx.gpu and cuda is not None and cuda.is_available()
    assert same_dtype_for(None) == (mx.float16 if on_cuda else mx.float32)
    with pytest.raises(UserError, match="same_dtype must be one of"):
        same_dtype_for("float8")
