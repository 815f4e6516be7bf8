"""Stable Audio 3 LoRA adapters at inference (`stable_audio_3/models/lora/`: `load_and_apply_loras`,
`LoRAParametrization`, `set_lora_strength`, and the per-LoRA sigma interval / layer filter of
`DiffusionTransformer.forward`), on our SA3DiT and Conditioners.

The reference registers one PyTorch parametrization per LoRA on every `nn.Linear` / `nn.Conv1d` of
`model.model` (DiTWrapper) and `model.conditioner` whose name passes the file's include / exclude substrings
(`[a-b]` ranges expanded). A layer's weight is then recomputed at each use as p_n(...p_1(p_0(W0))): adapters
chain in load order, each DoRA / BoRA normalising the weight it is handed (the previous adapters' output)
and rescaling it by its own magnitudes. Here the same chain (`adapt`) runs either
- merged (`merge=True`): once into the layers' weights (re-run for the layers whose state changes), or
- unmerged: `LoRALinear` replaces the layer and recomputes the chain at every call from W0 and its adapters,
  whose strengths are arrays (a compiled graph picks new strengths up without retracing).
Both are the reference's arithmetic (float32 adapter math, cast back to the weight's dtype as it does).

Files: `.safetensors` (config JSON under the metadata key `lora_config`) or `.ckpt` (`state_dict` +
`lora_config`, read only through `torch.load(weights_only=True)`: a pickle is never executed). Keys
`<layer>.parametrizations.weight.0.<param>`, the layer named as in the reference; legacy 2D DoRA magnitudes
are squeezed and adapter type "dora" resolved from the first magnitude's shape, as the reference does.
Strictness where the reference is silent (`load_state_dict(strict=False)`): every tensor of a file must land
in an adapter. The reference remaps file i's keys to parametrization slot i, which is file i's adapter only
where files 0..i all target the layer; elsewhere it drops them silently, so that is refused here. A targeted
layer the file has no tensors for gets the reference's initial adapter (lora / -xs: no change; DoRA / BoRA:
magnitudes = the original weight's norms). Unlike the reference, a file without `lora_config` is refused
(its adapter type, alpha and filters would be guesses).

Sampling: `DiffusionTransformer.forward` enables LoRA i on the DiT's layers iff interval_i[0] <= sigma <=
interval_i[1] (sigma = t for SA3's rectified-flow objectives, of the first batch row), then disables the
layers whose name (relative to the DiffusionTransformer) contains a comma-separated `layer_filter` entry.
Disabled and strength 0 are the same weight for every adapter type. The conditioner's adapters only see the
strength. `SA3LoRAs.activate(t)` applies that state before a DiT evaluation (its doc: the sampler loop).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..adapters import parse_adapter_list
from ..errors import UserError
from ..weights import torch_load
from .lora_xs import ADAPTER_TYPES, PARAMS, adapt, adapter_params, read_svd_bases

_KEY = re.compile(r"^(?P<layer>.+)\.parametrizations\.weight\.(?P<slot>\d+)\.(?P<param>[A-Za-z_]+)$")


# -- files ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAConfig:
    rank: int
    alpha: float
    adapter_type: str  # resolved ("dora" -> "dora-rows" / "dora-cols")
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class LoRAFile:
    path: Path
    config: LoRAConfig
    layers: dict[str, dict[str, mx.array]]  # reference layer name -> {param: float32 tensor}

    @property
    def name(self) -> str:
        return self.path.stem


def _read_safetensors(path: Path) -> tuple[dict[str, mx.array], Any]:
    try:
        tensors, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise UserError(f"cannot read LoRA file {path}: not a valid safetensors file ({e})") from None
    raw = (meta or {}).get("lora_config")
    if raw is None:
        return dict(sorted(tensors.items())), None  # safe_open's key order (the reference iterates it)
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: metadata 'lora_config' is not valid JSON ({e})") from None
    return dict(sorted(tensors.items())), config


def _read_ckpt(path: Path) -> tuple[dict[str, mx.array], Any]:
    ckpt = torch_load(
        path,
        instead=", or convert the LoRA to .safetensors",
        refused="; pickles are never executed, use a .safetensors LoRA",
    )
    import torch  # present: torch_load needed it

    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: a LoRA .ckpt must hold a 'state_dict' dict")
    tensors = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{path}: state_dict entry '{k}' is not a tensor")
        tensors[k] = mx.array(v.detach().float().numpy())
    return tensors, ckpt.get("lora_config")


def _strings(value: Any, what: str, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise UserError(f"{path}: lora_config '{what}' must be a list of strings, got {value!r}")
    return tuple(value)


def _resolve_type(kind: Any, magnitude_shapes: list[tuple[int, ...]], path: Path) -> str:
    if kind not in ADAPTER_TYPES:
        raise UserError(f"{path}: unknown LoRA adapter_type {kind!r} (known: {', '.join(ADAPTER_TYPES)})")
    if kind != "dora":
        return kind
    # resolve_adapter_type / detect_dora_variant: only the first `.magnitude` (in file order) decides
    first = magnitude_shapes[0] if magnitude_shapes else ()
    return "dora-cols" if len(first) == 2 and first[0] == 1 else "dora-rows"


def read_lora(path: str | Path) -> LoRAFile:
    """Read and check one adapter file (see the module doc); tensors float32."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA file {path} does not exist")
    if path.suffix == ".safetensors":
        tensors, config = _read_safetensors(path)
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        tensors, config = _read_ckpt(path)
    else:
        raise UserError(f"LoRA file {path} must be .safetensors or .ckpt")
    if not isinstance(config, dict):
        raise UserError(
            f"{path} has no 'lora_config' (rank, alpha, adapter_type, include, exclude): cannot apply it"
        )
    layers: dict[str, dict[str, mx.array]] = {}
    magnitude_shapes = []
    ranks = []
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise UserError(f"{path}: tensor '{key}' is not a LoRA parameter (<layer>.parametrizations...)")
        if m["slot"] != "0":
            raise UserError(
                f"{path}: tensor '{key}' is a stacked adapter's (slot {m['slot']}); save one per file"
            )
        param = m["param"]
        if param == "magnitude":
            magnitude_shapes.append(tuple(value.shape))
            if value.ndim == 2:  # prepare_dora_state_dict: legacy (1, fan_in) / (fan_out, 1)
                value = value.reshape(-1)
        if param in ("lora_A", "M_xs"):
            ranks.append(value.shape[0])
        elif param == "lora_B" and value.ndim == 2:
            ranks.append(value.shape[1])
        layers.setdefault(m["layer"], {})[param] = value.astype(mx.float32)
    kind = _resolve_type(config.get("adapter_type", "lora"), magnitude_shapes, path)
    rank = config.get("rank", ranks[0] if ranks else None)  # infer_global_rank: the first candidate
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"{path}: lora_config rank must be a positive integer, got {rank!r}")
    alpha = config.get("alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise UserError(f"{path}: lora_config alpha must be a number, got {alpha!r}")
    allowed = set(PARAMS[kind]) | {"lora_dropout_mask"}
    for layer, params in layers.items():
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise UserError(
                f"{path}: '{layer}' has {', '.join(unknown)}, not parameters of a '{kind}' adapter"
            )
        if ("lora_A" in params) != ("lora_B" in params):
            raise UserError(f"{path}: '{layer}' has only one of lora_A / lora_B")
    cfg = LoRAConfig(
        rank,
        float(alpha),
        kind,
        _strings(config.get("include"), "include", path),
        _strings(config.get("exclude"), "exclude", path),
    )
    return LoRAFile(path, cfg, layers)


# -- layer names and filters ------------------------------------------------------------------------------


def expand(pattern: str) -> list[str]:
    """`_expand`: 'layers.[0-2].x' -> ['layers.0.x', 'layers.1.x', 'layers.2.x'] (ranges may run down)."""
    t = re.split(r"\[(\d+)-(\d+)\]", pattern)
    if len(t) == 1:
        return [pattern]
    lits, starts, ends = t[0::3], t[1::3], t[2::3]
    pools = []
    for a, b in zip(starts, ends, strict=True):
        ai, bi = int(a), int(b)
        step = 1 if bi >= ai else -1
        pools.append([str(n) for n in range(ai, bi + step, step)])
    out = []
    for combo in product(*pools):
        pieces = []
        for i, lit in enumerate(lits):
            pieces.append(lit)
            if i < len(combo):
                pieces.append(combo[i])
        out.append("".join(pieces))
    return out


def _matches_any(name: str, patterns: tuple[str, ...] | None) -> bool:
    return any(e in name for p in patterns or () for e in expand(p.strip()))


def _selected(name: str, config: LoRAConfig) -> bool:
    """add_lora's include / exclude test on a reference layer name."""
    if config.include is not None and not _matches_any(name, config.include):
        return False
    return not (config.exclude is not None and _matches_any(name, config.exclude))


def filtered(name: str, layer_filter: str) -> bool:
    """`filter_lora_layers`: True (adapter off) if the DiT layer name contains an entry of the comma list.
    As the reference, entries are lower-cased and an entry that is blank only after stripping (", ,")
    matches every layer."""
    entries = [x.lower().strip() for x in (layer_filter or "").strip().split(",") if len(x)]
    return any(e in name for f in entries for e in expand(f))


_L = "transformer.layers."
_SEQ = {"1": "0", "2": "2"}  # our MLP fc1 / fc2 = the reference Sequential's Linear at index 0 / 2
_DIT_NAMES = [
    (r"(to_timestep_embed|to_cond_embed|to_global_embed)\.fc([12])", lambda m: f"{m[1]}.{_SEQ[m[2]]}"),
    (r"global_cond_embedder\.fc([12])", lambda m: f"transformer.global_cond_embedder.{_SEQ[m[1]]}"),
    (r"(project_in|project_out)", lambda m: f"transformer.{m[1]}"),
    (r"(preprocess_conv|postprocess_conv)", lambda m: m[1]),  # Conv1d k=1: its (out, in * 1) view is ours
    (r"blocks\.(\d+)\.(self_attn|cross_attn)\.(qkv|q|kv|out)", lambda m: f"{_L}{m[1]}.{m[2]}.to_{m[3]}"),
    (r"blocks\.(\d+)\.ff\.proj_in", lambda m: f"{_L}{m[1]}.ff.ff.0.proj"),
    (r"blocks\.(\d+)\.ff\.proj_out", lambda m: f"{_L}{m[1]}.ff.ff.2"),
    (r"blocks\.(\d+)\.local_embed\.fc([12])", lambda m: f"{_L}{m[1]}.to_local_embed.{_SEQ[m[2]]}"),
]  # fmt: skip
_COND_NAMES = [
    (r"conditioners\.([^.]+)\.embedding", lambda m: f"conditioners.{m[1]}.embedder.embedding.1"),
    (r"conditioners\.([^.]+)\.proj_out", lambda m: f"conditioners.{m[1]}.proj_out"),
]


@dataclass
class Target:
    """One adaptable layer: its reference name (relative to model.model / model.conditioner), the DiT-relative
    name the layer filter sees (None for the conditioner's), and where it sits in our module tree."""

    ref: str
    filter_name: str | None
    parent: Any  # nn.Module or list holding the layer
    key: str | int
    layer: nn.Linear


def _walk(root: nn.Module, ours: str) -> tuple[Any, str | int]:
    parent: Any = root
    parts = ours.split(".")
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    return parent, int(last) if isinstance(parent, list) else last


def targets(dit: nn.Module, conditioner: nn.Module | None) -> dict[str, Target]:
    """Every layer the reference would parametrize, by reference name. The T5Gemma encoder is not one: the
    reference keeps it outside the conditioner's module tree (`self.__dict__["model"]`)."""
    out: dict[str, Target] = {}
    for root, rules, prefix, is_dit in (
        (dit, _DIT_NAMES, "model.", True),
        (conditioner, _COND_NAMES, "", False),
    ):
        if root is None:
            continue
        for ours, mod in root.named_modules():
            if isinstance(mod, LoRALinear):
                raise UserError("LoRA adapters are already applied to this model: remove() them first")
            if not isinstance(mod, (nn.Linear, nn.QuantizedLinear)) or (not is_dit and ".encoder." in ours):
                continue
            name = None
            for pattern, fmt in rules:
                m = re.fullmatch(pattern, ours)
                if m:
                    name = fmt(m)
                    break
            if name is None:
                raise RuntimeError(f"no reference name for SA3 layer '{ours}'")  # a new layer: map it above
            parent, key = _walk(root, ours)
            out[prefix + name] = Target(prefix + name, name if is_dit else None, parent, key, mod)
    return out


# -- adapters ---------------------------------------------------------------------------------------------


class Adapter(nn.Module):
    """One LoRA on one layer: its tensors (float32) and its current strength (a scalar array)."""

    def __init__(self, index: int, kind: str, scaling: float, params: dict[str, mx.array], strength: float):
        super().__init__()
        self.index, self.kind, self.scaling = index, kind, scaling
        self.params = params
        self.strength = mx.array(strength, dtype=mx.float32)


class LoRALinear(nn.Module):
    """An unmerged adapted layer: `weight` is the adapter chain on the original Linear's weight, recomputed at
    every use (the reference's parametrization); called like the Linear it replaces."""

    def __init__(self, base: nn.Linear, adapters: list[Adapter]):
        super().__init__()
        self.base = base
        self.adapters = adapters

    @property
    def weight(self) -> mx.array:
        w = self.base.weight
        for a in self.adapters:
            w = adapt(w, a.kind, a.scaling, a.params, a.strength)
        return w

    @property
    def bias(self) -> mx.array:
        return self.base.bias  # AttributeError without one, as nn.Linear

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight
        if "bias" in self.base:
            return mx.addmm(self.base.bias, x, w.T)
        return x @ w.T


# -- applying ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRASpec:
    """One adapter to apply: file, strength, and the DiT-only sigma interval and layer filter."""

    path: str | Path
    strength: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    layer_filter: str = ""


@dataclass
class _Layer:
    target: Target
    original: mx.array  # the layer's weight before any adapter (2D, its dtype)
    adapters: list[Adapter] = field(default_factory=list)
    wrapper: LoRALinear | None = None


def _spec(item: Any) -> LoRASpec:
    if isinstance(item, LoRASpec):
        spec = item
    elif isinstance(item, (str, Path)):
        spec = LoRASpec(item)
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        spec = LoRASpec(item[0], item[1])
    else:
        raise UserError(f"a LoRA is a path, (path, strength) or LoRASpec, not {item!r}")
    if isinstance(spec.strength, bool) or not isinstance(spec.strength, (int, float)):
        raise UserError(f"LoRA strength must be a number, got {spec.strength!r}")
    lo, hi = spec.interval
    if not lo <= hi:
        raise UserError(f"LoRA sigma interval {spec.interval} must have min <= max")
    return spec


def parse_loras(value: Any) -> list:
    """The `lora` setting: "PATH[:STRENGTH][,PATH[:STRENGTH]...]" (the CLI's --lora) or a list of paths,
    (path, strength) pairs or LoRASpec (the Python API), in stacking order."""
    if not isinstance(value, str):
        return list(value)
    return [LoRASpec(p) if s is None else LoRASpec(p, s) for p, s in parse_adapter_list(value)]


def apply_loras(
    dit: nn.Module,
    conditioner: nn.Module | None,
    loras: list,
    merge: bool = True,
    svd_bases_path: str | Path | None = None,
) -> SA3LoRAs:
    """Apply adapter files to our SA3DiT and Conditioners (the reference's `load_and_apply_loras` followed by
    `set_lora_strength` per index). `loras`: paths, (path, strength) pairs or LoRASpec, stacked in order.
    `merge`: weights written into the layers (fast; re-merged where `activate` changes a layer) or
    `LoRALinear` layers. `svd_bases_path`: the model config's, for -XS adapters. Returns the handle whose
    `remove()` restores the model; nothing is changed if a file is refused."""
    if getattr(dit, "_lora_handle", None) is not None:
        raise UserError("LoRA adapters are already applied to this model: remove() them first")
    specs = [_spec(x) for x in loras]
    files = [read_lora(s.path) for s in specs]
    layers = targets(dit, conditioner)
    bases = None
    if svd_bases_path is not None and any(f.config.adapter_type.endswith("-xs") for f in files):
        bases = read_svd_bases(svd_bases_path)
    plan: dict[str, _Layer] = {}
    for f in files:
        for layer in f.layers:
            if layer not in layers:
                raise UserError(f"{f.path} adapts '{layer}', a layer this Stable Audio 3 model does not have")
            if not _selected(layer, f.config):
                raise UserError(
                    f"{f.path} has tensors for '{layer}', which its own include/exclude leave out"
                )
    for name, t in layers.items():
        chosen = [i for i, f in enumerate(files) if _selected(name, f.config)]
        if not chosen:
            continue
        if isinstance(t.layer, nn.QuantizedLinear):
            raise UserError("LoRA adapters need an unquantized Stable Audio 3 model (convert it without -q)")
        entry = _Layer(t, t.layer.weight)
        for pos, i in enumerate(chosen):
            f = files[i]
            tensors = f.layers.get(name)
            if tensors is not None and pos != i:
                raise UserError(
                    f"{f.path} adapts '{name}', which an earlier LoRA of the stack does not: the reference "
                    "would load these tensors into the wrong slot or drop them"
                )
            part_bases = None
            if bases is not None and f.config.adapter_type.endswith("-xs"):
                part_bases = bases["dit" if t.filter_name is not None else "conditioner"]
            p = adapter_params(f.path, f.config, name, entry.original, tensors, part_bases)
            entry.adapters.append(Adapter(i, f.config.adapter_type, f.config.scaling, p, specs[i].strength))
        plan[name] = entry
    handle = SA3LoRAs(dit, specs, [f.name for f in files], plan, merge)
    handle._install()
    return handle


class SA3LoRAs:
    """Adapters applied to one SA3DiT (+ Conditioners): strengths, the per-step sigma state, removal."""

    def __init__(self, dit: nn.Module, specs: list[LoRASpec], names: list[str], layers: dict, merged: bool):
        self.dit = dit
        self.specs = specs
        self.names = names
        self.layers: dict[str, _Layer] = layers
        self.merged = merged
        self.strengths = [float(s.strength) for s in specs]
        self._on: dict[tuple[str, int], bool] = {}  # (layer, index) -> enabled (interval and filter)
        self._installed = False

    def _effective(self, layer: _Layer, a: Adapter) -> float:
        return self.strengths[a.index] if self._on.get((layer.target.ref, a.index), True) else 0.0

    def _merge(self, layer: _Layer) -> None:
        w = layer.original
        for a in layer.adapters:
            w = adapt(w, a.kind, a.scaling, a.params, self._effective(layer, a))
        mx.eval(w)
        layer.target.layer.weight = w

    def _forget_compiled(self) -> None:
        jit = getattr(self.dit, "_jit", None)  # SA3DiT's compiled-graph cache holds the old module tree
        if jit is not None:
            jit.fns.clear()

    def _install(self) -> None:
        for layer in self.layers.values():
            if self.merged:
                self._merge(layer)
            else:
                layer.wrapper = LoRALinear(layer.target.layer, layer.adapters)
                layer.target.parent[layer.target.key] = layer.wrapper
        self._installed = True
        self.dit._lora_handle = self  # a plain attribute (not in the parameter tree): one stack at a time
        self._forget_compiled()

    def _refresh(self, layer: _Layer) -> None:
        if self.merged:
            self._merge(layer)
        else:
            for a in layer.adapters:
                a.strength = mx.array(self._effective(layer, a), dtype=mx.float32)

    def _check(self) -> None:
        if not self._installed:
            raise UserError("these LoRA adapters were removed")

    def set_strength(self, strength: float, index: int | None = None) -> None:
        """`set_lora_strength`: every LoRA's strength, or LoRA `index`'s (DiT and conditioner)."""
        self._check()
        if index is not None and not 0 <= index < len(self.strengths):
            raise UserError(f"LoRA index {index} out of range (0..{len(self.strengths) - 1})")
        for i in range(len(self.strengths)):
            if index is None or i == index:
                self.strengths[i] = float(strength)
        for layer in self.layers.values():
            if any(index is None or a.index == index for a in layer.adapters):
                self._refresh(layer)

    def strengths_at(self, t: float) -> tuple[float, ...]:
        """Each LoRA's strength on the DiT at sigma t: 0 outside its interval (the layer filter aside)."""
        return tuple(
            s if spec.interval[0] <= t <= spec.interval[1] else 0.0
            for s, spec in zip(self.strengths, self.specs, strict=True)
        )

    def activate(self, t: float) -> bool:
        """Put the DiT's adapters in the state `DiffusionTransformer.forward` sets at sigma t (= t[0]): call
        it before every DiT evaluation. True if a layer changed: conditioning computed with the DiT
        (`SA3DiT.condition` / `cfg_condition`: cross-attention K/V, global and local embeddings) must then be
        recomputed, as the reference recomputes it inside each forward."""
        self._check()
        t = float(t)
        changed = False
        for layer in self.layers.values():
            name = layer.target.filter_name
            if name is None:  # the conditioner's: no interval, no filter
                continue
            dirty = False
            for a in layer.adapters:
                spec = self.specs[a.index]
                on = spec.interval[0] <= t <= spec.interval[1] and not filtered(name, spec.layer_filter)
                key = (layer.target.ref, a.index)
                if self._on.get(key, True) != on:
                    self._on[key] = on
                    dirty = True
            if dirty:
                self._refresh(layer)
                changed = True
        return changed

    def remove(self) -> None:
        """Restore every adapted layer's original weight (both modes)."""
        if not self._installed:
            return
        for layer in self.layers.values():
            if self.merged:
                layer.target.layer.weight = layer.original
            else:
                layer.target.parent[layer.target.key] = layer.target.layer
        self._installed = False
        self.dit._lora_handle = None
        self._forget_compiled()
