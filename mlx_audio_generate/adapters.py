"""Family-neutral weight adapters at inference: low-rank (LoRA) and Kronecker (LyCORIS LoKr) deltas on MLX
linears and 1-D convolutions, each scaled by a strength, several stacked on one layer, either unmerged
(a wrapper adds them at every call, as PEFT's and LyCORIS's forwards do) or merged into the weights.

A family's loader reads its files, resolves its layer names and builds `Delta`s; `install` puts them on the
model and returns the handle whose `remove()` restores it. The effective weight of an adapted layer is
W + sum_i strength_i * delta_i, every delta in float32 (the references' adapter arithmetic) and the sum
cast back to W's dtype when merged.

`parse_adapter_list` is the command-line syntax every family's `lora` setting shares:
"PATH[:STRENGTH][,PATH[:STRENGTH]...]".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .errors import UserError


def parse_adapter_list(value: str, flag: str = "--lora") -> list[tuple[str, float | None]]:
    """ "PATH[:STRENGTH][,PATH[:STRENGTH]...]" -> [(path, strength or None)], in stacking order. A colon
    followed by something that is not a number belongs to the path."""
    out: list[tuple[str, float | None]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            raise UserError(f"{flag} {value!r} has an empty entry; write PATH[:STRENGTH][,PATH[:STRENGTH]]")
        path, sep, strength = part.rpartition(":")
        if sep and path:
            try:
                out.append((path, float(strength)))
                continue
            except ValueError:
                pass  # a colon inside the path: no strength given
        out.append((part, None))
    return out


def kron(a: mx.array, b: mx.array) -> mx.array:
    """torch.kron of two matrices: (p, q) x (r, s) -> (p r, q s)."""
    p, q = a.shape
    r, s = b.shape
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(p * r, q * s)


# -- deltas -----------------------------------------------------------------------------------------------


@dataclass
class LowRank:
    """LoRA: delta W = scale * B @ A, A (r, in), B (out, r), float32."""

    a: mx.array
    b: mx.array
    scale: float

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.b.shape[0], self.a.shape[1])

    def weight(self) -> mx.array:
        return (self.b @ self.a) * self.scale

    def linear(self, x: mx.array) -> mx.array:
        """delta(x) the way PEFT's forward computes it: lora_B(lora_A(x)) * scaling."""
        return ((x @ self.a.T) @ self.b.T) * self.scale


@dataclass
class Kronecker:
    """LoKr: delta W = scale * kron(w1, w2), w1 / w2 given whole or as a low-rank pair (w1 = w1_a @ w1_b,
    w2 = w2_a @ w2_b), float32. `shape`: the adapted weight's in PyTorch's layout ((out, in) or a conv's
    (out, in, k)): kron's (out, in * k) is viewed as it, as LyCORIS's `get_weight(shape)` does."""

    w1: mx.array
    w2: mx.array
    scale: float
    shape: tuple[int, ...]

    def weight(self) -> mx.array:
        return (kron(self.w1, self.w2) * self.scale).reshape(self.shape)

    def linear(self, x: mx.array) -> mx.array:
        """delta(x) as LyCORIS's (non-bypass) forward: x @ delta W^T."""
        return x @ self.weight().T


Delta = LowRank | Kronecker


# -- adapted layers ---------------------------------------------------------------------------------------


class _Stack(nn.Module):
    """The deltas of one layer with each one's strength (scalar float32 arrays: a compiled graph takes new
    strengths without retracing)."""

    def __init__(self, base: nn.Module, deltas: list[Delta], strengths: list[float]):
        super().__init__()
        self.base = base
        self._deltas = deltas  # underscored: not parameters of the model
        self._strengths = [mx.array(s, dtype=mx.float32) for s in strengths]

    def set_strength(self, i: int, s: float) -> None:
        self._strengths[i] = mx.array(s, dtype=mx.float32)

    def delta_weight(self) -> mx.array:
        """sum_i strength_i * delta_i in PyTorch's weight layout, float32."""
        total = None
        for d, s in zip(self._deltas, self._strengths, strict=True):
            w = d.weight() * s
            total = w if total is None else total + w
        return total

    @property
    def bias(self) -> mx.array:
        return self.base.bias  # AttributeError without one, as the layer's own


class AdaptedLinear(_Stack):
    """An unmerged adapted nn.Linear: base(x) + sum_i strength_i * delta_i(x)."""

    @property
    def weight(self) -> mx.array:
        w = self.base.weight
        return (w.astype(mx.float32) + self.delta_weight()).astype(w.dtype)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        xf = x.astype(mx.float32)
        for d, s in zip(self._deltas, self._strengths, strict=True):
            y = y + (d.linear(xf) * s).astype(y.dtype)
        return y


def torch_to_mlx_conv1d(w: mx.array) -> mx.array:
    """A PyTorch Conv1d weight (out, in, k) in MLX's layout (out, k, in)."""
    return w.transpose(0, 2, 1)


class AdaptedConv1d(_Stack):
    """An unmerged adapted nn.Conv1d: base(x) + conv(x, sum_i strength_i * delta_i) (no bias), as LyCORIS's
    forward adds the delta weight's convolution to the original output."""

    @property
    def weight(self) -> mx.array:
        w = self.base.weight
        return (w.astype(mx.float32) + torch_to_mlx_conv1d(self.delta_weight())).astype(w.dtype)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        b = self.base
        stride, padding, dilation, groups = (
            getattr(b, k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
        )
        dw = torch_to_mlx_conv1d(self.delta_weight())
        dy = mx.conv1d(x.astype(mx.float32), dw, stride, padding, dilation, groups)
        return y + dy.astype(y.dtype)


def check_adaptable(layer: Any, name: str, what: str) -> None:
    """UserError unless `layer` is a plain (unquantized) nn.Linear or nn.Conv1d."""
    if isinstance(layer, nn.QuantizedLinear):
        raise UserError(f"{what} needs an unquantized model ('{name}' is quantized: convert it without -q)")
    if isinstance(layer, _Stack):
        raise UserError("adapters are already applied to this model: remove() them first")
    if not isinstance(layer, (nn.Linear, nn.Conv1d)):
        raise UserError(f"{what} adapts '{name}', which is a {type(layer).__name__}, not a linear layer")


def weight_shape(layer: nn.Module) -> tuple[int, ...]:
    """The layer's weight shape in PyTorch's layout ((out, in) or Conv1d's (out, in, k))."""
    w = layer.weight
    return (w.shape[0], w.shape[2], w.shape[1]) if isinstance(layer, nn.Conv1d) else tuple(w.shape)


# -- LyCORIS LoKr layout ----------------------------------------------------------------------------------


def lokr_factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS's `factorization`: dimension = m * n with m <= n, m the divisor closest to `factor` (-1: the
    most balanced split)."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


@dataclass(frozen=True)
class LoKrOptions:
    """The options of LyCORIS's `create_lycoris(algo="lokr")` that decide a module's tensors and scale."""

    dim: int
    alpha: float
    factor: int = -1
    decompose_both: bool = False
    full_matrix: bool = False
    rs_lora: bool = False
    unbalanced_factorization: bool = False


def lokr_layout(shape: tuple[int, ...], o: LoKrOptions) -> tuple[dict[str, tuple[int, ...]], float]:
    """(tensor name -> shape, scale) of the LokrModule LyCORIS builds for a weight of PyTorch `shape`
    ((out, in) or a Conv1d's (out, in, k), no Tucker), as `LokrModule.__init__` does."""
    out_dim, in_dim, *k = shape
    in_m, in_n = lokr_factorization(in_dim, o.factor)
    out_l, out_k = lokr_factorization(out_dim, o.factor)
    if o.unbalanced_factorization:
        out_l, out_k = out_k, out_l
    tensors: dict[str, tuple[int, ...]] = {}
    if o.decompose_both and o.dim < max(out_l, in_m) / 2 and not o.full_matrix:
        tensors |= {"lokr_w1_a": (out_l, o.dim), "lokr_w1_b": (o.dim, in_m)}
    else:
        tensors["lokr_w1"] = (out_l, in_m)
    full_w2 = o.dim >= max(out_k, in_n) / 2 or o.full_matrix
    if full_w2:
        tensors["lokr_w2"] = (out_k, in_n, *k)
    else:
        kk = k[0] if k else 1
        tensors |= {"lokr_w2_a": (out_k, o.dim), "lokr_w2_b": (o.dim, in_n * kk)}
    alpha = o.dim if not o.alpha else o.alpha
    if "lokr_w1" in tensors and full_w2:
        alpha = o.dim  # both halves whole: LyCORIS uses scale 1 (alpha = dim)
    r_factor = o.dim**0.5 if o.rs_lora else o.dim
    return tensors, float(alpha) / float(r_factor)


def lokr_delta(tensors: dict[str, mx.array], scale: float, shape: tuple[int, ...]) -> Kronecker:
    """The Kronecker delta of one module's float32 tensors (named as LyCORIS saves them)."""
    w1 = tensors["lokr_w1"] if "lokr_w1" in tensors else tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
    if "lokr_w2" in tensors:
        w2 = tensors["lokr_w2"]
        w2 = w2.reshape(w2.shape[0], -1)  # a conv's (out_k, in_n, k): kron's columns are (in, k) row-major
    else:
        w2 = tensors["lokr_w2_a"] @ tensors["lokr_w2_b"]
    return Kronecker(w1, w2, scale, tuple(shape))


# -- installing -------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where an adapted layer sits: parent (module or list) and key, the layer, and its deltas (with the
    index of the adapter each comes from)."""

    name: str
    parent: Any
    key: str | int
    layer: nn.Module
    deltas: list[tuple[int, Delta]] = field(default_factory=list)
    original: mx.array | None = None
    wrapper: _Stack | None = None


def locate(root: nn.Module, name: str) -> tuple[Any, str | int, Any]:
    """(parent, key, module) of dotted `name` under `root` (list items by index); KeyError if absent."""
    parent: Any = root
    parts = name.split(".")
    for p in parts[:-1]:
        parent = _child(parent, p)
    key: str | int = int(parts[-1]) if isinstance(parent, list) else parts[-1]
    return parent, key, _child(parent, parts[-1])


def _child(parent: Any, part: str) -> Any:
    if isinstance(parent, list):
        if not part.isdigit() or int(part) >= len(parent):
            raise KeyError(part)
        return parent[int(part)]
    if isinstance(parent, nn.Module) and part in parent:
        return parent[part]
    raise KeyError(part)


class Adapters:
    """Deltas installed on one model: strengths per adapter, merged or unmerged, removal."""

    def __init__(self, root: nn.Module, targets: dict[str, Target], strengths: list[float], merged: bool):
        self.root = root
        self.targets = targets
        self.strengths = [float(s) for s in strengths]
        self.merged = merged
        self._installed = False

    def _merge(self, t: Target) -> None:
        w = t.original
        delta = None
        for i, d in t.deltas:
            part = d.weight() * self.strengths[i]
            delta = part if delta is None else delta + part
        if isinstance(t.layer, nn.Conv1d):
            delta = torch_to_mlx_conv1d(delta)
        merged = (w.astype(mx.float32) + delta).astype(w.dtype)
        mx.eval(merged)
        t.layer.weight = merged

    def install(self) -> Adapters:
        if getattr(self.root, "_adapters_handle", None) is not None:
            raise UserError("adapters are already applied to this model: remove() them first")
        for t in self.targets.values():
            t.original = t.layer.weight
            if self.merged:
                self._merge(t)
            else:
                cls = AdaptedConv1d if isinstance(t.layer, nn.Conv1d) else AdaptedLinear
                t.wrapper = cls(t.layer, [d for _, d in t.deltas], [self.strengths[i] for i, _ in t.deltas])
                t.parent[t.key] = t.wrapper
        self._installed = True
        self.root._adapters_handle = self  # a plain attribute (not a parameter): one stack at a time
        return self

    def set_strength(self, index: int, strength: float) -> None:
        """Adapter `index`'s strength (both modes; merged layers are re-merged)."""
        if not self._installed:
            raise UserError("these adapters were removed")
        if not 0 <= index < len(self.strengths):
            raise UserError(f"adapter index {index} out of range (0..{len(self.strengths) - 1})")
        self.strengths[index] = float(strength)
        for t in self.targets.values():
            if not any(i == index for i, _ in t.deltas):
                continue
            if self.merged:
                self._merge(t)
            else:
                for j, (i, _) in enumerate(t.deltas):
                    if i == index:
                        t.wrapper.set_strength(j, strength)

    def remove(self) -> None:
        """Restore every adapted layer (both modes)."""
        if not self._installed:
            return
        for t in self.targets.values():
            if self.merged:
                t.layer.weight = t.original
            else:
                t.parent[t.key] = t.layer
        self._installed = False
        self.root._adapters_handle = None

    def __enter__(self) -> Adapters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
