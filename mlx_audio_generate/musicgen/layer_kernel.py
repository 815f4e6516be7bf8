"""A whole MusicGen decoder layer of a decode step as ONE CUDA kernel (MLX CUDA backend, fp16 / bf16).

Why: a decode step is bound by host time per kernel, not by the GPU (docs/benchmarks.md: 12-40 us of host
work per launch whatever the kernel does). With the fused kernels of decode_kernels.py a layer still takes
9-10 launches; this takes one: it also writes the next layer's k / v into that layer's cache (in place), so
only layer 0's cache write is a slice update of its own.

How: a persistent grid, one block per SM (`sm_count`: every block is resident at once; 256 threads up to
1024 wide, else 512: `block_for`), runs the layer's stages in order and waits at a software grid barrier
between them: one release atomic to arrive on an arrival count, acquire loads to wait. The counts live in a
persistent buffer (`_barrier_state`), a slot per layer and step (`step_length`); they are never reset:
every barrier adds one arrival per block, so a slot's count is always a whole number of barriers. Before
each barrier every warp warms L2 with its rows of the next product, so the weights stream in while the grid
waits. Stages, for one position per row:

  self-attention of q over the cache's first L positions (split over the grid's warps; the warp that
  finishes a head's last slice combines them) -> out projection + residual -> [LayerNorm + cross q ->
  cross-attention -> cross out + residual] -> LayerNorm + fc1 + GELU -> fc2 + residual -> [LayerNorm + QKV of
  the next layer: q out, k / v into its cache at L - 1, its cached K / V prefetched into L2]

With a short text (rows x text tokens <= ABSORB_ROWS) the cross-attention's two products are absorbed into the
text's keys and values once per generation (`absorb_cross`, as multi-head latent attention absorbs its
projections): the scores are kq . LayerNorm(x1) with kq = W_q[h]^T k, and x2 = x1 + vo . softmax with
vo = W_o[:, h] v. That is one stage and one grid barrier fewer, and fewer bytes than W_q and W_o (rows x text
x H x D each against D x D). The same maths up to summation order; the rounding of q and of the attention's
output to T is gone (fp32 there). kq and vo stay in memory for the generation: per layer, W_q + W_o's bytes
times rows x text / 64 (large with a 12-token prompt under guidance: 0.35 GB in all).

Every product is a matrix-vector product over the grid's warps (each weight row read once for all rows, 16
bytes per lane, fp32 accumulation) against its input staged in shared memory; results round to T exactly
where the unfused ops store (LayerNorm output, product, residual sum, GELU, attention output), so the layer
agrees with the ops up to fp16 / bf16 rounding and summation order (tests/test_layer_kernel.py, run on the
GPU machine). Data written by one block and read by another after a barrier is read through L2 (`__ldcg`).

A barrier that waits longer than a few seconds (it cannot happen when every block is resident; it would if the
GPU were partitioned under us) sets an error word instead of hanging; `check_barrier` raises after the decode
loop if it was set. Head size 64 only (every MusicGen), widths multiples of 256. `TIMING` builds record block
0's clock at every barrier (bench/layer_kernel_probe.py --timing: where a launch's time goes).
"""

from __future__ import annotations

import ctypes
import functools
import os

import mlx.core as mx
import mlx.nn as nn

from ..devices import on_cuda
from .layer_kernel_cuda import HEADER, INPUTS, OUTPUTS, SOURCE

MAX_ROWS = 16
# "0": the per-op kernels instead (e.g. on a shared or partitioned GPU)
ENV = "MLX_AUDIO_GENERATE_LAYER_KERNEL"
# Dynamic shared memory for the staged rows (B x ffn width): 1 block per SM leaves room for it.
MAX_STAGED_BYTES = 160 * 1024
# Threads per block: None = by width (`block_for`); the probe sets it (bench/layer_kernel_probe.py)
BLOCK: int | None = None
BLOCKS_PER_SM = 1  # every block resident: >1 only where that many fit an SM (bench/layer_kernel_probe.py)
TIMING = False  # the probe's per-barrier timestamps (bench/layer_kernel_probe.py --timing)
# A TIMING launch's words at the end of its scratch (read as uint32): block 0's start and end, its arrival and
# departure at each of the first TM_BARRIERS grid barriers, and at TM_COUNT the barriers it passed
TM_WORDS, TM_BARRIERS, TM_COUNT = 64, 28, 60
MAX_BH = 512  # rows x heads: one counter each per barrier slot
# Absorb the cross-attention's products (`absorb_cross`) up to this many rows x text tokens (at 64, kq + vo
# are as many bytes as W_q + W_o); 0 = never (bench/decode_ab.py --b-set musicgen.layer_kernel.ABSORB_ROWS=0)
ABSORB_ROWS = 64
# decoder_layer's `weights` (INPUTS from w_o on): name -> position
WEIGHT = {name: i for i, name in enumerate(INPUTS[INPUTS.index("w_o") :])}


# CUdevice_attribute values (cuda.h)
_MULTIPROCESSOR_COUNT = 16
_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97


@functools.cache
def device_attribute(attribute: int, device_index: int = 0) -> int:
    """A CUDA device attribute as the driver answers it (0 when it cannot be asked: no driver, no GPU)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, value = ctypes.c_int(), ctypes.c_int()
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), device_index) != 0:
            return 0
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), attribute, dev) != 0:
            return 0
        return int(value.value)
    except (OSError, AttributeError):
        return 0


def sm_count(device_index: int = 0) -> int:
    """Streaming multiprocessors of the CUDA device (0 when the driver cannot be asked)."""
    return device_attribute(_MULTIPROCESSOR_COUNT, device_index)


def _compact(src: str) -> str:
    """CUDA source without comments, indentation or blank lines: MLX copies and hashes the whole source on
    every launch (host time per launch). The sources hold no string literal with "//" in it."""
    lines = []
    for line in src.splitlines():
        code = line.split("//", 1)[0].strip()
        if code:
            lines.append(code)
    return "\n".join(lines) + "\n"


def _fill(src: str) -> str:
    """The source with this module's layout constants in place of its @NAME@ marks."""
    for name in ("SLOTS", "SLOT_INTS", "TM_BARRIERS", "TM_COUNT"):
        src = src.replace(f"@{name}@", str(globals()[name]))
    return _compact(src)


def kernel_header() -> str:
    """The kernel's helper functions as mx.fast.cuda_kernel takes them."""
    return _fill(HEADER)


def kernel_source() -> str:
    """The kernel's body as mx.fast.cuda_kernel takes it."""
    return _fill(SOURCE)


def block_for(d: int) -> int:
    """Threads per block: 256 up to 1024 wide (musicgen-small: 3-19% less per launch in the probes), else 512
    (more weight loads in flight: large 290 vs 273 steps/s; bench/results/2026-12-01-h200-r5/)."""
    if BLOCK is not None:
        return BLOCK
    return 256 if d <= 1024 else 512


@functools.cache
def _kernel(staged_bytes: int) -> object:
    return mx.fast.cuda_kernel(
        name="mag_decoder_layer1",
        input_names=INPUTS,
        output_names=OUTPUTS,
        source=kernel_source(),
        header=kernel_header(),
        shared_memory=staged_bytes,
    )


@functools.cache
def _launch(
    dtype: mx.Dtype,
    rows: int,
    d: int,
    ffn: int,
    cross: bool,
    nxt: bool,
    block: int,
    per_sm: int,
    timing: bool,
    htp: int = 0,
) -> dict:
    """The launch arguments of one model's layer (built once: a decode step launches it once per layer);
    `htp` > 0: the cross-attention is absorbed (`absorb_cross`), its vo `htp` columns wide."""
    heads = d // 64
    nblocks = sm_count(0) * per_sm
    # slices per head of the attention: at most the grid's warps per head (and one per 16 positions)
    maxsplit = max(1, nblocks * block // 32 // (rows * heads))
    # (HTP is a width for the unused absorbed stage's code when not absorbed: any multiple of 256)
    template = [("T", dtype), ("B", rows), ("D", d), ("F", ffn), ("CROSS", cross), ("NEXT", nxt),
                ("MAXSPLIT", maxsplit), ("TIMING", timing), ("ABSORB", htp > 0),
                ("HTP", htp or 256)]  # fmt: skip
    # ws (fp32): the T activations (5 x B x D + B x F), the attention partials, TM_WORDS timestamps
    scratch = (5 * rows * d + rows * ffn) * dtype.size // 4 + rows * heads * maxsplit * 66 + TM_WORDS
    shapes = [(rows, 1, d), (rows, heads, 1, 64) if nxt else (1,), (scratch,)]
    return dict(
        template=template,
        grid=(nblocks * block, 1, 1),
        threadgroup=(block, 1, 1),
        output_shapes=shapes,
        output_dtypes=[dtype, dtype, mx.float32],
    )


# Barrier words: SLOTS slots of SLOT_INTS int32 (an arrival count in the first two, "timed out", unused, then
# a counter per head: lk_last; back to 0 after each use). MLX may run graph nodes without a data path between
# them at once (a CUDA graph's independent branches; it orders a node after the last writer of its buffers,
# not after earlier readers), so launches of one graph must not share a slot: each decode step takes the
# next `layers` slots (`step_length`), each layer its own of them.
# A CUDA graph holds at most a few hundred nodes (MLX_MAX_OPS_PER_BUFFER), far fewer than SLOTS.
SLOTS = 4096
SLOT_INTS = 4 + MAX_BH
_STATE: dict[int, mx.array] = {}  # per grid size (a slot's count is a multiple of its grid's blocks)
_NEXT_SLOT = [0]


def _barrier_state(blocks: int) -> mx.array:
    """The grid barriers' words for grids of `blocks` blocks (kept for the process)."""
    if blocks not in _STATE:
        state = mx.zeros((SLOTS * SLOT_INTS,), dtype=mx.int32)
        mx.eval(state)
        _STATE[blocks] = state
    return _STATE[blocks]


def layer_consts(eps: float, scale: float, layers: int) -> list[mx.array]:
    """Per layer, the kernel's `consts`: [eps, attention scale, the layer's index (its barrier slot in a
    step's range)], built once per generation."""
    return [mx.array([eps, scale, i], dtype=mx.float32) for i in range(layers)]


def step_length(length: int, layers: int, cache_len: int, text_len: int) -> mx.array:
    """A decode step's `len` input: [positions to attend, the first of this step's `layers` barrier slots, the
    cache's max length, the text's length (0: no cross-attention)] (run-time values: no recompile per
    prompt or clip length)."""
    first = _NEXT_SLOT[0]
    _NEXT_SLOT[0] = (first + layers) % SLOTS
    return mx.array([length, first, cache_len, text_len], dtype=mx.int32)


def check_barrier() -> None:
    """Raise if a layer kernel's grid barrier timed out since the last check (its outputs were wrong)."""
    failed = [b for b, s in _STATE.items() if int(s.reshape(SLOTS, SLOT_INTS)[:, 2].max().item()) != 0]
    for blocks in failed:
        del _STATE[blocks]  # fresh words for the next launches
    if failed:
        raise RuntimeError(
            "the fused MusicGen layer kernel timed out at a grid barrier (is the GPU shared or "
            "partitioned?); set MLX_AUDIO_GENERATE_LAYER_KERNEL=0 to use the per-op kernels"
        )


def wanted(setting: bool | None) -> bool:
    """A decoder's `layer_kernel` setting: True / False, or None = on unless the environment says ENV=0."""
    if setting is not None:
        return setting
    return os.environ.get(ENV, "1").strip() != "0"


def staged_bytes(rows: int, ffn: int, dtype: mx.Dtype) -> int:
    return rows * ffn * dtype.size


def supported(x: mx.array, d: int, ffn: int, heads: int) -> bool:
    """Whether the layer kernel takes this decode step (else the caller runs the per-op path)."""
    rows = x.shape[0]
    return (
        on_cuda()
        and x.dtype in (mx.float16, mx.bfloat16)
        and 1 <= rows <= MAX_ROWS
        and rows * heads <= MAX_BH
        and x.size == rows * d
        and d == heads * 64
        and d % 256 == 0
        and ffn % 256 == 0
        and staged_bytes(rows, ffn, x.dtype) <= MAX_STAGED_BYTES
        and sm_count(0) > 0
        # the staged rows + the static arrays must fit one block's shared memory on this GPU (227 KB on an
        # H100 / H200, 99 KB on an RTX 4090)
        and staged_bytes(rows, ffn, x.dtype) + 1024 <= device_attribute(_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    )


def absorbed_width(heads: int, text_len: int) -> int:
    """vo's columns: heads x text tokens, padded to a multiple of 256 (the products' 16-byte lanes)."""
    return -(-heads * text_len // 256) * 256


def absorbs(rows: int, text_len: int, heads: int, ffn: int, dtype: mx.Dtype) -> bool:
    """Whether a generation's layer kernels take the absorbed cross-attention (`absorb_cross`): CUDA, a text
    of at most 64 tokens (one softmax per warp), no more bytes than W_q + W_o, and the probabilities (fp32)
    fit where the rows are staged."""
    return (
        mx.cuda.is_available()
        and 0 < text_len <= 64
        and rows * text_len <= ABSORB_ROWS
        and rows * absorbed_width(heads, text_len) * 4 <= staged_bytes(rows, ffn, dtype)
    )


def absorb_cross(k: mx.array, v: mx.array, w_q: mx.array, w_o: mx.array) -> tuple[mx.array, mx.array]:
    """The cross-attention's keys / values (B, H, T, 64) with its q and out weights (D, D) absorbed, in
    fp32 then rounded to their dtype: kq (B x H x T, D), row (b, h, j) = W_q[h]^T k[b, h, j] (so a score is
    kq . LayerNorm(x)), and vo (B x D, absorbed_width), row (b, n) = W_o[n, h] . v[b, h, j] over the columns
    (h, j), then zeros (so the output is vo . the probabilities). Built once per generation."""
    b, h, t, dh = k.shape
    d = w_q.shape[1]
    f32 = mx.float32
    kq = k.astype(f32) @ w_q.astype(f32).reshape(h, dh, d)  # (B, H, T, D)
    vo = v.astype(f32) @ w_o.astype(f32).reshape(d, h, dh).transpose(1, 2, 0)  # (B, H, T, D)
    vo = vo.reshape(b, h * t, d).transpose(0, 2, 1)  # (B, D, H x T)
    vo = mx.pad(vo, [(0, 0), (0, 0), (0, absorbed_width(h, t) - h * t)])
    return kq.reshape(b * h * t, d).astype(k.dtype), vo.reshape(b * d, -1).astype(v.dtype)


def absorbed_weights(weights: list[mx.array]) -> list[mx.array]:
    """A layer's `decoder_layer` weights with its cross-attention absorbed: `absorb_cross`'s kq and vo in
    w_cq's and w_co's places."""
    w = list(weights)
    q, o = WEIGHT["w_cq"], WEIGHT["w_co"]
    w[q], w[o] = absorb_cross(w[WEIGHT["cross_k"]], w[WEIGHT["cross_v"]], w[q], w[o])
    return w


def decoder_layer(
    x: mx.array,
    q: mx.array,
    cache: mx.array,
    cache_next: mx.array,
    length: mx.array,
    consts: mx.array,
    weights: list[mx.array],
    cross_len: int,
    nxt: bool,
    absorbed: bool = False,
) -> tuple[mx.array, mx.array | None, mx.array]:
    """One decoder layer of a decode step: x (B, 1, D), q (B, H, 1, 64) (this layer's query), `cache`
    (2, B, H, max_len, 64) with this step's k / v already written at L - 1, `cache_next` the next layer's
    cache (any array when not `nxt`), `length` from `step_length`, `consts` from `layer_consts`, `weights`
    in INPUTS order from w_o (cross ones: any arrays when `cross_len` is 0; `absorbed`: kq and vo of
    `absorbed_weights`; the next layer's: any when not `nxt`). Returns y (B, 1, D)
    and, with `nxt`, the next layer's q (B, H, 1, 64) and its cache with this step's k / v written at L - 1
    (the kernel writes them in place: it returns `cache_next` itself, which must be a whole row-contiguous
    buffer read by no other op of this step). Check `supported` first."""
    rows, d, ffn = x.shape[0], x.shape[-1], weights[WEIGHT["w_1"]].shape[0]  # w_1 (F, D)
    kernel = _kernel(staged_bytes(rows, ffn, x.dtype))
    block = block_for(d)
    htp = weights[WEIGHT["w_co"]].shape[-1] if absorbed and cross_len else 0  # vo's columns
    launch = _launch(x.dtype, rows, d, ffn, cross_len > 0, nxt, block, BLOCKS_PER_SM, TIMING, htp)
    nblocks = launch["grid"][0] // block
    state = _barrier_state(nblocks)
    out = kernel(inputs=[x, q, cache, cache_next, length, consts, state, *weights], **launch)
    if TIMING:
        _LAST_SCRATCH[0] = out[2]
    return (out[0], out[1], cache_next) if nxt else (out[0], None, cache_next)


_LAST_SCRATCH: list = [None]  # with TIMING: the last launch's scratch (its timestamps: `timestamps`)


def timestamps(scratch: mx.array) -> tuple[list[int], int]:
    """A TIMING launch's globaltimer readings (ns, low 32 bits) of block 0: [start, end, then arrival and
    departure per grid barrier], and the number of barriers it passed."""
    raw = scratch[-TM_WORDS:].view(mx.uint32).tolist()
    n = int(raw[TM_COUNT])
    return [int(t) for t in raw[: 2 + 2 * min(n, TM_BARRIERS)]], n


def reference_decoder_layer(
    x: mx.array,
    q: mx.array,
    cache: mx.array,
    cache_next: mx.array,
    length: mx.array,
    consts: mx.array,
    weights: list[mx.array],
    cross_len: int,
    nxt: bool,
    absorbed: bool = False,
) -> tuple[mx.array, mx.array | None, mx.array]:
    """`decoder_layer`'s maths as MLX ops, with its arguments and results (the kernel's specification, and the
    tests' stand-in for it where CUDA is absent)."""
    w_o, ln2_g, ln2_b, w_cq, ck, cv, w_co, ln3_g, ln3_b, w_1, w_2, ln1_g, ln1_b, w_qkv = weights
    rows, d = x.shape[0], x.shape[-1]
    heads, n = d // 64, int(length[0].item())
    eps, scale = float(consts[0].item()), float(consts[1].item())

    def heads_of(t: mx.array) -> mx.array:  # (B, 1, D) -> (B, H, 1, 64)
        return t.reshape(rows, 1, heads, 64).transpose(0, 2, 1, 3)

    def rows_of(t: mx.array) -> mx.array:  # (B, H, 1, 64) -> (B, 1, D)
        return t.transpose(0, 2, 1, 3).reshape(rows, 1, d)

    o = mx.fast.scaled_dot_product_attention(q, cache[0, :, :, :n], cache[1, :, :, :n], scale=scale)
    x = x + rows_of(o) @ w_o.T
    if cross_len and absorbed:  # w_cq, w_co: kq, vo (absorb_cross); scores, softmax and output in fp32
        f32, ht = mx.float32, heads * cross_len
        kq = w_cq.reshape(rows, ht, d).astype(f32)
        ln = mx.fast.layer_norm(x, ln2_g, ln2_b, eps).astype(f32)  # (B, 1, D)
        p = mx.softmax((ln @ kq.transpose(0, 2, 1) * scale).reshape(rows, heads, cross_len), axis=-1)
        vo = w_co.reshape(rows, d, -1)[:, :, :ht].astype(f32)
        x = x + (p.reshape(rows, 1, ht) @ vo.transpose(0, 2, 1)).astype(x.dtype)
    elif cross_len:
        qc = heads_of(mx.fast.layer_norm(x, ln2_g, ln2_b, eps) @ w_cq.T)
        x = x + rows_of(mx.fast.scaled_dot_product_attention(qc, ck, cv, scale=scale)) @ w_co.T
    y = x + nn.gelu(mx.fast.layer_norm(x, ln3_g, ln3_b, eps) @ w_1.T) @ w_2.T
    if not nxt:
        return y, None, cache_next
    qkv = (mx.fast.layer_norm(y, ln1_g, ln1_b, eps) @ w_qkv.T).reshape(rows, 1, 3, heads, 64)
    qkv = qkv.transpose(2, 0, 3, 1, 4)  # (3, B, H, 1, 64)
    at = mx.array([n - 1], dtype=mx.int32)
    return y, qkv[0], mx.slice_update(cache_next, qkv[1:].astype(cache_next.dtype), at, axes=(3,))
