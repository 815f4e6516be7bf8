"""Weight quantization of a family's generative core (an LM, a DiT) with MLX's `nn.quantize`.

Only `nn.Linear` layers of the core module a family names (`Family.quantize`, e.g. `lm.*` or `dit.*`) are
quantized (affine, `bits` bits per weight, one scale + bias per `group_size` input columns). Text encoders,
codecs / VAEs, conditioners and embeddings stay in the converted dtype. Also left alone (each family's
QuantizeSpec lists its own):
- layers whose input width is not a multiple of `group_size` (MLX quantizes whole groups);
- layers the model reads through their dense `.weight` (dtype probes such as the DiT's `project_in`): a
  packed weight cannot stand in there. (Attention and feed-forward outputs, whose residual adds ride
  in an `addmm` when dense, are quantized: the models take `x + layer(o)` for an nn.QuantizedLinear.)
- the text/melody projections into the LM, and the DiT's timestep / conditioning embedders (`to_*_embed`),
  input/output projections and 1x1 pre/post convs (small, and the DiT's ends set the latent's precision).

The converted folder records `{"quantization": {"bits", "group_size", "modules"}}` in config.json metadata;
which layers are quantized is read back from the file itself (a `<layer>.scales` tensor), so loading
re-applies exactly the quantization that was written and then loads strictly.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import UserError
from .family import ConvertJob, QuantizeSpec
from .progress import eval_weights
from .weights import dtype_name

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)  # what mx.quantize supports


def residual_linear(residual: mx.array, x: mx.array, layer: nn.Module) -> mx.array:
    """`residual + layer(x)` for a bias-free linear: one GEMM (`mx.addmm`) when dense, the plain sum when
    the layer is an nn.QuantizedLinear (its packed weight cannot go into addmm)."""
    if isinstance(layer, nn.QuantizedLinear):
        return residual + layer(x)
    return mx.addmm(residual, x, layer.weight.T)


def check_options(bits: Any, group_size: Any) -> None:
    """UserError unless (bits, group_size) is a quantization MLX supports (bits None: no quantization)."""
    if bits is None:
        return
    if isinstance(bits, bool) or bits not in BITS:
        raise UserError(f"--q-bits must be one of {', '.join(map(str, BITS))}, not {bits!r}")
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise UserError(
            f"--q-group-size must be one of {', '.join(map(str, GROUP_SIZES))}, not {group_size!r}"
        )


def _predicate(spec: QuantizeSpec, group_size: int):
    def pred(path: str, module: nn.Module) -> bool:
        if not isinstance(module, nn.Linear) or isinstance(module, nn.QuantizedLinear):
            return False
        if path.rsplit(".", 1)[-1] in spec.dense_only or path.startswith(spec.skip_prefixes):
            return False
        return module.weight.shape[-1] % group_size == 0

    return pred


def quantize_model(model: nn.Module, spec: QuantizeSpec, bits: int, group_size: int) -> dict[str, Any]:
    """Quantize the family's core module (`spec.module`) of a loaded `model` in place; returns the config
    metadata entry."""
    check_options(bits, group_size)
    core = getattr(model, spec.module)
    nn.quantize(core, group_size=group_size, bits=bits, class_predicate=_predicate(spec, group_size))
    n = sum(isinstance(m, nn.QuantizedLinear) for _, m in core.named_modules())
    if n == 0:
        raise UserError(
            f"no {spec.module.upper()} layer has an input width divisible by --q-group-size {group_size}; "
            "pick a smaller group size"
        )
    return {"bits": bits, "group_size": group_size, "modules": spec.module, "layers": n}


def model_weights(model: nn.Module) -> dict:
    """The model's parameters as the flat {name: array} that model.safetensors holds."""
    return dict(tree_flatten(model.parameters()))


def load_and_quantize(
    model: nn.Module, weights: dict, job: ConvertJob, spec: QuantizeSpec, misfit: str, meta: dict[str, Any]
) -> tuple[dict, dict[str, Any]]:
    """A conversion's last step before writing: `weights` loaded strictly into `model` (a missing parameter
    or a wrong shape is the UserError "{misfit}: ..." before anything is written), evaluated tensor by tensor
    (the conversion's work, `job.progress(done, total)`), then quantized when the job asks. Returns the
    weights to write and the folder's metadata: {"dtype", **meta, "quantization" when quantized}."""
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"{misfit}: {e}") from None
    eval_weights(weights, job.progress)
    meta = {"dtype": job.dtype or dtype_name(weights), **meta}
    if job.quantize_bits is not None:
        meta["quantization"] = quantize_model(model, spec, job.quantize_bits, job.quantize_group_size)
        weights = model_weights(model)
    return weights, meta


def apply_saved_quantization(model: nn.Module, weights: dict, meta: dict[str, Any], where: str) -> None:
    """Before a strict load: quantize exactly the layers whose `.scales` the saved weights hold."""
    q = meta.get("quantization")
    if q is None:
        return
    if not isinstance(q, dict):
        raise UserError(f"'{where}' has a malformed quantization entry; convert the model again")
    try:
        check_options(q.get("bits"), q.get("group_size"))
    except UserError:
        raise UserError(f"'{where}' records an unsupported quantization {q}; convert again") from None
    nn.quantize(
        model,
        group_size=q["group_size"],
        bits=q["bits"],
        class_predicate=lambda path, m: isinstance(m, nn.Linear) and f"{path}.scales" in weights,
    )
