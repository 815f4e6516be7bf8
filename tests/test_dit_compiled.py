"""The DiT's compiled path (`mx.compile`, the default on the GPU) against the same references, on the CPU.

Re-runs the forward/CFG parity tests of test_dit.py with compilation forced on."""

from __future__ import annotations

import pytest

from mlx_audio_generate.stable_audio import dit as dit_module
from tests.test_dit import (  # noqa: F401 - collected again here, with the fixture below
    test_cfg_batch_path,
    test_cfg_rescale_and_interval,
    test_forward_single_pass,
    test_matches_diffusers,
    test_variant_forward_and_cfg,
    tiny,
    variant,
)


@pytest.fixture(autouse=True)
def compiled_everywhere(monkeypatch):
    monkeypatch.setattr(dit_module, "_on_gpu", lambda: True)


def test_compiled_equals_eager(tiny):  # noqa: F811 - the imported fixture
    import mlx.core as mx
    import numpy as np

    from tests.test_dit import inputs, to_mx

    _, config, _, ours = tiny
    x, t, cond, _, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 4.0)
    want = ours.guided(to_mx(x), to_mx(t), c, 4.0)
    ours.compiled = False
    try:
        eager = ours.guided(to_mx(x), to_mx(t), c, 4.0)
    finally:
        ours.compiled = None
    np.testing.assert_allclose(np.array(want), np.array(eager), rtol=0, atol=1e-5)
    assert len(ours._jit.fns) >= 1
    mx.eval(want)


def test_oobleck_compiled_equals_eager():
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_map

    from mlx_audio_generate.codecs.oobleck import OobleckConfig, OobleckVAE
    from tests.reference.stable_audio import tiny_config

    vae = OobleckVAE(OobleckConfig.from_dict(tiny_config("small")["model"]["pretransform"]))
    mx.random.seed(0)
    # Random Snake parameters and biases too (their defaults are zeros).
    vae.update(tree_map(lambda p: p + 0.1 * mx.random.normal(p.shape), vae.parameters()))
    z = mx.random.normal((1, 8, 5))
    audio = mx.random.normal((1, 2, 2048 * 3))
    outs = {}
    for compiled in (True, False):
        vae.compiled = compiled
        outs[compiled] = (np.array(vae.decode(z)), np.array(vae.encode(audio)))
    for a, b in zip(outs[True], outs[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_matmul_attention_equals_sdpa(tiny):  # noqa: F811 - the imported fixture
    import numpy as np

    from tests.test_dit import inputs, to_mx

    _, config, _, ours = tiny
    x, t, cond, _, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 4.0)
    outs = {}
    for impl in ("sdpa", "matmul"):
        ours.attention = impl
        outs[impl] = np.array(ours.guided(to_mx(x), to_mx(t), c, 4.0))
    ours.attention = "auto"
    np.testing.assert_allclose(outs["matmul"], outs["sdpa"], rtol=0, atol=1e-5 * np.abs(outs["sdpa"]).max())
