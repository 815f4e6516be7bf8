"""Stable Audio batches with one seed per row: each row equals that prompt generated alone."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.generate import StableAudio


def test_rows_depend_only_on_their_prompt_and_seed(stable_audio_1_0_converted):
    model = StableAudio.from_pretrained(stable_audio_1_0_converted)
    args = dict(seconds=0.5, steps=3)  # dpmpp-3m-sde: per-step noise is drawn per row too
    batch = model.generate(["rain", "drums", "rain"], seed=[3, 4, 5], **args)
    for row, (prompt, seed) in enumerate([("rain", 3), ("drums", 4), ("rain", 5)]):
        # same noise per row; batch-size-dependent BLAS rounding (OpenBLAS) allows ~1e-7 differences
        np.testing.assert_allclose(
            batch[row], model.generate(prompt, seed=seed, **args)[0], rtol=0, atol=1e-5
        )
    assert not np.allclose(batch[0], batch[2])
    # a list of one seed is the int seed
    np.testing.assert_array_equal(
        model.generate("rain", seed=[3], **args), model.generate("rain", seed=3, **args)
    )
    with pytest.raises(UserError, match="2 seeds for 3 prompts"):
        model.generate(["a", "b", "c"], seed=[1, 2], **args)
