"""One settings schema: every generation setting is declared once, as a `Setting`.

A family lists its settings (`Family.settings(config)`, per checkpoint where the defaults depend on it).
The same `Setting` builds the CLI flag and its help (cli/generate.py, cli/batch.py), validates batch lines
(batch.py) and server requests (server/app.py), describes the parameter to the web UI (GET /api/models) and is
the check inside the Python API (`check_settings`), so the entry points cannot disagree.

The seed contract is here too: seeds are integers in [0, 2^32); a random seed is drawn from that range; a list
of seeds has one per prompt; variation k of a base seed is (base + k) mod 2^32.
"""

from __future__ import annotations

import json
import math
import numbers
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from .errors import UserError

Kind = Literal["float", "int", "choice", "text", "file"]
SEED_LIMIT = 2**32
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class Setting:
    """One generation setting: the `generate` keyword `name`, the CLI flag `--name-with-dashes`, the batch key
    and the server field of the same name. `default` None means "the checkpoint decides" (or "off" for an
    optional input); bounds are inclusive unless `exclusive_minimum`."""

    name: str
    kind: Kind
    default: Any
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple[str, ...] | None = None
    note: str = ""  # said after the requirement in errors: " (diffusion objective 'v')"
    max_length: int | None = None
    batch: bool = True  # a batch line may set it
    server: bool = True  # the server and the web UI offer it
    metavar: str | None = None
    # set by selecting a region on the waveform of the file setting named first (the web UI): "start" /
    # "end" (seconds) or "list" ("START:END,...")
    region: tuple[str, str] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def shown(self) -> str:
        """How a message names this setting: the flag a CLI user typed, with the Python keyword beside it
        for API users: "--mask-end (mask_end)"."""
        return f"{self.flag} ({self.name})"

    def requirement(self) -> str:
        """What a valid value is, as error messages say it ("an integer >= 1 and <= 2048", ...)."""
        if self.kind == "choice":
            return f"one of: {', '.join(self.choices or ())}" if self.choices else "a name"
        if self.kind in ("text", "file"):
            return "a file path" if self.kind == "file" else "a string"
        word = "an integer" if self.kind == "int" else "a number"
        lo, hi = self.minimum, self.maximum
        inclusive = not (self.exclusive_minimum or self.exclusive_maximum)
        if lo is not None and hi is not None and inclusive and self.kind == "float":
            return f"{word} in [{lo:g}, {hi:g}]"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.exclusive_minimum else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if self.exclusive_maximum else '<='} {hi:g}")
        return f"{word} {' and '.join(parts)}".rstrip()

    def check(self, value: Any, where: str | None = None) -> Any:
        """`value` checked (None passes: the default applies); a one-line UserError naming `where` (default:
        the setting's name) otherwise. Types are strict (True is not 1, "5" is not a number); numbers are
        normalised (1 -> 1.0 for a float setting) so equal requests compare equal."""
        if value is None:
            return None
        where = where or self.name
        bad = UserError(f"{where} must be {self.requirement()}{self.note}, got {_show(value)}")
        if self.kind in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise bad
            if self.kind == "int" and not isinstance(value, numbers.Integral):
                if not (isinstance(value, float) and value.is_integer()):
                    raise bad
            try:
                number = float(value)
            except OverflowError:
                raise bad from None
            if not math.isfinite(number):
                raise bad
            lo, hi = self.minimum, self.maximum
            if lo is not None and (number <= lo if self.exclusive_minimum else number < lo):
                raise bad
            if hi is not None and (number >= hi if self.exclusive_maximum else number > hi):
                raise bad
            return number if self.kind == "float" else int(value)
        if not isinstance(value, str):
            raise bad
        if value.strip() and self.kind in ("text", "choice"):
            check_prompts(value, where)  # valid Unicode (no lone surrogates), as every prompt
        if self.kind == "choice":
            if not value.strip():
                raise bad
            if self.choices is not None and value not in self.choices:
                raise UserError(
                    f"{where} {_show(value)} does not fit this model{self.note}; "
                    f"choose one of: {', '.join(self.choices)}"
                )
        if self.max_length is not None and len(value) > self.max_length:
            raise UserError(f"{where} must be at most {self.max_length} characters, got {len(value)}")
        return value

    def for_checkpoint(self, **changes: Any) -> Setting:
        """This setting with a checkpoint's own default / choices / bounds."""
        return replace(self, **changes)

    def info(self) -> dict[str, Any]:
        """The description the web UI reads (GET /api/models)."""
        d = asdict(self)
        d["choices"] = list(self.choices) if self.choices is not None else None
        d["region"] = None if self.region is None else {"of": self.region[0], "role": self.region[1]}
        for key in ("batch", "server", "metavar", "exclusive_minimum", "exclusive_maximum", "note"):
            d.pop(key)
        return d


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # nan, inf, 1e+300 (JSON has no nan)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def named(*names: str) -> str:
    """The settings `names` as a message names them: each known setting (any family's schema, see
    registry.all_settings) by `Setting.shown`, an API-only keyword as itself; joined with " / ".

    Cross-setting checks inside a model ("give A or B, not both") run after the CLI has turned flags into
    keywords, so they must name the flag a user typed, not only the Python argument."""
    from . import registry  # registry imports this module

    known = {SECONDS.name: SECONDS, **{n: st for n, (st, _) in registry.all_settings().items()}}
    return " / ".join(known[n].shown if n in known else n for n in names)


# -- settings every family has ----------------------------------------------------------------------------

SECONDS = Setting(
    "seconds", "float", 5.0, "Seconds", "Duration of the result.", minimum=0.0, exclusive_minimum=True,
    note=" (a positive duration)",
)  # fmt: skip


def check_prompts(prompt: str | Iterable[str], where: str = "prompt") -> list[str]:
    """One prompt or a list of them, each a non-empty string of valid Unicode (the one prompt check)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else []
    if not prompts:
        raise UserError(f"{where} is empty; describe the audio you want")
    for p in prompts:
        if not isinstance(p, str):
            raise UserError(f"{where} must be text, got {type(p).__name__}")
        if not p.strip():
            raise UserError(f"{where} is empty; describe the audio you want")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            # a lone surrogate: from JSON ("\\ud800") or, as U+DC80..U+DCFF, a command-line byte that is not
            # UTF-8 (Python's surrogateescape); the tokenizer and the file's tags could not take it
            code = ord(p[e.start])
            what = (
                f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
            )
            raise UserError(
                f"{where} is not valid UTF-8 text ({what} at character {e.start + 1}); write it in UTF-8"
            ) from None
    return prompts


def check_seconds(seconds: Any, max_seconds: float | None = None, where: str = "seconds") -> float:
    """A duration in (0, max_seconds]; the limit is never rounded up in the message."""
    value = SECONDS.check(seconds, where)
    if value is None:
        raise UserError(f"{where} must be {SECONDS.requirement()}{SECONDS.note}, got null")
    if max_seconds is not None and value > max_seconds + 1e-9:
        shown = math.floor(max_seconds * 1000) / 1000
        raise UserError(f"{where} must be at most {shown:g} for this model, got {value:g}")
    return value


# -- seeds ----------------------------------------------------------------------------------------------


def random_seed() -> int:
    return secrets.randbelow(SEED_LIMIT)


def check_seed(seed: Any, where: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{where} must be an integer in [0, 2^32), got {_show(seed)}")
    return int(seed)


def resolve_seed(seed: Any, n_prompts: int) -> int | list[int]:
    """`generate`'s seed argument checked: None -> a random seed; an int; or a list with one per prompt."""
    if seed is None:
        return random_seed()
    if isinstance(seed, list | tuple):
        if len(seed) != n_prompts:
            raise UserError(f"got {len(seed)} seeds for {n_prompts} prompts")
        return [check_seed(s) for s in seed]
    return check_seed(seed)


def variation_seeds(base: int, count: int) -> list[int]:
    """Seeds of `count` variations of base seed `base`: base, base + 1, ... wrapping at 2^32."""
    return [(base + k) % SEED_LIMIT for k in range(count)]


# -- applying a schema ----------------------------------------------------------------------------------


def by_name(settings: Iterable[Setting]) -> dict[str, Setting]:
    return {s.name: s for s in settings}


def check_settings(
    settings: Iterable[Setting], values: Mapping[str, Any], fill_defaults: bool = True
) -> dict[str, Any]:
    """`values` (keyword -> value, None = default) checked against `settings`; unknown names are an error.
    Returns every setting's value (defaults filled unless `fill_defaults` is False)."""
    schema = by_name(settings)
    unknown = [k for k in values if k not in schema]
    if unknown:
        raise UserError(f"unknown setting '{unknown[0]}'; this model takes: {', '.join(schema)}")
    out = {}
    for name, s in schema.items():
        value = s.check(values.get(name))
        out[name] = s.default if value is None and fill_defaults else value
    return out
