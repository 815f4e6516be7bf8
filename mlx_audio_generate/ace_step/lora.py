"""ACE-Step 1.5 adapters at inference on our DiT (the reference's `model.decoder`), as the original handler
applies them (`acestep/core/generation/handler/lora/lifecycle.py`, `controls.py`, `acestep/core/lora/`):

- PEFT LoRA: a folder with `adapter_config.json` + `adapter_model.safetensors` (ACE-Step's trainer saves
  r 8, alpha 16 on q_proj / k_proj / v_proj / o_proj; any PEFT LoRA config is honoured here): tensors
  `base_model.model.<decoder module>.lora_{A,B}.weight`, the module targeted as PEFT's
  `check_target_module_exists` decides (target_modules list or regex, exclude_modules, layers_to_transform),
  scaling = lora_alpha / r (/ sqrt(r) with use_rslora), r and alpha per module from rank_pattern /
  alpha_pattern (PEFT's `get_pattern_key`). The handler's runtime scale multiplies the scaling
  (`module.scaling[adapter] = base_scale * scale`): delta = strength * scaling * B @ A.
- LyCORIS LoKr: `lokr_weights.safetensors` (a file, or a folder holding it or another .safetensors with
  `lokr_config` metadata, as `_resolve_lokr_weights_path`). The handler builds the LoKr network from the
  metadata's `lokr_config` (the trainer's LoKRConfig defaults where absent: linear_dim 64, alpha 128, factor
  -1) with `create_lycoris` and loads the file into it. With lycoris-lora's default preset classes that
  network wraps EVERY nn.Linear and Conv1d of the decoder (target_modules only picks what the trainer
  trains; the others are saved untrained, a zero delta), so every module of the file is applied: its
  tensors must have the shapes that network gives the module (else a size mismatch, as load_state_dict's),
  scale = linear_alpha / linear_dim (1 when both Kronecker halves are whole; sqrt(dim) with rs_lora). The
  handler's runtime scale is the network multiplier: delta = strength * scale * kron(w1, w2).

Strength: the handler's scale, which it clamps to [0, 1]; values outside are refused here. Several
adapters at once add their deltas (PEFT's forward with several active adapters sums them; the handler
activates one PEFT adapter at a time and allows a LoKr only first, so stacking goes beyond it with the
same arithmetic). Unmerged (a wrapper adds each delta at every call, as PEFT / LyCORIS forward) or merged
into the weights (mlx_audio_generate/adapters.py). Safetensors only: a .bin / .pt adapter is refused (a
pickle is never executed). Stricter than the reference where it would drop tensors silently: a tensor for a
module the DiT does not have, or one the config does not target, is refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..adapters import (
    Adapters,
    LoKrOptions,
    LowRank,
    Target,
    check_adaptable,
    locate,
    lokr_delta,
    lokr_layout,
    parse_adapter_list,
    weight_shape,
)
from ..errors import UserError

LOKR_FILE = "lokr_weights.safetensors"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PEFT_PREFIX = "base_model.model."
# LoKRConfig (acestep/training/configs.py): the handler's defaults for a file without metadata
LOKR_DEFAULTS = dict(linear_dim=64, linear_alpha=128, factor=-1, decompose_both=False, use_tucker=False,
                     use_scalar=False, weight_decompose=False, full_matrix=False, bypass_mode=False,
                     rs_lora=False, unbalanced_factorization=False)  # fmt: skip
# PEFT options that change more than a B @ A delta on the targeted linears: not supported
_PEFT_REFUSED = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "target_parameters",
                 "trainable_token_indices", "layer_replication", "use_qalora", "alora_invocation_tokens",
                 "use_bdlora", "arrow_config", "monteclora_config", "kasa_config",
                 "megatron_config")  # fmt: skip
# init modes that rewrite the base weights when the adapter is created
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "eva", "loftq", "orthogonal")
# our parameter names differ from the reference decoder's only where it wraps a conv in a Sequential
_REF_NAMES = {"proj_in": "proj_in.1"}


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter to apply: a PEFT folder or a LoKr file / folder, and its strength."""

    path: str | Path
    strength: float = 1.0


@dataclass
class AdapterFile:
    path: Path
    kind: str  # "peft" or "lokr"
    tensors: dict[str, dict[str, mx.array]]  # our module name -> {param: float32}
    peft: dict[str, Any] | None = None  # the adapter_config
    lokr: LoKrOptions | None = None

    @property
    def label(self) -> str:
        return f"{'PEFT LoRA' if self.kind == 'peft' else 'LoKr'} {self.path}"


# -- specs ------------------------------------------------------------------------------------------------


def _spec(item: Any) -> AdapterSpec:
    if isinstance(item, AdapterSpec):
        spec = item
    elif isinstance(item, (str, Path)):
        spec = AdapterSpec(item)
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        spec = AdapterSpec(item[0], item[1])
    else:
        raise UserError(f"a LoRA is a path, (path, strength) or AdapterSpec, not {item!r}")
    s = spec.strength
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
        raise UserError(f"LoRA strength must be a number in [0, 1] (the reference's scale range), got {s!r}")
    return spec


def parse_loras(value: Any) -> list[AdapterSpec]:
    """The `lora` setting: "PATH[:STRENGTH][,PATH[:STRENGTH]...]" (the CLI's --lora) or a list of paths,
    (path, strength) pairs or AdapterSpec (the Python API)."""
    if isinstance(value, str):
        items = [(p, 1.0 if s is None else s) for p, s in parse_adapter_list(value)]
    elif isinstance(value, (str, Path)) or isinstance(value, AdapterSpec):
        items = [value]
    else:
        items = list(value)
    return [_spec(x) for x in items]


# -- reading ----------------------------------------------------------------------------------------------


def _load_safetensors(path: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    try:
        tensors, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise UserError(f"cannot read adapter file {path}: not a valid safetensors file ({e})") from None
    return tensors, meta or {}


def _has_lokr_metadata(path: Path) -> bool:
    try:
        return bool(str(_load_safetensors(path)[1].get("lokr_config", "")).strip())
    except UserError:
        return False


def _lokr_path(path: Path) -> Path | None:
    """`_resolve_lokr_weights_path`: the LoKr file a path names, if any."""
    if path.is_file():
        ok = path.suffix == ".safetensors" and (path.name == LOKR_FILE or _has_lokr_metadata(path))
        return path if ok else None
    if (path / LOKR_FILE).is_file():
        return path / LOKR_FILE
    for candidate in sorted(path.glob("*.safetensors")):
        if _has_lokr_metadata(candidate):
            return candidate
    return None


def read_adapter(path: str | Path) -> AdapterFile:
    """Read one adapter (a PEFT folder or a LoKr file / folder) and check its own consistency."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"LoRA path {path} does not exist")
    if path.is_file() and path.suffix.lower() in PICKLES:
        raise UserError(f"{path}: a pickle adapter is never loaded (pickles execute code); use .safetensors")
    lokr = _lokr_path(path)
    if lokr is not None:
        return _read_lokr(lokr)
    if path.is_file():
        raise UserError(
            f"{path} is not an adapter: give a PEFT folder ({PEFT_CONFIG} + {PEFT_WEIGHTS}) or a LoKr "
            f"{LOKR_FILE}"
        )
    if not (path / PEFT_CONFIG).is_file():
        raise UserError(
            f"{path}: no {PEFT_CONFIG} (a PEFT LoRA folder) and no {LOKR_FILE} (LoKr): not an adapter"
        )
    return _read_peft(path)


def _read_peft(folder: Path) -> AdapterFile:
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{folder / PEFT_CONFIG}: cannot read it ({e})") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise UserError(f"{folder / PEFT_CONFIG}: no 'peft_type' (not a PEFT adapter config)")
    if str(config["peft_type"]).upper() != "LORA":
        raise UserError(f"{folder}: unknown adapter type {config['peft_type']!r} (PEFT LoRA or LoKr only)")
    for key in _PEFT_REFUSED:
        if config.get(key):
            raise UserError(f"{folder}: PEFT option {key}={config[key]!r} is not supported")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise UserError(f"{folder}: init_lora_weights={init!r} rewrites the base weights: not supported")
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLES]
        if pickled:
            raise UserError(
                f"{folder}: only {', '.join(pickled)} (a pickle, never loaded); save it as {PEFT_WEIGHTS}"
            )
        raise UserError(f"{folder}: {PEFT_WEIGHTS} is missing")
    raw, _ = _load_safetensors(weights)
    tensors: dict[str, dict[str, mx.array]] = {}
    for key, value in raw.items():
        m = re.fullmatch(r"(?P<module>.+)\.(?P<param>lora_A|lora_B)\.weight", key)
        if m is None or not m["module"].startswith(PEFT_PREFIX):
            raise UserError(
                f"{weights}: tensor '{key}' is not a LoRA weight ({PEFT_PREFIX}<module>.lora_A/B)"
            )
        module = m["module"][len(PEFT_PREFIX) :]
        tensors.setdefault(module, {})[m["param"]] = value.astype(mx.float32)
    for module, params in tensors.items():
        if set(params) != {"lora_A", "lora_B"}:
            raise UserError(f"{weights}: '{module}' has only {', '.join(params)}")
    if not tensors:
        raise UserError(f"{weights} holds no LoRA tensors")
    return AdapterFile(folder, "peft", tensors, peft=config)


def _read_lokr(path: Path) -> AdapterFile:
    raw, meta = _load_safetensors(path)
    options = dict(LOKR_DEFAULTS)
    text = meta.get("lokr_config")
    if text:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: metadata 'lokr_config' is not valid JSON ({e})") from None
        if isinstance(parsed, dict):  # the handler keeps only LoKRConfig's fields
            options |= {k: v for k, v in parsed.items() if k in LOKR_DEFAULTS}
    if options["weight_decompose"]:
        raise UserError(f"{path}: LoKr weight_decompose (DoRA) is not supported")
    dim, alpha = options["linear_dim"], options["linear_alpha"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise UserError(f"{path}: lokr_config linear_dim must be a positive integer, got {dim!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise UserError(f"{path}: lokr_config linear_alpha must be a number, got {alpha!r}")
    opts = LoKrOptions(
        dim, float(alpha), int(options["factor"]), bool(options["decompose_both"]),
        bool(options["full_matrix"]), bool(options["rs_lora"]), bool(options["unbalanced_factorization"]),
    )  # fmt: skip
    tensors: dict[str, dict[str, mx.array]] = {}
    for key, value in raw.items():
        module, _, param = key.partition(".")
        if not module.startswith("lycoris_") or not param:
            raise UserError(f"{path}: tensor '{key}' is not a LyCORIS weight (lycoris_<module>.<param>)")
        if param in ("lokr_t2", "dora_scale"):
            raise UserError(f"{path}: '{key}': LoKr Tucker / DoRA tensors are not supported")
        tensors.setdefault(module, {})[param] = value.astype(mx.float32)
    if not tensors:
        raise UserError(f"{path} holds no LoKr tensors")
    return AdapterFile(path, "lokr", tensors, lokr=opts)


# -- targets ----------------------------------------------------------------------------------------------


def _adaptable(dit: nn.Module) -> dict[str, str]:
    """Our name -> the reference decoder's, for every nn.Linear / Conv1d / QuantizedLinear of the DiT."""
    out = {}
    for name, mod in dit.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.QuantizedLinear)):
            out[name] = _REF_NAMES.get(name, name)
    return out


def peft_targets(config: dict[str, Any], key: str) -> bool:
    """PEFT's `check_target_module_exists` for a decoder module name."""
    exclude = config.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return False
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return False
    targets = config.get("target_modules")
    if targets is None:
        return False
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    indexes = config.get("layers_to_transform")
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return True
    pattern = config.get("layers_pattern")
    if not pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        m = None
        for p in [pattern] if isinstance(pattern, str) else pattern:
            m = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
            if m is not None:
                break
    if m is None:
        return False
    return int(m["idx"]) == indexes if isinstance(indexes, int) else int(m["idx"]) in indexes


def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """PEFT's `get_pattern_key`: the first pattern p with re.match(rf"(.*\\.)?({p})$", key)."""
    for p, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({p})$", key):
            return v
    return default


def _peft_deltas(f: AdapterFile, layers: dict[str, nn.Module]) -> dict[str, LowRank]:
    c = f.peft
    out = {}
    for module, p in f.tensors.items():
        if module not in layers:
            raise UserError(f"{f.label} adapts '{module}', a layer this ACE-Step DiT does not have")
        if not peft_targets(c, module):
            raise UserError(f"{f.label} has tensors for '{module}', which its target_modules do not target")
        check_adaptable(layers[module], module, f.label)
        r = _pattern_value(c.get("rank_pattern"), module, c.get("r", 8))
        alpha = _pattern_value(c.get("alpha_pattern"), module, c.get("lora_alpha", 8))
        if isinstance(r, bool) or not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
            raise UserError(f"{f.label}: r {r!r} / lora_alpha {alpha!r} of '{module}' are not valid")
        layer = layers[module]
        shape = weight_shape(layer)
        if len(shape) != 2:
            raise UserError(f"{f.label} adapts '{module}', which is not a linear layer")
        a, b = p["lora_A"], p["lora_B"]
        if a.shape != (r, shape[1]) or b.shape != (shape[0], r):
            raise UserError(
                f"{f.label}: '{module}' lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit rank "
                f"{r} on a {shape[1]} -> {shape[0]} layer (rank or model mismatch)"
            )
        scaling = alpha / math.sqrt(r) if c.get("use_rslora") else alpha / r
        out[module] = LowRank(a, b, float(scaling))
    return out


def _lokr_deltas(f: AdapterFile, layers: dict[str, nn.Module], refs: dict[str, str]) -> dict:
    by_lycoris = {"lycoris_" + refs[name].replace(".", "_"): name for name in layers}
    out = {}
    for lname, p in f.tensors.items():
        module = by_lycoris.get(lname)
        if module is None:
            raise UserError(f"{f.label} adapts '{lname}', a layer this ACE-Step DiT does not have")
        check_adaptable(layers[module], module, f.label)
        shape = weight_shape(layers[module])
        expected, scale = lokr_layout(shape, f.lokr)
        got = {k: tuple(v.shape) for k, v in p.items() if k != "alpha"}
        if got != expected:
            raise UserError(
                f"{f.label}: '{lname}' has {got}, the lokr_config (linear_dim {f.lokr.dim}, factor "
                f"{f.lokr.factor}) gives {expected} for this layer (rank or model mismatch)"
            )
        out[module] = lokr_delta(p, scale, shape)
    return out


def apply_loras(dit: nn.Module, loras: Any, merge: bool = True) -> Adapters:
    """Apply adapters (paths, (path, strength) pairs, AdapterSpec or the "PATH[:S],..." string) to our
    AceStepDiTModel. merge: the deltas written into the weights (fast) or added by wrappers at every call.
    Returns the handle whose `remove()` restores the DiT; nothing is changed if an adapter is refused.
    Apply before computing the DiT's conditioning (`condition`: the cross-attention K/V)."""
    specs = parse_loras(loras)
    if not specs:
        raise UserError("no LoRA adapters given")
    if getattr(dit, "_adapters_handle", None) is not None:
        raise UserError("adapters are already applied to this model: remove() them first")
    files = [read_adapter(s.path) for s in specs]
    refs = _adaptable(dit)
    layers = {name: locate(dit, name)[2] for name in refs}
    targets: dict[str, Target] = {}
    for i, f in enumerate(files):
        deltas = _peft_deltas(f, layers) if f.kind == "peft" else _lokr_deltas(f, layers, refs)
        for module, delta in deltas.items():
            if module not in targets:
                parent, key, layer = locate(dit, module)
                targets[module] = Target(module, parent, key, layer)
            targets[module].deltas.append((i, delta))
    return Adapters(dit, targets, [s.strength for s in specs], merge).install()
