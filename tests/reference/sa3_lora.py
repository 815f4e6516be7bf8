"""Stable Audio 3 LoRA adapters made and applied by the reference (`stable_audio_3.models.lora`) on the
committed tiny checkpoints (tests/fixtures/sa3/{small,medium}), for tests/stable_audio_3/test_sa3_lora.py.

`make(out_dir)` writes, per model, `<model>/<file>.safetensors` (or `.ckpt`, `bases.pt`): adapter files made
with the reference's own code (`add_lora` with the file's rank / alpha / adapter type / include / exclude on
the DiT wrapper and the conditioner, every adapter tensor re-drawn at random so the delta matters,
`get_lora_state_dict`, `save_lora_safetensors`), and `<model>/reference.safetensors`: the fixed inputs
(`in.*`: latents x, two timestep vectors, random prompt tokens, the seconds), the reference's outputs without
adapters (`out.base.<t>`, `seconds.base`) and, per SCENARIO, with its files applied by `load_and_apply_loras`,
the strengths set by `set_lora_strength(..., lora_index=i)`: the seconds_total conditioner's embedding
(`seconds.<scenario>`) and the DiT's output at each t (`out.<scenario>.<t>`; with the per-LoRA sigma interval
and layer filter passed as the gradio UI does, `lora_configs`, where the scenario sets them). The local
(inpainting) condition is the all-zero one the reference gets without inpainting; cfg_scale 1.

    python -m tests.reference.sa3_lora tests/fixtures/sa3/lora
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
MODELS = ("small", "medium")
BATCH, LENGTH, PROMPT_TOKENS = 2, 12, 8
SECONDS = [10.0, 3.5]
T_VALUES = {"hi": [0.9, 0.6], "lo": [0.3, 0.9]}  # the reference's interval test reads t[0]


class LoRA(NamedTuple):
    """One adapter file: its lora_config, how it is saved, its seed."""

    file: str
    config: dict
    seed: int
    legacy_2d: bool = False  # DoRA magnitudes saved 2D, (1, fan_in), as old checkpoints did
    ckpt: bool = False  # a .ckpt (torch.save of state_dict + lora_config) instead of .safetensors
    bases: bool = False  # -XS bases from a svd_bases_path file (random orthonormal, not the SVD)


class Scenario(NamedTuple):
    name: str
    files: tuple[str, ...]
    strengths: tuple[float, ...]
    intervals: tuple[tuple[float, float], ...] | None = None  # per LoRA, with layer filters: lora_configs
    filters: tuple[str, ...] | None = None


LORAS = [
    LoRA("lora_all", {"rank": 4, "alpha": 8, "adapter_type": "lora"}, 1),
    LoRA(
        "dora_legacy",
        {
            "rank": 2,
            "alpha": 2,
            "adapter_type": "dora",
            "include": ["transformer.layers", "seconds_total"],
            "exclude": ["to_kv"],
        },
        2,
    ),  # fmt: skip
    LoRA(
        "dora_cols_legacy2d",
        {
            "rank": 2,
            "alpha": 3,
            "adapter_type": "dora-cols",
            "include": ["self_attn", "project_in", "preprocess"],
        },
        3,
        legacy_2d=True,
    ),  # fmt: skip
    LoRA(
        "bora",
        {
            "rank": 2,
            "alpha": 2,
            "adapter_type": "bora",
            "include": ["transformer.layers.[0-1].ff", "to_global_embed", "embedder"],
        },
        4,
    ),  # fmt: skip
    LoRA(
        "lora_xs",
        {
            "rank": 3,
            "alpha": 3,
            "adapter_type": "lora-xs",
            "include": ["cross_attn", "postprocess_conv", "to_timestep_embed"],
        },
        5,
    ),  # fmt: skip
    LoRA(
        "dora_rows_xs",
        {
            "rank": 2,
            "alpha": 4,
            "adapter_type": "dora-rows-xs",
            "include": ["layers.1", "global_cond_embedder"],
        },
        6,
    ),  # fmt: skip
    LoRA("dora_cols_xs", {"rank": 2, "alpha": 2, "adapter_type": "dora-cols-xs", "exclude": ["layers.1"]}, 7),
    LoRA(
        "bora_xs",
        {"rank": 2, "alpha": 2, "adapter_type": "bora-xs", "include": ["self_attn.to_qkv", "to_cond_embed"]},
        8,
        bases=True,
    ),  # fmt: skip
    LoRA("stack_a", {"rank": 2, "alpha": 4, "adapter_type": "lora", "include": ["transformer"]}, 9),
    LoRA(
        "stack_b", {"rank": 2, "alpha": 2, "adapter_type": "dora-rows", "include": ["transformer.layers"]}, 10
    ),
    LoRA(
        "ckpt_lora",
        {"rank": 2, "alpha": 2, "adapter_type": "lora", "include": ["ff.ff.2", "seconds_total"]},
        11,
        ckpt=True,
    ),  # fmt: skip
]
SCENARIOS = [
    *[Scenario(x.file, (x.file,), (1.0,)) for x in LORAS if not x.file.startswith("stack")],
    Scenario("lora_all_s07", ("lora_all",), (0.7,)),
    Scenario("lora_all_s0", ("lora_all",), (0.0,)),
    Scenario("dora_legacy_s0", ("dora_legacy",), (0.0,)),
    Scenario("stack", ("stack_a", "stack_b"), (0.7, 1.3)),
    Scenario(
        "stack_interval", ("stack_a", "stack_b"), (0.7, 1.3), ((0.5, 1.0), (0.0, 1.0)), ("", "self_attn, ff")
    ),
    Scenario("stack_xs", ("lora_all", "dora_cols_xs"), (0.5, 1.5)),
]  # fmt: skip


def lora_file(folder: Path, lora: LoRA) -> Path:
    return folder / (lora.file + (".ckpt" if lora.ckpt else ".safetensors"))


def _randomize(model, g) -> None:
    """Re-draw every adapter tensor of the model's LoRA layers (they start as a no-op)."""
    import torch
    from stable_audio_3.models.lora import get_lora_layers

    with torch.no_grad():
        for _, p in get_lora_layers(model):
            if hasattr(p, "lora_A"):
                p.lora_A.copy_(torch.randn(p.lora_A.shape, generator=g) / math.sqrt(p.lora_A.shape[1]))
                p.lora_B.copy_(torch.randn(p.lora_B.shape, generator=g) * 0.15)
            if hasattr(p, "M_xs"):
                p.M_xs.copy_(torch.randn(p.M_xs.shape, generator=g) * 0.5)
            for m in ("magnitude", "magnitude_r", "magnitude_c"):
                if hasattr(p, m):
                    getattr(p, m).mul_(1 + 0.2 * torch.randn(getattr(p, m).shape, generator=g))


def _strip(part) -> None:
    """Remove every parametrization, restoring the original weights (the reference's `remove_lora` iterates
    the dict it deletes from and fails: "dictionary changed size during iteration")."""
    import torch.nn.utils.parametrize as parametrize

    for mod in list(part.modules()):
        if parametrize.is_parametrized(mod):
            for attr in list(mod.parametrizations.keys()):
                parametrize.remove_parametrizations(mod, attr, leave_parametrized=False)


def _bases_file(model, path: Path, rank: int, seed: int) -> None:
    """A svd_bases_path file: random orthonormal U, V per Linear / Conv1d (not the SVD, so using it shows)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    bases = {}
    for prefix, part in (("model.", model.model), ("conditioner.", model.conditioner)):
        for name, mod in part.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d)):
                out, inp = mod.weight.shape[0], mod.weight[0].numel()
                u = torch.linalg.qr(torch.randn(out, rank + 1, generator=g))[0]
                v = torch.linalg.qr(torch.randn(inp, rank + 1, generator=g))[0]
                bases[f"{prefix}{name}.weight"] = {"U": u.contiguous(), "V": v.contiguous()}
    torch.save(bases, str(path))


def _make_file(model, folder: Path, lora: LoRA) -> None:
    """One adapter file, written by the reference's own LoRA code (as its trainer does)."""
    from functools import partial

    import torch
    from stable_audio_3.models.lora import (
        LoRAParametrization,
        add_lora,
        get_lora_state_dict,
        resolve_adapter_type,
        save_lora_safetensors,
    )

    c = lora.config
    kind = resolve_adapter_type(c["adapter_type"])
    kw = dict(rank=c["rank"], lora_alpha=c["alpha"], adapter_type=kind)
    layer_config = {
        torch.nn.Linear: {"weight": partial(LoRAParametrization.from_linear, **kw)},
        torch.nn.Conv1d: {"weight": partial(LoRAParametrization.from_conv1d, **kw)},
    }
    for part in (model.model, model.conditioner):
        add_lora(part, layer_config, include=c.get("include"), exclude=c.get("exclude"))
    _randomize(model, torch.Generator().manual_seed(lora.seed))
    state = {**get_lora_state_dict(model.model), **get_lora_state_dict(model.conditioner)}
    for part in (model.model, model.conditioner):
        _strip(part)
    if lora.legacy_2d:
        state = {k: v[None] if k.endswith(".magnitude") else v for k, v in state.items()}
        c = dict(c, adapter_type="dora")
    path = lora_file(folder, lora)
    if lora.ckpt:
        torch.save({"state_dict": {k: v.half() for k, v in state.items()}, "lora_config": c}, str(path))
    else:
        save_lora_safetensors(state, c, path)
    if lora.bases:
        _bases_file(model, folder / "bases.pt", c["rank"], lora.seed)


def _run(model, inp: dict, scenario: Scenario | None, folder: Path) -> dict:
    """The reference with a scenario's adapters applied (None: without adapters)."""
    import torch
    from stable_audio_3.models.lora import load_and_apply_loras, set_lora_strength

    by_name = {x.file: x for x in LORAS}
    kwargs = {}
    if scenario is not None:
        loras = [by_name[f] for f in scenario.files]
        bases = str(folder / "bases.pt") if any(x.bases for x in loras) else None
        load_and_apply_loras(
            model, [str(lora_file(folder, x)) for x in loras], "diffusion_cond_inpaint", bases
        )
        for i, s in enumerate(scenario.strengths):
            for part in (model.model, model.conditioner):
                set_lora_strength(part, s, lora_index=i)
        if scenario.intervals is not None:
            kwargs["lora_configs"] = [
                {"lora_index": i, "interval": iv, "layer_filter": f}
                for i, (iv, f) in enumerate(zip(scenario.intervals, scenario.filters, strict=True))
            ]
    name = "base" if scenario is None else scenario.name
    out = {}
    try:
        with torch.no_grad():
            seconds, smask = model.conditioner.conditioners["seconds_total"](SECONDS, "cpu")
            zeros = torch.zeros(BATCH, 1 + inp["x"].shape[1], LENGTH)
            tensors = {
                "prompt": (inp["prompt"], torch.ones(BATCH, PROMPT_TOKENS, dtype=torch.bool)),
                "seconds_total": (seconds, smask),
                "inpaint_mask": [zeros[:, :1]],
                "inpaint_masked_input": [zeros[:, 1:]],
            }
            cond = model.get_conditioning_inputs(tensors)
            out[f"seconds.{name}"] = seconds
            for tk in T_VALUES:
                out[f"out.{name}.{tk}"] = model.model(inp["x"], inp[tk], **cond, cfg_scale=1.0, **kwargs)
    finally:
        for part in (model.model, model.conditioner):
            _strip(part)
    return out


def make_model(name: str, folder: Path, seed: int = 0) -> dict:
    """Write one model's adapter files into `folder`; {tensor name: numpy float32} of inputs and outputs."""
    import torch

    from .sa3 import load_reference
    from .sa3_conditioning import _expo_freqs

    model, cfg = load_reference(REPO / "tests" / "fixtures" / "sa3" / name)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    inp = {
        "x": torch.randn(BATCH, cfg["model"]["io_channels"], LENGTH, generator=g),
        "prompt": torch.randn(BATCH, PROMPT_TOKENS, 768, generator=g),
        **{k: torch.tensor(v, dtype=torch.float32) for k, v in T_VALUES.items()},
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for lora in LORAS:
        _make_file(model, folder, lora)
    arrays = {f"in.{k}": v for k, v in inp.items()}
    arrays["in.expo_freqs"] = _expo_freqs(model.conditioner.conditioners["seconds_total"])
    arrays.update(_run(model, inp, None, folder))
    for scenario in SCENARIOS:
        arrays.update(_run(model, inp, scenario, folder))
    after = model.state_dict()  # remove_lora must have restored the base model exactly
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return {k: v.detach().float().contiguous().numpy() for k, v in arrays.items()}


def make(out_dir: str | Path) -> Path:
    """Write `<model>/` (adapter files + reference.safetensors) for both models into out_dir; returns it."""
    from safetensors.numpy import save_file

    from .sa3 import import_sa3

    import_sa3()
    out = Path(out_dir)
    for name in MODELS:
        arrays = make_model(name, out / name)
        save_file(arrays, str(out / name / "reference.safetensors"))
    return out


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else REPO / "tests" / "fixtures" / "sa3" / "lora"))
