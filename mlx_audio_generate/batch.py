"""Batch jobs: many prompts from a JSONL file, sharded over the ranks of MLX's distributed layer.

Each line of the jobs file is one item: `{"prompt": ..., "id"?: ..., "seed"?: ..., <settings>?}` where the
settings are the model family's sampling settings (SETTINGS). Started under `mlx.launch` with N ranks, item
`i` goes to rank `i % N` (static sharding: no scheduler); each rank loads the model once, batches its items
with identical settings, and writes `<out>/<id or index:05d>.<ext>` plus `<file>.json`. At the end every
rank's manifest rows are gathered with `mx.distributed.all_gather` and rank 0 writes `<out>/manifest.jsonl`.
Without a launcher `mx.distributed.init()` is a group of size 1: the same job on one machine.

Resuming: an item is done when its `<file>.json` sidecar is complete (it is rewritten with the run's
timing only after the audio file has been renamed into place) and describes the same request; everything
else is (re)generated, so a killed run never counts a half-written file.

Determinism: an item's seed is its line's "seed", else a hash of (base seed, id or index), never the rank
or the number of ranks; at batch size 1 an item's file is the same bytes on 1 or N ranks, and the same as
`mlx-audio-generate --seed <its seed>` gives (the manifest lists each seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .distributed import barrier, gather_bytes, init_group
from .errors import UserError
from .family import Family
from .progress import is_terminal
from .settings import SECONDS, Setting, check_prompts, check_seconds, check_seed

ITEM_KEYS = ("prompt", "id", "seed")
FORMATS = ("wav", "flac", "ogg", "mp3")
MANIFEST = "manifest.jsonl"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Item:
    index: int  # position among the file's items (0-based)
    line: int  # 1-based line number in the jobs file
    prompt: str
    seed: int
    settings: dict[str, Any] = field(hash=False)
    id: str | None = None

    @property
    def name(self) -> str:
        return self.id if self.id is not None else f"{self.index:05d}"

    def group_key(self) -> tuple:
        return tuple(sorted(self.settings.items()))


# -- validation ---------------------------------------------------------------------------------------


def _integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _family(fam: Family | str) -> Family:
    return registry.get(fam) if isinstance(fam, str) else fam


def batch_settings(fam: Family | str, config: dict | None = None) -> dict[str, Setting]:
    """What a line (or a job-wide flag) may set for `fam`: seconds and its batch settings, by name."""
    fam = _family(fam)
    return {st.name: st for st in [SECONDS, *fam.settings(config)] if st.batch}


def all_setting_names() -> tuple[str, ...]:
    """Every family's batch settings (a key outside all of them is an unknown key, not another family's)."""
    names = [n for fam in registry.families().values() for n in batch_settings(fam)]
    return tuple(dict.fromkeys(names))


def family_defaults(fam: Family | str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The job-wide settings: the family's defaults with the CLI's flags on top (checked: an error names the
    flag)."""
    fam = _family(fam)
    schema = batch_settings(fam)
    wrong = [k for k, v in overrides.items() if v is not None and k not in schema]
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        flags = ", ".join(st.flag for st in schema.values())
        raise UserError(f"{flag} is not a {fam.name} setting; {fam.name} takes {flags}")
    out = {}
    for name, st in schema.items():
        value = overrides.get(name)
        if value is not None:
            try:
                value = st.check(value)
            except UserError as e:
                raise UserError(f"{st.flag}: {e}") from None
        out[name] = st.default if value is None else value
    return out


def item_seed(base_seed: int, key: str) -> int:
    """A seed in [0, 2^32) from (base seed, the item's id or index): independent of ranks and order."""
    digest = hashlib.sha256(f"mlx-audio-generate/{base_seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def read_jobs(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a file that cannot be read, bytes that are not UTF-8
    and malformed JSON (too deep, numbers too long) are errors naming the line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"prompts file '{path}' is a folder; give a JSONL file (one JSON object per line)")
    if not path.exists():
        raise UserError(f"prompts file '{path}' does not exist")
    if not path.is_file():
        raise UserError(f"prompts file '{path}' is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read prompts file '{path}': {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM (some editors write one) is not part of line 1
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte {column}); save it as UTF-8"
        ) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise UserError(f"{path}:{n}: JSON nested too deeply to read") from None
        except ValueError:  # Python refuses integers of over 4300 digits (sys.get_int_max_str_digits)
            raise UserError(f"{path}:{n}: a number in this line has too many digits") from None
        if not isinstance(obj, dict):
            raise UserError(f'{path}:{n}: each line must be a JSON object like {{"prompt": "..."}}')
        out.append((n, obj))
    if not out:
        raise UserError(f"prompts file '{path}' has no items; write one JSON object per line")
    return out


def check_keys(lines: list[tuple[int, dict]], path: str | Path, fam: Family | str | None) -> None:
    """Keys that are neither item keys nor settings of `fam` (None: of any family) are errors naming the
    line. Run with None before the model is resolved (a typo fails at once, not after a download)."""
    fam = None if fam is None else _family(fam)
    every = all_setting_names()
    allowed = ITEM_KEYS + (tuple(batch_settings(fam)) if fam else every)
    for n, obj in lines:
        wrong = [k for k in obj if k not in allowed]
        if wrong:
            what = f"not a {fam.name} setting" if fam and wrong[0] in every else "an unknown key"
            raise UserError(f"{path}:{n}: {wrong[0]!r} is {what}; allowed: {', '.join(allowed)}")


def parse_items(
    lines: list[tuple[int, dict]], path: str | Path, fam: Family | str, base_seed: int, job: dict[str, Any]
) -> list[Item]:
    """Validate every line (keys, types, ranges, ids) and build the items; `job`: the job-wide settings."""
    check_keys(lines, path, fam)
    schema = batch_settings(fam)
    items: list[Item] = []
    names: dict[str, int] = {}
    for index, (n, obj) in enumerate(lines):
        where = f"{path}:{n}"
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f'{where}: "prompt" must be a non-empty string')
        check_prompts(prompt, f'{where}: "prompt"')
        ident = obj.get("id")
        if ident is not None:
            ident = str(ident) if _integer(ident) else ident
            if not isinstance(ident, str) or not _ID.fullmatch(ident):
                raise UserError(
                    f"{where}: \"id\" must be 1-100 letters, digits, '.', '_' or '-' (a file name), got "
                    f"{json.dumps(obj['id'])}"
                )
        seed = obj.get("seed")
        if seed is not None:
            seed = check_seed(seed, f'{where}: "seed"')
        settings = dict(job)
        for key, st in schema.items():
            try:
                value = st.check(obj.get(key))
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            if st.kind == "text" and isinstance(value, str) and value.strip():
                check_prompts(value, f'{where}: "{key}"')  # e.g. a negative prompt: the same text check
            if value is not None:
                settings[key] = value
        key = f"id:{ident}" if ident is not None else f"#{index}"
        item = Item(
            index, n, prompt, seed if seed is not None else item_seed(base_seed, key), settings, ident
        )
        # Names are compared case-insensitively: macOS file systems usually are.
        other = names.setdefault(item.name.lower(), n)
        if other != n:
            raise UserError(f"{where}: file name '{item.name}' is already used by line {other}")
        items.append(item)
    return items


def prepare_output_dir(path: str | Path, fmt: str) -> Path:
    """Create the output folder if needed and make sure files can be written there (before any model work)."""
    from .audio import _available_formats

    if "." + fmt not in _available_formats():
        raise UserError(f"--format {fmt} cannot be written by this machine's libsndfile")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir '{out}' exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--output-dir '{out}' is not writable ({e.strerror or e})") from None
    return out


# -- resuming ---------------------------------------------------------------------------------------------


def request(item: Item, model: str) -> dict[str, Any]:
    """What an item's file is made from: embedded in the audio file and compared on a rerun. Deliberately
    free of rank, timing and index, so the file's bytes do not depend on how the job was split."""
    meta = {"prompt": item.prompt, "seed": item.seed, "model": model, "settings": item.settings}
    if item.id is not None:
        meta["id"] = item.id
    return meta


def finished_row(item: Item, out_dir: Path, ext: str, model: str) -> dict[str, Any] | None:
    """The manifest row of an item already done by an earlier run, or None if it must be (re)generated."""
    import soundfile as sf

    audio = out_dir / f"{item.name}.{ext}"
    try:
        row = json.loads((out_dir / f"{audio.name}.json").read_text())
        if not isinstance(row, dict) or "seconds_taken" not in row:
            return None  # killed between the audio file and the final sidecar: not done
        if any(row.get(k) != v for k, v in request(item, model).items()):
            return None  # another request wrote this name (edited line, other model or settings)
        info = sf.info(str(audio))
        if info.frames != row.get("samples") or info.samplerate != row.get("sample_rate"):
            return None
    except (OSError, ValueError, RuntimeError):
        return None
    return {**row, "item": item.index, "line": item.line, "file": audio.name, "skipped": True}


def _written_by_us(audio: Path) -> bool:
    """Whether `audio` is a file of a batch job (ours, maybe interrupted before its sidecar): its sidecar or
    the metadata embedded in it holds a request."""
    import soundfile as sf

    for read in (
        lambda: json.loads(audio.with_name(audio.name + ".json").read_text()),
        lambda: json.loads(sf.SoundFile(str(audio)).comment or "null"),
    ):
        try:
            found = read()
        except (OSError, ValueError, RuntimeError):
            continue
        if isinstance(found, dict) and "prompt" in found and "seed" in found:
            return True
    return False


def check_not_foreign(items: list[Item], out_dir: Path, ext: str) -> None:
    """Before any model work: a file at one of the job's names that this tool did not write (say a recording
    of the user's named 00000.wav) would be replaced; refuse, naming it (--overwrite allows it)."""
    foreign = [
        out_dir / f"{item.name}.{ext}"
        for item in items
        if (out_dir / f"{item.name}.{ext}").exists() and not _written_by_us(out_dir / f"{item.name}.{ext}")
    ]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UserError(
            f"'{foreign[0]}'{more} was not written by a batch job and would be replaced; pass --overwrite "
            "(-y) to replace it, or choose another --output-dir"
        )


# -- generation -------------------------------------------------------------------------------------------


def batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Items with identical settings (all but prompt and seed), in chunks of `batch_size`, in file order."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.group_key(), []).append(item)
    out = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    return sorted(out, key=lambda b: b[0].index)


def check_loaded(model: Any, fam: Family, config: dict, items: list[Item], path: str | Path) -> None:
    """Checks that need the checkpoint (its window, its schema: e.g. sampler names), naming the line."""
    schema = batch_settings(fam, config)
    for item in items:
        try:
            if not fam.long_form:
                check_seconds(item.settings["seconds"], model.max_seconds)
            for key, value in item.settings.items():
                schema[key].check(value)
        except UserError as e:
            raise UserError(f"{path}:{item.line}: {e}") from None


class Generator:
    """Calls `model.generate` for a batch; one list of per-row seeds when the model takes it, else one item
    at a time (a row's audio depends only on its own seed either way)."""

    def __init__(self, model: Any, quiet: bool, rank: int = 0):
        self.model = model
        self.quiet = quiet
        self.rank = rank
        self.list_seeds: bool | None = None  # unknown until a batch of several has been tried
        # a per-step bar on a terminal; a log already gets one line per finished item
        self.bars = not quiet and is_terminal(sys.stderr) and _takes(model.generate, "on_stage")

    def _stages(self, batch: list[Item]) -> dict[str, Any]:
        """A per-step bar for this call (the models report steps through `on_stage`, see progress.py)."""
        if not self.bars:
            return {}
        from .progress import tqdm_stages

        names = batch[0].name if len(batch) == 1 else f"{batch[0].name}..{batch[-1].name}"
        return {"on_stage": tqdm_stages({"generate": f"[rank {self.rank}] {names}"})}

    def __call__(self, batch: list[Item]) -> list[np.ndarray]:
        kwargs = dict(batch[0].settings)
        if len(batch) == 1 or self.list_seeds is False:
            return [
                self.model.generate(it.prompt, seed=it.seed, **kwargs, **self._stages([it]))[0]
                for it in batch
            ]
        try:
            audio = self.model.generate(
                [it.prompt for it in batch], seed=[it.seed for it in batch], **kwargs, **self._stages(batch)
            )
        except (TypeError, ValueError, UserError) as e:
            if self.list_seeds:
                raise
            self.list_seeds = False
            if not self.quiet:
                print(
                    f"note: this model takes one seed per call ({e}); batch size 1 instead", file=sys.stderr
                )
            return self(batch)
        self.list_seeds = True
        if len(audio) != len(batch):
            raise RuntimeError(f"generate returned {len(audio)} rows for {len(batch)} prompts")
        return list(audio)


def _takes(fn: Callable, name: str) -> bool:
    """Whether `fn` accepts the keyword `name` (a plug-in family's generate may not report stages)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def run_shard(
    items: list[Item],
    load: Callable[[], Any],
    out_dir: Path,
    ext: str,
    model_name: str,
    batch_size: int,
    rank: int,
    quiet: bool,
    check: Callable[[Any], None] = lambda model: None,
) -> list[dict[str, Any]]:
    """Generate this rank's items (skipping finished ones); return their manifest rows. The model is loaded
    only when there is something to generate, so a rerun of a finished job is quick."""
    from .audio import write_audio
    from .weights import atomic_write, remove_stale_temps

    rows, todo = [], []
    for item in items:
        # temp files of writes whose process was killed: never read, just litter
        audio_path = out_dir / f"{item.name}.{ext}"
        for path in (audio_path, audio_path.with_name(audio_path.name + ".json")):
            remove_stale_temps(path)
        row = finished_row(item, out_dir, ext, model_name)
        if row is None:
            todo.append(item)
        else:
            rows.append(row)
    if not quiet and rows:
        print(f"[rank {rank}] {len(rows)} item(s) already done, {len(todo)} to generate", file=sys.stderr)
    if not todo:
        return rows
    if not quiet and is_terminal(sys.stderr):  # loading takes a while: tell the one waiting (a log keeps
        # its lines to the items)
        print(f"[rank {rank}] loading {model_name}...", file=sys.stderr, flush=True)
    model = load()
    check(model)
    generate = Generator(model, quiet, rank)
    sr = model.sample_rate
    host = socket.gethostname()
    try:
        for batch in batches(todo, batch_size):
            t0 = time.perf_counter()
            audio = generate(batch)
            took = (time.perf_counter() - t0) / len(batch)
            for item, wav in zip(batch, audio, strict=True):
                path = out_dir / f"{item.name}.{ext}"
                meta = request(item, model_name)
                write_audio(path, wav, sr, metadata=meta)
                samples = int(wav.shape[-1])
                row = {
                    **meta,
                    "item": item.index,
                    "line": item.line,
                    "file": path.name,
                    "duration": round(samples / sr, 6),
                    "samples": samples,
                    "sample_rate": sr,
                    "rank": rank,
                    "host": host,
                    "batch": len(batch),
                    "seconds_taken": round(took, 4),
                }
                # The complete sidecar is the done marker: written (atomically) once the audio is in place.
                text = json.dumps(row, indent=2, sort_keys=True)
                side = out_dir / f"{path.name}.json"
                try:
                    atomic_write(side, lambda tmp, t=text: Path(tmp).write_text(t))
                except OSError as e:
                    raise UserError(f"cannot write '{side}': {e.strerror or e}") from None
                rows.append({**row, "skipped": False})
                if not quiet:
                    print(f"[rank {rank}] {path} ({samples / sr:.2f} s, seed {item.seed})", file=sys.stderr)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: every finished item is on disk; say so
        where = f" on rank {rank}" if rank else ""
        raise type(e)(
            f"{len(rows)} of {len(items)} item(s) done{where}; rerun the same command to generate the rest"
        ) from None
    return rows


def write_manifest(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    from .weights import atomic_write

    path = out_dir / MANIFEST
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in sorted(rows, key=lambda r: r["item"]))
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text), suffix=".jsonl")
    except OSError as e:
        raise UserError(f"cannot write '{path}': {e.strerror or e}") from None
    return path


@dataclass
class Job:
    items: list[Item]
    out_dir: Path
    ext: str
    model_name: str
    load: Callable[[], Any]
    batch_size: int = 1
    quiet: bool = False
    check: Callable[[Any], None] = lambda model: None


def run_job(job: Job, group: Any = None) -> list[dict[str, Any]] | None:
    """Run this rank's share of `job`; return the whole manifest on rank 0 (None elsewhere).
    `group`: an `mx.distributed` group (default: `init_group()`, size 1 without a launcher)."""
    group = init_group() if group is None else group
    rank, size = group.rank(), group.size()
    mine = [it for it in job.items if it.index % size == rank]
    if rank == 0:  # a manifest is there only once a run has completed the whole job
        (job.out_dir / MANIFEST).unlink(missing_ok=True)
    t0 = time.perf_counter()
    rows = run_shard(
        mine, job.load, job.out_dir, job.ext, job.model_name, job.batch_size, rank, job.quiet, job.check
    )
    if not job.quiet and size > 1:
        print(
            f"[rank {rank}] done with {len(mine)} item(s) in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    parts = gather_bytes(json.dumps(rows).encode(), group)
    manifest = None
    if rank == 0:
        manifest = sorted((r for p in parts for r in json.loads(p)), key=lambda r: r["item"])
        if [r["item"] for r in manifest] != [it.index for it in job.items]:
            raise RuntimeError("the gathered manifest does not cover every item once")
        write_manifest(job.out_dir, manifest)
    barrier(group)  # nobody exits (and so nobody's launcher tears the job down) before the manifest exists
    return manifest
