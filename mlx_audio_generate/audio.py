"""Audio file I/O shared by both model families.

Writes go to a temporary file beside the target and are renamed into place, so an interrupted run never
leaves a half-written file. Reading resamples with a band-limited polyphase filter when needed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import UserError
from .weights import atomic_write

FORMATS = {
    ".wav": ("WAV", "FLOAT"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def _available_formats() -> dict[str, tuple[str, str]]:
    """FORMATS minus what this machine's libsndfile cannot write (MP3 needs libsndfile >= 1.1)."""
    import soundfile as sf

    have = sf.available_formats()
    return {ext: f for ext, f in FORMATS.items() if f[0] in have}


_PATH_MAX = 4096  # Linux's PATH_MAX (macOS: 1024, where the OS's own error is one line too)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _shown(name: str, limit: int = 60) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def check_output_path(path: str | Path, sidecar: bool = False) -> Path:
    """Validate an output path before any expensive work, so a bad path fails in a second, not after a run:
    name length (the file system's limit, 255 bytes; first: a longer name cannot even be looked up), format,
    folder, and with `sidecar` the `<file>.json` beside it as well."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    names = [path.name, path.name + ".json"] if sidecar else [path.name]
    limit = _name_max(parent)
    for name in names:
        size = len(os.fsencode(name))
        if size > limit:
            raise UserError(
                f"output file name '{_shown(name)}' is {size} bytes; the file system allows {limit}; "
                "choose a shorter --output"
            )
    if len(os.fsencode(str(path))) >= _PATH_MAX:
        raise UserError(f"output path '{_shown(str(path))}' is too long; choose a shorter --output")
    try:
        return _check_output_place(path, parent, names[1] if sidecar else None)
    except OSError as e:  # e.g. a folder name in the path over the limit
        raise UserError(f"output '{_shown(str(path))}' cannot be used: {e.strerror or e}") from None


def _check_output_place(path: Path, parent: Path, sidecar: str | None) -> Path:
    if path.is_dir():
        raise UserError(f"output '{path}' is a directory; give a file name such as {path / 'out.wav'}")
    formats = _available_formats()
    if path.suffix.lower() not in formats:
        raise UserError(f"output '{path}' has an unsupported extension; use one of {', '.join(formats)}")
    if not parent.is_dir():
        raise UserError(f"output folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder '{parent}' is not writable; choose another --output")
    if sidecar is not None and (parent / sidecar).is_dir():
        raise UserError(
            f"the metadata file '{parent / sidecar}' would replace a folder; choose another --output"
        )
    return path


_SFC_SET_ADD_PEAK_CHUNK = 0x1050


def _no_peak_chunk(f) -> None:
    """libsndfile adds a PEAK chunk with a timestamp to float WAVs, so the same audio written a second
    later gives different bytes; turn it off so a seed reproduces the file bit for bit."""
    try:
        import soundfile as sf

        sf._snd.sf_command(f._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
    except (AttributeError, TypeError):  # a soundfile without these internals: harmless to skip
        pass


def write_audio(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    metadata: dict | None = None,
    sidecar: bool = True,
) -> Path:
    """Write `audio` (channels × samples, float) atomically; the format follows the extension.

    `metadata` (prompt, model, seed, settings) is embedded as the file's title/comment where the format
    has tags, and (with `sidecar`) written beside it as `<file>.json`."""
    import soundfile as sf

    sidecar = sidecar and metadata is not None
    path = check_output_path(path, sidecar=sidecar)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    fmt, subtype = FORMATS[path.suffix.lower()]
    if fmt != "WAV":
        audio = np.clip(audio, -1.0, 1.0)  # integer/lossy formats cannot hold values beyond full scale

    def write(tmp: str) -> None:
        # bytes: soundfile encodes a str path strictly; a Linux file name may hold bytes that are not UTF-8
        with sf.SoundFile(os.fsencode(tmp), "w", sample_rate, audio.shape[0], subtype, format=fmt) as f:
            _no_peak_chunk(f)
            if metadata:
                # UTF-8 tags: text that cannot be encoded (a lone surrogate) is replaced, never a crash
                title = str(metadata.get("prompt", ""))[:1000].encode("utf-8", "replace").decode()
                if title:  # libsndfile refuses an empty string ("bad string"): metadata without a prompt
                    f.title = title
                f.software = "mlx-audio-generate"
                f.comment = json.dumps(metadata, sort_keys=True)[:4000]
            f.write(audio.T)

    target = path
    try:
        atomic_write(path, write)
        if sidecar:
            target = path.with_name(path.name + ".json")
            text = json.dumps(metadata, indent=2, sort_keys=True)
            atomic_write(target, lambda t: Path(t).write_text(text), suffix=".json")
    except OSError as e:  # a full disk or the file size limit arrive here too (atomic_write)
        raise UserError(f"cannot write '{target}': {e.strerror or e}") from None
    except sf.SoundFileError as e:  # libsndfile's own I/O failures (it reports no errno)
        raise UserError(f"cannot write '{target}': libsndfile: {e}") from None
    return path


def true_peak(audio: np.ndarray, sample_rate: int) -> float:
    """Estimated true peak (linear) as ITU-R BS.1770-4 Annex 2: 4x oversampled sample peak."""
    from scipy.signal import resample_poly

    factor = 4 if sample_rate < 96000 else 2
    return float(np.abs(resample_poly(audio, factor, 1, axis=-1)).max(initial=0.0))


LOUDNESS_RANGE = (-70.0, 0.0)  # the loudness targets (LUFS) the CLI's --normalize and the server take
MIN_LOUDNESS_SECONDS = 0.4  # BS.1770's gating block: a shorter clip has no integrated loudness


def loudness_normalize(
    audio: np.ndarray, sample_rate: int, target_lufs: float = -14.0, max_true_peak_db: float = -1.0
) -> tuple[np.ndarray, dict]:
    """Gain to `target_lufs` integrated loudness (ITU-R BS.1770 via pyloudnorm), lowered if needed so the
    true peak stays at or below `max_true_peak_db` dBTP (never clips). Returns (audio, info)."""
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float64)
    meter = pyloudnorm.Meter(sample_rate)
    if audio.shape[-1] < int(MIN_LOUDNESS_SECONDS * sample_rate):
        raise UserError(
            f"--normalize needs at least {MIN_LOUDNESS_SECONDS:g} s of audio (the BS.1770 gating block)"
        )
    loudness = meter.integrated_loudness(audio.T)
    if not np.isfinite(loudness):  # digital silence: nothing to normalise
        return audio.astype(np.float32), {"loudness_lufs": None, "gain_db": 0.0, "target_lufs": target_lufs}
    gain_db = target_lufs - loudness
    peak = true_peak(audio, sample_rate) * 10 ** (gain_db / 20)
    limit = 10 ** (max_true_peak_db / 20)
    limited = bool(peak > limit)
    if limited:
        gain_db -= 20 * np.log10(peak / limit)
    out = audio * 10 ** (gain_db / 20)
    info = {
        "input_lufs": round(float(loudness), 2),
        "target_lufs": target_lufs,
        "gain_db": round(float(gain_db), 2),
        "output_lufs": round(float(meter.integrated_loudness(out.T)), 2),
        "true_peak_dbtp": round(float(20 * np.log10(max(true_peak(out, sample_rate), 1e-12))), 2),
        "max_true_peak_dbtp": max_true_peak_db,
        "peak_limited": limited,  # the gain was lowered to keep the true peak under the ceiling
    }
    return out.astype(np.float32), info


def loudness_report(info: dict) -> str:
    """One line saying what `loudness_normalize` achieved, and why when it is short of the target."""
    if info.get("loudness_lufs", 0) is None:
        return "loudness: the clip is silent; left as it is"
    got, target = info["output_lufs"], info["target_lufs"]
    if info.get("peak_limited"):
        return (
            f"loudness: {got:g} LUFS, not {target:g}: reaching {target:g} would push the true peak over "
            f"the {info['max_true_peak_dbtp']:g} dBTP ceiling (gain {info['gain_db']:+g} dB, peak "
            f"{info['true_peak_dbtp']:g} dBTP)"
        )
    return f"loudness: {got:g} LUFS (target {target:g}; gain {info['gain_db']:+g} dB)"


def read_audio(
    path: str | Path,
    sample_rate: int | None = None,
    channels: int | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Read an audio file as float32 (channels × samples), optionally resampled and up/down-mixed.

    max_frames: keep at most this many samples (at `sample_rate` when given): only the frames they need are
    read and resampled (plus the resampling filter's reach, so the samples kept are exactly those of reading
    the whole file), so a caller that uses one window of a 10-hour file never holds the 10 hours."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file '{path}' does not exist")
    if max_frames is not None and (type(max_frames) is not int or max_frames < 1):
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            frames = -1 if max_frames is None else _input_frames(max_frames, sr, sample_rate)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise UserError(f"cannot read audio file '{path}': {e}") from None
    audio = data.T
    if audio.shape[1] == 0:
        raise UserError(f"audio file '{path}' is empty")
    if channels is not None:
        audio = match_channels(audio, channels, what=f"'{path}'")
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
    return audio if max_frames is None else audio[:, :max_frames]


def load_clip(
    audio: str | Path | np.ndarray, what: str, sample_rate: int, channels: int, max_frames: int
) -> np.ndarray:
    """An audio input (a file, or a (channels, samples) array at `sample_rate`) as a contiguous float32
    (channels, <= max_frames) clip with `channels` channels (stable-audio-tools' `set_audio_channels`: mono
    repeated, extra channels dropped, a mono model averages); a one-line UserError naming `what` when the
    array has the wrong shape (or is the transpose) or holds NaN / infinite samples."""
    if isinstance(audio, (str, Path)):
        # UserError if missing or unreadable; only the window is read (the rest would be cropped below)
        a = read_audio(audio, sample_rate=sample_rate, max_frames=max_frames)
    else:
        try:
            a = np.asarray(audio, dtype=np.float32)
        except (TypeError, ValueError):
            raise UserError(f"{what} must be a file path or a (channels, samples) array") from None
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise UserError(f"{what} must be a (channels, samples) array, got shape {a.shape}")
        if a.shape[0] > a.shape[1]:
            raise UserError(f"{what} has shape {a.shape}: expected (channels, samples), not the transpose")
    if not np.isfinite(a).all():
        raise UserError(f"{what} contains NaN or infinite samples")
    a = match_channels(a, channels, what, drop_extra=True)
    return np.ascontiguousarray(a[:, :max_frames], dtype=np.float32)


def _input_frames(out_frames: int, sr_in: int, sr_out: int | None) -> int:
    """Input samples that determine the first `out_frames` output samples of `resample(., sr_in, sr_out)`:
    their span plus the reach of scipy's polyphase filter (half_len = 10 * max(up, down) upsampled taps)."""
    if sr_out is None or sr_in == sr_out:
        return out_frames
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = sr_out // g, sr_in // g
    span = -(-out_frames * down // up)
    return span + -(-10 * max(up, down) // up) + 2


def match_channels(
    audio: np.ndarray, channels: int, what: str = "audio", drop_extra: bool = False
) -> np.ndarray:
    """Audio (C, T) -> (channels, T): to mono, the channel mean; from mono, the channel repeated; more
    channels than wanted: the first `channels` with `drop_extra` (stable-audio-tools' `set_audio_channels`),
    else a UserError naming `what` (as for any other count that cannot be matched)."""
    n = audio.shape[0]
    if n == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if n == 1:
        return np.repeat(audio, channels, axis=0)
    if drop_extra and n > channels:
        return audio[:channels]
    raise UserError(f"{what} has {n} channels; expected 1 or {channels}")


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy), channels × samples."""
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(audio, sr_out // g, sr_in // g, axis=-1).astype(np.float32)
