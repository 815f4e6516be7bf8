"""Stable Audio 3 adapter math (`LoRAParametrization` of `stable_audio_3/models/lora/model.py`): the adapter
types, each one's tensors and initial values, the weight it produces (`adapt`), and the frozen SVD bases of
the -XS types (`lora-xs`, `dora-rows-xs`, `dora-cols-xs`, `bora-xs`: delta = U @ M_xs @ V.T, U (fan_out, r),
V (fan_in, r)).

-XS bases, in the reference's order of preference: the adapter file itself (U / V are persistent buffers, so a
state dict may carry them), the model config's `svd_bases_path` (a torch file `{"model.model.<layer>.weight" |
"conditioner.<layer>.weight": {"U": ..., "V": ...}}`, read only through `torch.load(weights_only=True)`),
else an SVD of the layer's original weight at load time.

The SVD at load: the reference calls `torch.linalg.svd(W0.float(), full_matrices=False)` (LAPACK sgesdd of
whatever LAPACK torch was built with: MKL, OpenBLAS, Accelerate) and makes the largest-magnitude entry of each
U column positive (`_canonicalize_svd_signs`). The same sign rule is applied here to numpy's SVD computed in
float64 (then rounded to float32): bit-identical bases are not possible without torch's own LAPACK build (two
float32 LAPACKs already disagree at ~1e-6 / singular gap), so ours are the exact bases to float32 rounding
and the reference's are within its own float32 SVD error of them. Where two of the top singular values are
(nearly) equal the singular vectors are not determined by the weight at all, and no port can reproduce them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import UserError
from ..weights import torch_load

ADAPTER_TYPES = (
    "lora", "dora", "dora-rows", "dora-cols", "bora", "lora-xs", "dora-rows-xs", "dora-cols-xs", "bora-xs",
)  # fmt: skip
# per resolved type, the tensors a file may hold for a layer: the trainable ones (`_get_adapter_param_names`)
# plus the persistent buffers load_state_dict also fills (U, V; the dropout mask, unused at inference)
PARAMS = {
    "lora": ("lora_A", "lora_B"),
    "dora-rows": ("lora_A", "lora_B", "magnitude"),
    "dora-cols": ("lora_A", "lora_B", "magnitude"),
    "bora": ("lora_A", "lora_B", "magnitude_r", "magnitude_c"),
    "lora-xs": ("M_xs", "U", "V"),
    "dora-rows-xs": ("M_xs", "magnitude", "U", "V"),
    "dora-cols-xs": ("M_xs", "magnitude", "U", "V"),
    "bora-xs": ("M_xs", "magnitude_r", "magnitude_c", "U", "V"),
}

_EPS = 1e-12  # the reference's norm epsilon


def adapt(w: mx.array, kind: str, scaling: float, p: dict[str, mx.array], strength: Any) -> mx.array:
    """One `LoRAParametrization.forward` on a 2D weight w (any dtype): the adapter math in float32, the
    result in w's dtype. `strength` a float or a scalar array; DoRA / BoRA at strength 0 return w itself."""
    xs = kind.endswith("-xs")
    delta = p["U"] @ p["M_xs"] @ p["V"].T if xs else p["lora_B"] @ p["lora_A"]
    scale = scaling * strength
    if kind in ("lora", "lora-xs"):
        return w + (scale * delta).astype(w.dtype)
    v = w.astype(mx.float32) + scale * delta
    if kind.startswith("bora"):
        vr = v / (mx.sqrt(mx.sum(v * v, axis=1, keepdims=True)) + _EPS)
        inter = p["magnitude_r"][:, None] * vr
        hc = inter / (mx.sqrt(mx.sum(inter * inter, axis=0, keepdims=True)) + _EPS)
        out = hc * p["magnitude_c"][None, :]
    else:
        axis = 0 if kind.startswith("dora-cols") else 1
        v_hat = v / (mx.sqrt(mx.sum(v * v, axis=axis, keepdims=True)) + _EPS)
        out = v_hat * mx.expand_dims(p["magnitude"], axis)
    out = out.astype(w.dtype)
    if isinstance(strength, mx.array):
        return mx.where(strength == 0, w, out)
    return w if strength == 0 else out


def adapter_params(
    path: Path, config: Any, layer: str, w0: mx.array, tensors: dict[str, mx.array] | None, bases: dict | None
) -> dict[str, mx.array]:
    """One adapter's tensors on one layer (`config` a LoRAConfig): the file's (shape-checked), else the
    reference's initial values; -XS bases from the file, else `bases` (svd_bases_path), else an SVD."""
    kind, r = config.adapter_type, config.rank
    fan_out, fan_in = w0.shape
    tensors = dict(tensors or {})
    tensors.pop("lora_dropout_mask", None)  # dropout is off at inference
    w32 = w0.astype(mx.float32)
    shapes = {
        "lora_A": (r, fan_in), "lora_B": (fan_out, r), "M_xs": (r, r), "U": (fan_out, r), "V": (fan_in, r),
        "magnitude": (fan_in if kind.startswith("dora-cols") else fan_out,),
        "magnitude_r": (fan_out,), "magnitude_c": (fan_in,),
    }  # fmt: skip
    p: dict[str, mx.array] = {}
    for name in PARAMS[kind]:
        if name in tensors:
            if tuple(tensors[name].shape) != shapes[name]:
                raise UserError(
                    f"{path}: '{layer}' {name} has shape {tuple(tensors[name].shape)}, "
                    f"this model's layer needs {shapes[name]} (rank {r})"
                )
            p[name] = tensors[name]
        elif name in ("lora_A", "lora_B", "M_xs"):
            p[name] = mx.zeros(shapes[name])  # B = 0 / M_xs = 0: the initial adapter adds nothing
        elif name.startswith("magnitude"):  # W0.norm(dim) of the original weight, dim 1 = per output row
            axis = 0 if name == "magnitude_c" or (name == "magnitude" and kind.startswith("dora-cols")) else 1
            p[name] = mx.sqrt(mx.sum(w32 * w32, axis=axis))
    if kind.endswith("-xs") and not ("U" in p and "V" in p):
        if bases is not None and layer in bases:
            u = mx.array(bases[layer]["U"][:, :r])
            v = mx.array(bases[layer]["V"][:, :r])
            for name, a in (("U", u), ("V", v)):
                if tuple(a.shape) != shapes[name]:
                    raise UserError(
                        f"SVD bases of '{layer}' have {name} {tuple(a.shape)}, need {shapes[name]}"
                    )
        else:
            un, vn = xs_bases(np.array(w32), r, layer)
            u, v = mx.array(un), mx.array(vn)
        p.setdefault("U", u)
        p.setdefault("V", v)
    return p


def canonical_svd(w0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, V) of a 2D weight, full_matrices=False, every column signed as `_canonicalize_svd_signs`:
    U (fan_out, k), V = Vh.T (fan_in, k), k = min(fan_out, fan_in), float32."""
    u, _, vh = np.linalg.svd(np.asarray(w0, dtype=np.float64), full_matrices=False)
    cols = np.arange(u.shape[1])
    signs = np.sign(u[np.abs(u).argmax(axis=0), cols])
    signs[signs == 0] = 1
    return (u * signs[None]).astype(np.float32), (vh * signs[:, None]).T.astype(np.float32)


def xs_bases(w0: np.ndarray, rank: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """The first `rank` bases of `canonical_svd(w0)`."""
    if rank > min(w0.shape):
        raise UserError(f"LoRA-XS rank {rank} exceeds the rank of layer '{layer}' {tuple(w0.shape)}")
    u, v = canonical_svd(w0)
    return u[:, :rank], v[:, :rank]


def read_svd_bases(path: str | Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """A `svd_bases_path` file -> {"dit" | "conditioner": {reference layer name: {"U", "V"}}}, the layer names
    relative to `model.model` / `model.conditioner` (the reference strips "model." / "conditioner.")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SVD bases file {path} does not exist")
    data = torch_load(path, kind="torch file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of layer -> {{'U', 'V'}}, got {type(data).__name__}")
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {"dit": {}, "conditioner": {}}
    for key, value in data.items():
        if not (isinstance(key, str) and isinstance(value, dict) and {"U", "V"} <= set(value)):
            raise UserError(f"{path}: entry {key!r} is not a layer name -> {{'U': ..., 'V': ...}}")
        if not key.endswith(".weight"):
            raise UserError(f"{path}: entry '{key}' does not name a layer weight")
        for prefix, part in (("model.", "dit"), ("conditioner.", "conditioner")):
            if key.startswith(prefix):
                layer = key[len(prefix) : -len(".weight")]
                out[part][layer] = {k: value[k].detach().float().numpy() for k in ("U", "V")}
    return out
