"""The CUDA sources of the MusicGen decode kernels and the DiT's attention kernels compile without a GPU.

MLX compiles an `mx.fast.cuda_kernel` with NVRTC on first use, so a typo in a kernel's source would first show
on a user's GPU. Here each source is wrapped exactly as MLX wraps it (mlx/backend/cuda/custom_kernel.cpp:
`build_kernel`: a `__global__` function in `mlx::core::cu` whose parameters are `const <type>* <input>` then
`<type>* <output>`, the template arguments as `constexpr` / `using` lines, then the body) and compiled for
sm_90 with nvcc, where nvcc is installed (this project's CI machine has it; the runs on the GPU itself are
tests/test_decode_kernels.py, tests/test_layer_kernel.py and tests/test_attention_kernel.py). MLX's own
device header is replaced by the CUDA headers it includes that these kernels use (fp16 / bf16 types) and
its stride type.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mlx_audio_generate import attention_kernel as ak
from mlx_audio_generate import gemm_kernel as gk
from mlx_audio_generate import qk_kernel as qk
from mlx_audio_generate import row_kernels as rk
from mlx_audio_generate.musicgen import decode_kernels as dk
from mlx_audio_generate.musicgen import layer_kernel as lk

NVCC = shutil.which("nvcc")
TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float", "int32": "int32_t"}


def wrap(
    name: str, header: str, source: str, inputs: dict, outputs: dict, template: list, strided: bool = False
) -> str:
    """One kernel as MLX's build_kernel writes it (inputs / outputs: name -> MLX dtype name; `strided`: each
    input followed by its `<input>_strides`, which MLX adds for a source that names them)."""
    params = []
    for n, t in inputs.items():
        params.append(f"    const {TYPES[t]}* {n}")
        if strided:
            params.append(f"    const __grid_constant__ Strides {n}_strides")
    params += [f"    {TYPES[t]}* {n}" for n, t in outputs.items()]
    lines = []
    for k, v in template:
        if isinstance(v, bool):
            lines.append(f"  constexpr bool {k} = {'true' if v else 'false'};")
        elif isinstance(v, int):
            lines.append(f"  constexpr int {k} = {v};")
        else:
            lines.append(f"  using {k} = {TYPES[v]};")
    return (
        f"{header}\nnamespace mlx::core::cu {{\nnamespace cg = cooperative_groups;\n"
        f"__global__ void {name}(\n"
        + ",\n".join(params)
        + ") {\n"
        + "\n".join(lines)
        + f"\n{source}\n}}\n}}\n"
    )


def layer_kernel_source(
    i: int, dtype: str, rows: int, d: int, cross: bool, nxt: bool, timing: bool = False, htp: int = 0
) -> str:
    """One layer kernel's unit; `htp` > 0: the absorbed cross-attention, vo that many columns wide."""
    inputs = {n: dtype for n in lk.INPUTS} | {"len": "int32", "consts": "float32", "barrier": "int32"}
    outputs = {n: dtype for n in lk.OUTPUTS} | {"ws": "float32"}
    template = [("T", dtype), ("B", rows), ("D", d), ("F", 4 * d), ("CROSS", cross), ("NEXT", nxt),
                ("MAXSPLIT", 16), ("TIMING", timing), ("ABSORB", htp > 0), ("HTP", htp or 256)]  # fmt: skip
    # each kernel in its own namespace: the headers are repeated per kernel
    return (
        f"namespace k{i} {{\n"
        + wrap(f"k{i}", lk.kernel_header(), lk.kernel_source(), inputs, outputs, template)
        + "}\n"
    )


def attention_kernel_source(i: int, dtype: str, masked: bool, shape: tuple[int, ...]) -> str:
    """The attention kernel; shape (D, H, HK, N, S)."""
    d, h, hk, n, s = shape
    inputs = {x: dtype for x in ("q", "k", "v", *(("mask",) if masked else ()))}
    template = [("T", dtype), ("D", d), ("H", h), ("HK", hk), ("N", n), ("S", s), ("WARPS", ak.WARPS),
                ("KEYS", ak.KEYS), ("SCALE_BITS", 1040187392)]  # fmt: skip
    body = wrap(
        f"a{i}", ak.src.HEADER, ak.kernel_source(masked), inputs, {"out": dtype}, template, strided=True
    )
    return f"namespace a{i} {{\n{body}}}\n"


def qk_kernel_source(
    i: int, dtype: str, norm: bool, shape: tuple[int, ...], parts: int = 2, slices: int = 0
) -> str:
    """The q / k kernel (parts 2) or the q norm (parts 1); shape (B, N, H, D, R); `slices` head vectors a
    warp (0: the default's)."""
    b, n, h, d, r = shape
    inputs = {"src": dtype, "periods": "float32"}
    if norm:
        inputs |= {x: dtype for x in ("q_weight", "q_bias", "k_weight", "k_bias")[: 2 * parts]}
    src = (3 if parts == 2 else 1) * h
    template = [("T", dtype), ("D", d), ("H", h), ("N", n), ("B", b), ("R", r), ("SRC", src),
                ("PARTS", parts), ("SLICES", slices or qk.slices_per_warp(parts, h))]  # fmt: skip
    template += [("EPS_BITS", 897988541)] if norm else []
    outputs = {x: dtype for x in ("q_out", "k_out")[:parts]}
    body = wrap(f"q{i}", "", qk.kernel_source(norm, parts), inputs, outputs, template)
    return f"namespace q{i} {{\n{body}}}\n"


def row_kernel_source(i: int, dtype: str, which: str, width: int, rows: int) -> str:
    """A row kernel: layer_norm (width W) or glu (halves F)."""
    header, source = rk.kernel_source(which)
    outputs = {"y": dtype}
    if which in ("layer_norm", "add_layer_norm"):
        inputs = {"x": dtype, "x2": dtype} | ({"r": dtype} if which == "add_layer_norm" else {})
        inputs |= {"weight": dtype, "bias": dtype}
        outputs = {"sum": dtype, "y": dtype} if which == "add_layer_norm" else outputs
        template = [("T", dtype), ("W", width), ("ROWS", rows), ("SPLIT", rows // 2), ("EPS_BITS", 925353388)]
    else:
        inputs, template = {"h": dtype}, [("T", dtype), ("F", width), ("ROWS", rows)]
    return f"namespace r{i} {{\n{wrap(f'r{i}', header, source, inputs, outputs, template)}}}\n"


def decode_kernel_sources(i: int, dtype: str) -> str:
    out = []
    ln = list(dk._LN_INPUTS)
    kernels = [
        (dk._LN_MATVEC, ln, ["y"], [("GELU", True), ("STAGED", True), ("PARTS", 1)]),
        (dk._LN_QKV, ln, ["q", "kv"], [("GELU", False), ("STAGED", False), ("PARTS", 3)]),
        (dk._MATVEC_ADD, ["x", "w", "res"], ["y"], [("STAGED", True)]),
    ]
    for j, (source, inputs, outputs, extra) in enumerate(kernels):
        types = {n: ("float32" if n == "eps" else dtype) for n in inputs}
        template = [("T", dtype), ("B", 2), ("D", 2048), ("N", 6144), ("WPR", 2), ("RPW", 1), *extra]
        body = wrap(f"d{i}_{j}", dk._HEADER, source, types, {n: dtype for n in outputs}, template)
        out.append(f"namespace d{i}_{j} {{\n{body}}}\n")
    return "".join(out)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
def test_decode_kernel_sources_compile_for_sm90(tmp_path):
    includes = ["cstdint", "cuda_fp16.h", "cuda_bf16.h", "cooperative_groups.h", "cuda/std/array"]
    # MLX's device header's stride type (mlx/backend/cuda/device/utils.cuh, config.h)
    prelude = "".join(f"#include <{h}>\n" for h in includes)
    prelude += "#define MAX_NDIM 10\nusing Strides = cuda::std::array<int64_t, MAX_NDIM>;\n"
    units = [
        layer_kernel_source(0, "float16", 2, 2048, True, True),  # musicgen-large, CFG batch 1
        layer_kernel_source(1, "bfloat16", 2, 1024, False, False),  # a melody decoder's last layer
        layer_kernel_source(2, "float16", 16, 1024, True, True),  # 16 rows
        layer_kernel_source(3, "bfloat16", 8, 1536, True, False),  # medium, last layer
        layer_kernel_source(4, "float16", 2, 1024, True, True, timing=True),  # the probe's timestamps
        layer_kernel_source(5, "float16", 2, 2048, True, True, htp=512),  # large, absorbed, 12-token text
        layer_kernel_source(6, "bfloat16", 4, 1024, True, False, htp=256),  # absorbed, last layer
        attention_kernel_source(0, "float16", False, (128, 8, 8, 257, 257)),  # SA small, self-attention
        attention_kernel_source(1, "bfloat16", True, (64, 12, 12, 64, 64)),  # T5-base with its bias
        attention_kernel_source(2, "float16", False, (64, 24, 12, 1025, 130)),  # KV groups
        qk_kernel_source(0, "float16", False, (2, 1025, 24, 64, 32)),  # SA 1.0's q / k, CFG pair
        qk_kernel_source(1, "bfloat16", True, (1, 257, 8, 128, 64)),  # SA small, QK LayerNorm
        qk_kernel_source(2, "float16", True, (1, 257, 8, 128, 0), parts=1),  # small's cross-attention q
        qk_kernel_source(3, "float16", False, (2, 1025, 24, 64, 32), slices=16),  # 1.0, MAX_SLICES 16
        row_kernel_source(0, "float16", "layer_norm", 1536, 2050),  # SA 1.0's blocks, CFG pair
        row_kernel_source(1, "bfloat16", "layer_norm", 4096, 3),  # the widest
        row_kernel_source(2, "float16", "glu", 6144, 2050),  # SA 1.0's feed-forward
        row_kernel_source(3, "bfloat16", "glu", 8, 1),
        row_kernel_source(4, "float16", "add_layer_norm", 1536, 2050),  # SA 1.0: the FF's add + next norm
        row_kernel_source(5, "bfloat16", "add_layer_norm", 4096, 3),
        decode_kernel_sources(0, "float16"),
        decode_kernel_sources(1, "bfloat16"),
    ]
    src = tmp_path / "kernels.cu"
    src.write_text(prelude + "".join(units))
    run = subprocess.run(
        [
            NVCC,
            "-arch=sm_90",
            "-std=c++17",
            "-c",
            str(src),
            "-o",
            str(tmp_path / "kernels.o"),
            "-Xptxas",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    # Registers per entry function (the mangled name holds its namespace: k* layer kernels, a* attention,
    # q* q / k preparation, r* row kernels).
    # The layer kernel runs up to 512-thread blocks, one per SM: past 128 registers a thread it could not
    # launch. The attention kernel's blocks are WARPS warps.
    regs = dict(
        re.findall(r"Compiling entry function '_ZN\d+(\w\d+)\w*'.*?Used (\d+) registers", run.stderr, re.S)
    )
    layer = [int(r) for name, r in regs.items() if name.startswith("k")]
    attention = [int(r) for name, r in regs.items() if name.startswith("a")]
    assert len([name for name in regs if name.startswith("q")]) == 4, regs
    assert len([name for name in regs if name.startswith("r")]) == 6, regs
    assert len(layer) == 7 and max(layer) <= 65536 // max(lk.block_for(d) for d in (1024, 2048)), regs
    assert len(attention) == 3 and max(attention) <= min(255, 65536 // (32 * ak.WARPS)), regs
    # no register spills (a spilling kernel would be slow, not wrong: worth knowing before a GPU run)
    assert " 0 bytes spill stores" in run.stderr and "bytes spill stores" in run.stderr
    spills = [
        line
        for line in run.stderr.splitlines()
        if "spill stores" in line and " 0 bytes spill stores" not in line
    ]
    assert not spills, spills


def gemm_kernel_source(i: int, dtype: str, m: int, n: int, k: int, bias: bool, res: bool) -> str:
    header, source = gk.kernel_source(bias, res)
    inputs = {"x": dtype, "w": dtype} | ({"bias": dtype} if bias else {}) | ({"res": dtype} if res else {})
    template = [("T", dtype), ("M", m), ("N", n), ("K", k)]
    return f"namespace g{i} {{\n{wrap(f'g{i}', header, source, inputs, {'y': dtype}, template)}}}\n"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
def test_gemm_kernel_sources_compile_for_sm90(tmp_path):
    units = [
        gemm_kernel_source(0, "float16", 257, 3072, 1024, False, False),  # SA small's QKV
        gemm_kernel_source(1, "float16", 257, 1024, 1024, False, True),  # its out projection + residual
        gemm_kernel_source(2, "bfloat16", 257, 8192, 1024, True, False),  # FF in + bias
        gemm_kernel_source(3, "bfloat16", 5, 1024, 4096, True, True),  # both epilogues, a partial tile
    ]
    src = tmp_path / "gemm.cu"
    includes = ["cstdint", "cuda_fp16.h", "cuda_bf16.h", "cooperative_groups.h"]
    src.write_text("".join(f"#include <{h}>\n" for h in includes) + "".join(units))
    run = subprocess.run(
        [NVCC, "-arch=sm_90", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "g.o"), "-Xptxas", "-v"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    regs = re.findall(r"Compiling entry function '_ZN\d+(g\d+)\w*'.*?Used (\d+) registers", run.stderr, re.S)
    assert len(regs) == 4 and max(int(r) for _, r in regs) <= 255, regs
    spills = [ln for ln in run.stderr.splitlines() if "spill stores" in ln and " 0 bytes spill" not in ln]
    assert not spills, spills


def test_float_bits_are_the_template_literals_above():
    from mlx_audio_generate.devices import float_bits

    assert float_bits(1e-6) == 897988541 and float_bits(1e-5) == 925353388  # the eps literals above
    assert float_bits(0.125) == 1040187392  # the attention scale literal above
