"""bench/dit_profile.py's Nsight Compute reader: kernels are read from ncu's --csv log (its own lines before
the table skipped, units converted) and summed by kind and by name."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

HEAD = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
HEAD += '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'


def row(i: int, name: str, unit: str, value: str) -> str:
    return (
        f'"{i}","1","python3","h","{name}","1","7","(128, 1, 1)","(513, 1, 1)","0","9.0",'
        f'"Command line profiler metrics","gpu__time_duration.sum","{unit}","{value}"'
    )


def test_parse_sums_by_kind_and_name(tmp_path):
    import dit_profile

    log = tmp_path / "ncu.csv"
    log.write_text(
        "\n".join(
            [
                "==PROF== Connected to process 1",
                HEAD,
                row(0, "nvjet_sm90_hsh_192x208_64x4_1x2_h_bz_coopB_bias_TNT", "nsecond", "114,000"),
                row(1, "mlx::custom_kernel_mag_row_layer_norm_float16_t_1536", "usecond", "6.5"),
                row(2, "mlx::custom_kernel_mag_row_layer_norm_float16_t_1536", "nsecond", "6500"),
                row(3, "mlx::custom_kernel_mag_qk_rope_float16_t_64", "msecond", "0.0144"),
                row(4, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "nsecond", "35700"),
                row(5, "mlx::custom_kernel_mag_attention_float16_t_128", "nsecond", "21400"),
                row(6, "void mlx::binary_vv<mlx::Add, __half>", "nsecond", "6650"),
            ]
        )
        + "\n==PROF== Disconnected from process 1\n"
    )
    rows = dit_profile.read_ncu(log)
    assert [round(r["us"], 3) for r in rows] == [114.0, 6.5, 6.5, 14.4, 35.7, 21.4, 6.65]
    kinds = [dit_profile.kind_of(r["name"]) for r in rows]
    assert kinds == ["GEMM", "layer norm", "layer norm", "rope (q / k)", "attention (cuDNN)",
                     "attention (ours)", "compiled (fused elementwise)"]  # fmt: skip
    out = tmp_path / "kernels.md"
    dit_profile.parse(log, dit_profile.Report("test", str(out)))
    text = out.read_text()
    assert "| layer norm | 2 | 13.0 | 6.3% |" in text
    assert "| all | 7 | 205 | 100% |" in text


def test_timeline_counts_busy_time_once_and_sorts_the_gaps():
    import dit_profile

    ks = [  # µs: a GEMM, an overlapping layer norm, a 1 µs gap, a 5 µs gap, a 20 µs gap (two calls)
        {"name": "nvjet_sm90_hsh_192x208", "ts": 0.0, "dur": 10.0},
        {"name": "mag_row_layer_norm_float16", "ts": 8.0, "dur": 4.0},
        {"name": "mag_row_glu_float16", "ts": 13.0, "dur": 2.0},
        {"name": "nvjet_sm90_hsh_192x208", "ts": 20.0, "dur": 10.0},
        {"name": "cudnn_generated_fort_native_sdpa", "ts": 50.0, "dur": 30.0},
    ]
    summary, kinds = dit_profile.timeline_rows(ks, pace_ms=0.040)  # the 80 µs span is two calls
    got = dict((r[0], r[1]) for r in summary)
    assert got["kernels a call"] == 2.5
    assert got["kernels running (ms a call)"] == (12 + 2 + 10 + 30) / 2000
    assert got["idle between kernels (ms a call)"] == (1 + 5 + 20) / 2000
    assert got["  gaps < 2 µs (ms)"] == 1 / 2000 and got["  gaps 2-10 µs (ms)"] == 5 / 2000
    assert got["  gaps >= 10 µs (ms; count, largest µs)"] == "0.010; 0.5, 20"
    assert [k[0] for k in kinds] == ["attention (cuDNN)", "GEMM", "layer norm", "GLU gate"]  # by time
    assert kinds[1][1:] == [1.0, 20 / 2000, 10.0]  # GEMM: kernels a call, ms a call, µs each
