"""The T5 encoder's compiled path (`T5Encoder.compiled`, Stable Audio's default on the GPU), on the CPU: the
transformers parity tests of test_t5.py again with every T5Encoder compiled, and compiled == eager."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.text import t5 as t5_module
from tests.test_t5 import (  # noqa: F401 - collected again here, with the fixture below
    convert,
    folders,
    test_encoder_matches_transformers,
    test_float16_clamp_matches_transformers,
    test_float16_finite_and_close,
    test_float16_with_fp32_wo_matches_transformers,
    test_gated_gelu_matches_transformers,
)


@pytest.fixture(autouse=True)
def compiled_everywhere(monkeypatch):
    init = t5_module.T5Encoder.__init__

    def compiled_init(self, *a, **kw):
        init(self, *a, **kw)
        self.compiled = True

    monkeypatch.setattr(t5_module.T5Encoder, "__init__", compiled_init)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
def test_compiled_equals_eager(folders, dtype):  # noqa: F811 - the imported fixture
    model = convert(folders, "t5")
    model.set_dtype(dtype)
    ids = mx.array(np.random.default_rng(0).integers(5, 90, (2, 11)).astype(np.int32))
    mask = mx.array(np.array([[1] * 11, [1] * 6 + [0] * 5], np.int32))
    assert model.compiled is True
    outs = {}
    for compiled in (True, False):
        model.compiled = compiled
        outs[compiled] = (
            np.array(model(ids, mask).astype(mx.float32)),
            np.array(model(ids).astype(mx.float32)),
        )
    assert len(model._jit.fns) == 2  # one trace with the mask, one without
    for a, b in zip(outs[True], outs[False], strict=True):
        np.testing.assert_array_equal(a, b)
