"""A/B of the MusicGen decode loop of this checkout against another one, interleaved in ONE process.

    git archive <commit> mlx_audio_generate | tar -x -C /tmp/old
    python bench/decode_ab.py --b /tmp/old --models small,large --rounds 4 --out ab.md

The decode step is host-bound on the GPU, so steps/s moves ~15% between processes and leased machines; the
two versions are therefore timed in alternating rounds in one process, on the same weights (B's LM gets
A's parameters), and the table gives every round and the median. B's package is imported under another
name (its imports are relative), so both live side by side. `--a-set` / `--b-set` set a module attribute of
one side's package before the rounds (a knob A/B of one checkout: `--b . --b-set
musicgen.layer_kernel.BLOCK=256`).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import Report, apply_sets, log, parse_list, time_steps
from decode_profile import build_lm, text


def import_b(root: str):
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(Path(root) / "mlx_audio_generate", tmp / "mag_b")
    sys.path.insert(0, str(tmp))
    load = importlib.import_module
    return load("mag_b.musicgen.model"), load("mag_b.musicgen.lm_generate")


def steps_per_s(gen_mod, lm, steps: int, warm: int = 10) -> float:
    states, mask = text()
    gen = gen_mod.generate_steps(lm, states, mask, steps + warm + 4, gen_mod.SamplingOptions(), key=0)
    return time_steps(gen, steps, warm)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--b", required=True, help="a directory holding the other mlx_audio_generate tree")
    p.add_argument("--models", default="small,large")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--a-set", action="append", default=[], help="module.NAME=value in A's package")
    p.add_argument("--b-set", action="append", default=[], help="module.NAME=value in B's package")
    p.add_argument("--out")
    a = p.parse_args()
    from mlx_audio_generate.musicgen import lm_generate as gen_a

    model_b, gen_b = import_b(a.b)
    apply_sets("mlx_audio_generate", a.a_set)
    apply_sets("mag_b", a.b_set)
    rep = Report("MusicGen decode A/B (one process, alternating rounds)", a.out)
    rows = []
    for name in parse_list(a.models):
        lm_a = build_lm(name, a.dtype, a.tiny)
        lm_b = model_b.MusicgenLM(model_b.DecoderConfig(**vars(lm_a.config)), 768)
        lm_b.update(lm_a.parameters())
        res = {"A (this checkout)": [], "B": []}
        for _ in range(a.rounds):
            for label, g, lm in (("A (this checkout)", gen_a, lm_a), ("B", gen_b, lm_b)):
                res[label].append(steps_per_s(g, lm, a.steps))
                log(f"{name} {label}: {res[label][-1]:.1f} steps/s")
        for label, v in res.items():
            rows.append([name, label, " / ".join(f"{x:.0f}" for x in v), f"{statistics.median(v):.1f}"])
        del lm_a, lm_b
    note = f"B = {a.b}; A sets {a.a_set or 'nothing'}; B sets {a.b_set or 'nothing'}"
    rep.table(["model", "version", "steps/s per round", "median"], rows, note=note)


if __name__ == "__main__":
    main()
