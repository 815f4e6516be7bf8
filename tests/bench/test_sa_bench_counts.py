"""bench/stable_audio.py's kernel counts: `common.gpu_fast_ops` (mx.fast ops as one primitive each on the
CPU, as the GPU runs them) and `count_kernels` on tiny models.

- inside gpu_fast_ops each of layer_norm / rms_norm / rope / SDPA builds exactly one non-view primitive
  (its decomposed CPU fallback builds several) and mx.fast is restored afterwards;
- count_kernels names the four parts of a generation with positive counts, a whole sampler step holds at
  least its DiT call, and compiling removes kernels (the eager DiT call has more).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_gpu_fast_ops_one_primitive_each():
    from common import count_ops, gpu_fast_ops, mx

    x = mx.random.normal((2, 3, 8, 16))
    w, b = mx.ones((16,)), mx.zeros((16,))
    freqs = mx.ones((4,))
    mx.eval(x, w, b, freqs)
    ops = {
        "layer_norm": lambda: mx.fast.layer_norm(x, w, b, 1e-5),
        "rms_norm": lambda: mx.fast.rms_norm(x, w, 1e-5),
        "rope": lambda: mx.fast.rope(x, 8, traditional=False, base=None, scale=1.0, offset=0, freqs=freqs),
        "sdpa": lambda: mx.fast.scaled_dot_product_attention(x, x, x, scale=0.25),
    }
    saved = {
        n: getattr(mx.fast, n) for n in ("layer_norm", "rms_norm", "rope", "scaled_dot_product_attention")
    }
    for name, op in ops.items():
        with gpu_fast_ops():
            inside = count_ops(op())[1]
        outside = count_ops(op())[1]
        assert inside == 1, name
        assert outside > 1, name  # the CPU's decomposition (what gpu_fast_ops exists for)
    assert {n: getattr(mx.fast, n) for n in saved} == saved


def test_count_kernels_on_tiny_models():
    pytest.importorskip("torch")
    import stable_audio as bench

    for name in ("small", "1.0"):
        m = bench.build_ours(name, "float32", tiny=True)
        st = bench.SETTINGS[name]
        bench.set_variant(m, "compiled")
        rows = bench.count_kernels(m, st)
        parts = [r[0] for r in rows]
        assert parts[0] == "T5 + conditioning" and parts[-1] == "VAE decode"
        assert parts[1].startswith("one DiT call") and parts[2].startswith("one sampler step")
        assert all(a >= nv > 0 for _, a, nv in rows)
        assert rows[2][2] >= rows[1][2]
        bench.set_variant(m, "eager")
        eager = bench.count_kernels(m, st)
        assert eager[1][2] > rows[1][2]
