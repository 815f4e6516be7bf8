"""bench/ace_step.py (the ACE-Step 1.5 speed benchmark): the random released-layout checkpoints it writes
and one end-to-end `--tiny` run of ours.

- `oobleck_shapes` (the VAE layout ace_weights.py writes without needing diffusers) equals diffusers'
  AutoencoderOobleck state dict, names and shapes, at the tiny and the real (released) configs;
- `--tiny --peers none`: the weights are written, converted by our converter, ours generates, and the table
  (.md) and JSON name the case with finite audio and a positive time. It needs the upstream sources (the DiT
  shapes come from upstream's classes), so it is skipped without ../shared/reference.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.bench.scripts import ROOT, run_bench

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.parametrize("size", ["tiny", "small", "real"])
def test_oobleck_shapes_match_diffusers(size):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    import ace_weights

    cfg = ace_weights.SIZES[size]["vae"]
    with torch.device("meta"):
        vae = diffusers.AutoencoderOobleck(**cfg)
    want = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert ace_weights.oobleck_shapes(cfg) == want


def test_tiny_run_ours(tmp_path):
    import ace_weights

    try:
        ace_weights.find_reference(None)
    except FileNotFoundError:
        pytest.skip("the ACE-Step upstream sources (../shared/reference) are not here")
    out = tmp_path / "res" / "ace"
    run = run_bench("ace_step.py", "--tiny", "--peers", "none", "--cases", "turbo-5x1",
                    "--work-dir", str(tmp_path / "w"), "--out", str(out), timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    body = json.loads(out.with_suffix(".json").read_text())
    (row,) = body["results"]
    assert (row["impl"], row["variant"], row["seconds"], row["batch"]) == ("ours", "turbo", 5.0, 1)
    assert "error" not in row and row["finite"] and row["total"] > 0 and row["frames"] == 128
    table = out.with_suffix(".md").read_text()
    assert "| turbo 5 s x1 | ours MLX" in table
