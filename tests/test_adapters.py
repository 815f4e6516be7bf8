"""The family-neutral adapter pieces (mlx_audio_generate/adapters.py): the --lora syntax, kron, LyCORIS's
factorization and LoKr layout against lycoris-lora itself (when installed), and that unmerged and merged
deltas give the same layer output, restored on remove()."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_audio_generate.adapters import (
    Adapters,
    LoKrOptions,
    LowRank,
    Target,
    kron,
    lokr_factorization,
    lokr_layout,
    parse_adapter_list,
)
from mlx_audio_generate.errors import UserError


def test_parse_adapter_list():
    assert parse_adapter_list("a:0.5, b ,c:d:1") == [("a", 0.5), ("b", None), ("c:d", 1.0)]
    with pytest.raises(UserError):
        parse_adapter_list("a,")


def test_kron_is_numpy_kron():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 5))
    np.testing.assert_allclose(np.array(kron(mx.array(a), mx.array(b))), np.kron(a, b), rtol=1e-6)


def test_factorization_and_layout_match_lycoris():
    lycoris = pytest.importorskip("lycoris")
    import torch
    from lycoris.functional import factorization
    from lycoris.modules.lokr import LokrModule

    for d in (1, 7, 24, 64, 128, 250, 360, 384, 1024):
        for f in (-1, 2, 4, 8, 16):
            assert lokr_factorization(d, f) == factorization(d, f), (d, f)
    del lycoris
    cases = [((64, 64), {}), ((384, 64), {"factor": 4}), ((64, 256), {"decompose_both": True}),
             ((32, 64), {"dim": 16}), ((64, 24, 2), {}), ((64, 24, 2), {"dim": 8}),
             ((64, 64), {"rs_lora": True, "dim": 4}),
             ((128, 64), {"unbalanced_factorization": True})]  # fmt: skip
    for shape, kw in cases:
        dim = kw.pop("dim", 2)
        o = LoKrOptions(dim, 5.0, **kw)
        layer = torch.nn.Linear(shape[1], shape[0]) if len(shape) == 2 else torch.nn.Conv1d(24, 64, 2)
        m = LokrModule("x", layer, 1.0, dim, 5.0, factor=o.factor, decompose_both=o.decompose_both,
                       rs_lora=o.rs_lora, unbalanced_factorization=o.unbalanced_factorization)  # fmt: skip
        want = {k: tuple(v.shape) for k, v in m.custom_state_dict().items() if k != "alpha"}
        got, scale = lokr_layout(shape, o)
        assert got == want and scale == pytest.approx(m.scale), (shape, kw)


@pytest.mark.parametrize("merge", [False, True])
def test_unmerged_equals_merged_and_remove_restores(merge):
    mx.random.seed(0)
    root = nn.Module()
    root.proj = nn.Linear(6, 5)
    x = mx.random.normal((3, 6))
    base = root.proj(x)
    a, b = mx.random.normal((2, 6)), mx.random.normal((5, 2))
    t = Target("proj", root, "proj", root.proj, [(0, LowRank(a, b, 1.5))])
    handle = Adapters(root, {"proj": t}, [0.5], merge).install()
    expected = base + 0.75 * (x @ (b @ a).T)
    np.testing.assert_allclose(np.array(root.proj(x)), np.array(expected), rtol=1e-5, atol=1e-5)
    handle.remove()
    np.testing.assert_array_equal(np.array(root.proj(x)), np.array(base))
