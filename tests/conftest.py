"""Shared session fixtures: tiny reference checkpoints (written by transformers) and their conversions."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The whole session (and every subprocess it starts, which inherits the environment) runs against an empty
# home and throw-away caches, never the user's: set before anything reads them (huggingface_hub reads
# HF_HOME at import). The session-finish check below fails the run if the empty home got anything.
SANDBOX = Path(tempfile.mkdtemp(prefix="mlx-audio-generate-tests-"))
FAKE_HOME = SANDBOX / "home"
FAKE_HOME.mkdir()
os.environ.update(
    HOME=str(FAKE_HOME),
    XDG_CACHE_HOME=str(SANDBOX / "xdg-cache"),
    XDG_CONFIG_HOME=str(SANDBOX / "xdg-config"),
    XDG_DATA_HOME=str(SANDBOX / "xdg-data"),
    HF_HOME=str(SANDBOX / "huggingface"),
    MLX_AUDIO_GENERATE_CACHE=str(SANDBOX / "mlx-audio-generate"),
    # the CUDA driver's JIT cache (default ~/.nv/ComputeCache): MLX-CUDA's kernels on the GPU machine
    CUDA_CACHE_PATH=str(SANDBOX / "cuda-compute-cache"),
)
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_ASSETS_CACHE"):
    os.environ.pop(_name, None)  # these would point huggingface_hub past HF_HOME

import pytest  # noqa: E402

import mlx_audio_generate  # noqa: E402, F401  (first: loads an optimised BLAS before mlx.core is imported)
from tests.reference import INSTALL_HINT, missing_reference  # noqa: E402
from tests.reference.musicgen import save_tiny_musicgen  # noqa: E402

# Without torch (e.g. after a plain `uv sync`) a test whose fixture or body stops only because torch or a
# reference library is missing (an ImportError anywhere in its exception's chain, also behind our one-line
# UserError) is reported as skipped, saying how to install them. With torch installed (CI) this never applies.
_HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if not _HAVE_TORCH and report.failed and call.excinfo is not None:
        missing = missing_reference(call.excinfo.value)
        if missing:
            report.outcome = "skipped"
            reason = f"{missing} is not installed; {INSTALL_HINT}"
            report.longrepr = (str(item.path), item.location[1] or 0, reason)
    return report


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything was written into the session's empty home; then remove the sandbox."""
    left = sorted(str(p.relative_to(FAKE_HOME)) for p in FAKE_HOME.rglob("*"))
    if left:
        shown = ", ".join(left[:10]) + (f" (+{len(left) - 10} more)" if len(left) > 10 else "")
        print(f"\nthe test session wrote into HOME ({FAKE_HOME}): {shown}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return  # kept for a look
    shutil.rmtree(SANDBOX, ignore_errors=True)


@pytest.fixture(scope="session")
def musicgen_dir(tmp_path_factory):
    """A tiny mono MusicGen folder exactly as transformers' save_pretrained writes it (+ tokenizer)."""
    return save_tiny_musicgen(tmp_path_factory.mktemp("musicgen-src"))


@pytest.fixture(scope="session")
def musicgen_stereo_dir(tmp_path_factory):
    return save_tiny_musicgen(tmp_path_factory.mktemp("musicgen-stereo-src"), seed=3, audio_channels=2)


@pytest.fixture(scope="session")
def musicgen_converted(musicgen_dir, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    return convert(str(musicgen_dir), tmp_path_factory.mktemp("conv") / "musicgen")


@pytest.fixture(scope="session")
def musicgen_stereo_converted(musicgen_stereo_dir, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    return convert(str(musicgen_stereo_dir), tmp_path_factory.mktemp("conv") / "musicgen-stereo")


# ---------------------------------------------------------------------------------------------- Stable Audio


def _tiny_stable_audio(tmp_path_factory, style: str):
    from tests.reference.stable_audio import save_tiny_stable_audio

    # the builder gives the reference conditioner the exact fp32 T5 of the checkpoint
    return save_tiny_stable_audio(tmp_path_factory.mktemp(f"sa-{style}-src"), style)


@pytest.fixture(scope="session")
def stable_audio_small(tmp_path_factory):
    """(folder, reference model): a tiny "small"-style checkpoint as stable-audio-tools lays it out, with a
    tiny T5 in `folder / "t5"`; the reference ConditionedDiffusionModelWrapper has its T5 in fp32."""
    return _tiny_stable_audio(tmp_path_factory, "small")


@pytest.fixture(scope="session")
def stable_audio_1_0(tmp_path_factory):
    """As stable_audio_small, in the "1.0" style (v objective, two number conditioners, T5 max 128)."""
    return _tiny_stable_audio(tmp_path_factory, "1.0")


@pytest.fixture(scope="session")
def stable_audio_small_converted(stable_audio_small, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    src = stable_audio_small[0]
    return convert(str(src), tmp_path_factory.mktemp("conv") / "sa-small", t5=str(src / "t5"))


@pytest.fixture(scope="session")
def stable_audio_1_0_converted(stable_audio_1_0, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    src = stable_audio_1_0[0]
    return convert(str(src), tmp_path_factory.mktemp("conv") / "sa-1.0", t5=str(src / "t5"))


@pytest.fixture(scope="session")
def melody_dir(tmp_path_factory):
    """A tiny MusicGen-Melody folder written by transformers (+ tokenizer and preprocessor config)."""
    from tests.reference.musicgen import save_tiny_musicgen_melody

    return save_tiny_musicgen_melody(tmp_path_factory.mktemp("melody-src"))


@pytest.fixture(scope="session")
def melody_converted(melody_dir, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    return convert(str(melody_dir), tmp_path_factory.mktemp("conv") / "melody")


@pytest.fixture(scope="session")
def sa3_same_live(tmp_path_factory):
    """The SAME reference outputs (tests/reference/sa3_same.py) made live once per session, for every test
    file that compares with them (test_same.py, test_same_tiles.py); None without ../shared/reference."""
    from tests.reference.sa3 import reference_root

    if reference_root() is None:
        return None
    from tests.reference.sa3_same import make

    return make(tmp_path_factory.mktemp("sa3_same"))
