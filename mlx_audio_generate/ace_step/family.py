"""ACE-Step 1.5 as the rest of the tool sees it: names, repos, detection, conversion, loading, settings.

Bounds and defaults are the reference's (acestep/, upstream 6d467e4):
- `constants.py`: BPM 30..300, durations 10..600 s, time signatures 2/3/4/6, the 70 keys ("C major",
  "F# minor", "B♭ major", ...), the 51 vocal languages ("unknown" included);
- the Gradio UI's per-model controls (`ui/gradio/events/generation/model_config.py`,
  `get_ui_control_config`): turbo 8 steps (1..20: `generate_audio` clamps turbo to 20), base 32 and SFT 50
  steps (1..200), shift 3.0 for every model (the API's `shift` too: "range 1.0~5.0, default 3.0"; the bare
  `GenerationParams` says 1.0, but the UI, the HTTP API and diffusers use 3.0);
- guidance_scale 7.0 for base / SFT (GenerationParams, API); turbo is guidance-distilled and its
  `generate_audio` ignores CFG: a turbo checkpoint takes no guidance setting other than 1 (refused, not
  silently dropped); cfg_interval [0, 1];
- the vocal language defaults to "unknown" (GenerationParams), lyrics to "[Instrumental]" (the reference's
  own word for "no vocals": GenerationParams' empty lyrics would be an empty lyric block);
- the sampler options of `generate_audio` (schedule.py), each at upstream's default: infer_method "ode",
  sampler_mode "euler", APG (use_adg False; ADG is a base / SFT CFG option), velocity clamp and EMA off
  (0; upstream's hints: "try 2.0" / "try 0.1"), DCW mode "double" with scalers 0.05 / 0.02 and the Haar
  basis (the UI's other bases too: db2, db4, sym4, sym8, coif2).
  DCW is OFF by default here, unlike upstream's `dcw_enabled=True`: upstream's default silently does
  nothing unless the optional `pytorch_wavelets` is installed (reference README §2.7), so its usual
  output is the uncorrected one, and its UI turns DCW off for base / SFT.
- tasks (modes.py): turbo and SFT take text2music / repaint / cover (`TASK_TYPES_TURBO`, the UI's list for
  every model but the pure base), base also lego / extract / complete (`TASK_TYPES_BASE`);
  audio_cover_strength 1, cover_noise_strength 0, retake_variance 0 (GenerationParams).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..family import AudioModel, ConvertJob, Family, ModelFacts, Preset, QuantizeSpec
from ..settings import SEED_LIMIT, Setting

MAIN_REPO = "ACE-Step/Ace-Step1.5"
MODELS = {
    "ace-step-1.5-turbo": MAIN_REPO,
    "ace-step-1.5-base": "ACE-Step/acestep-v15-base",
    "ace-step-1.5-sft": "ACE-Step/acestep-v15-sft",
    # the XL (4B) DiTs: their own repos, the VAE and text encoder from the main repo as for base / sft
    "ace-step-1.5-xl-turbo": "ACE-Step/acestep-v15-xl-turbo",
    "ace-step-1.5-xl-base": "ACE-Step/acestep-v15-xl-base",
    "ace-step-1.5-xl-sft": "ACE-Step/acestep-v15-xl-sft",
}
TURBO_FOLDER = "acestep-v15-turbo"  # the DiT inside the main repo
VAE_FOLDER = "vae"
TEXT_ENCODER_FOLDER = "Qwen3-Embedding-0.6B"
SILENCE_FILE = "silence_latent.pt"
DIT_FILES = ("config.json", "model.safetensors", SILENCE_FILE)
MODEL_TYPE = "acestep"
SAMPLE_RATE = 48000
MIN_SECONDS, MAX_SECONDS = 10.0, 600.0  # constants.DURATION_MIN / DURATION_MAX
BPM_MIN, BPM_MAX = 30, 300
TIME_SIGNATURES = ("2", "3", "4", "6")
KEYSCALES = tuple(
    f"{note}{acc} {mode}"
    for note in "ABCDEFG"
    for acc in ("", "#", "b", "♯", "♭")
    for mode in ("major", "minor")
)
LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr",
    "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro",
    "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)  # fmt: skip
MAX_LYRICS_CHARS = 4096  # GenerationParams: "Lyrics ... < 4096 characters"
# (default steps, max steps) per variant: the UI's controls
STEPS = {"turbo": (8, 20), "base": (32, 200), "sft": (50, 200)}
SHIFT = 3.0
GUIDANCE = 7.0
DCW_CHOICES = ("off", "low", "high", "double", "pix")
DCW_SCALER, DCW_HIGH_SCALER = 0.05, 0.02
DCW_WAVELETS = ("haar", "db2", "db4", "sym4", "sym8", "coif2")  # diffusion/wavelet_correction.WAVELETS
# constants.TASK_TYPES (cover-nofsq left out) and TRACK_NAMES; modes.py builds the tasks
TASKS = ("text2music", "repaint", "cover", "lego", "extract", "complete")
BASE_ONLY_TASKS = ("lego", "extract", "complete")  # constants.TASK_TYPES_BASE minus TASK_TYPES_TURBO
TRACK_NAMES = (
    "woodwinds", "brass", "fx", "synth", "strings", "percussion",
    "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
)  # fmt: skip
TURBO_TASKS = tuple(t for t in TASKS if t not in BASE_ONLY_TASKS)  # constants.TASK_TYPES_TURBO (no nofsq)
MAX_CODES_CHARS = 40 * 5 * int(MAX_SECONDS)  # 5 codes a second, "<|audio_code_63999|>" is 20 characters
# The optional 5 Hz LM planner (README §6.8): size -> (repo, folder inside it). Off by default: the
# reference's GenerationParams say thinking=True, but its LM runs only when one was initialised
# (`init_llm`, a separate download and an explicit choice), and without one generate_music is plain
# text2music, which is ours.
PLANNER_OFF = "off"
PLANNERS = {
    "0.6B": ("ACE-Step/acestep-5Hz-lm-0.6B", ""),
    "1.7B": (MAIN_REPO, "acestep-5Hz-lm-1.7B"),
    "4B": ("ACE-Step/acestep-5Hz-lm-4B", ""),
}
PLANNER_FILES = ("config.json", "model*.safetensors", "model.safetensors.index.json", "*token*", "vocab.json",
                 "merges.txt", "chat_template.jinja", "generation_config.json")  # fmt: skip


def variant_of(config: dict[str, Any] | None) -> str | None:
    """'turbo', 'sft' or 'base' from a DiT config (converted folders keep it under 'dit')."""
    if config is None:
        return None
    dit = config.get("dit", config)
    if dit.get("is_turbo", str(dit.get("model_version", "")).startswith("turbo")):
        return "turbo"
    return "sft" if "sft" in str(dit.get("model_version", "")) else "base"


def settings(config: dict[str, Any] | None) -> list[Setting]:
    """The generation settings; with a converted config, its variant's defaults."""
    v = variant_of(config)
    steps, max_steps = STEPS.get(v, (None, 200))
    turbo = v == "turbo"
    local = dict(batch=False)  # audio files: not batch lines; the server takes an upload's id (uploads.py)
    return [
        Setting("lyrics", "text", "[Instrumental]", "Lyrics",
                "Song lyrics with structure tags ([Verse], [Chorus], ...); [Instrumental] for none.",
                max_length=MAX_LYRICS_CHARS),
        Setting("language", "choice", "unknown", "Vocal language", "Language of the lyrics.",
                choices=LANGUAGES),
        Setting("bpm", "int", None, "BPM", "Tempo in beats per minute (optional).", BPM_MIN, BPM_MAX),
        Setting("keyscale", "choice", None, "Key", "Key and scale, e.g. 'C major', 'F# minor' (optional).",
                choices=KEYSCALES),
        Setting("timesignature", "choice", None, "Time signature",
                "Beats per bar: 2 (2/4), 3 (3/4), 4 (4/4), 6 (6/8) (optional).", choices=TIME_SIGNATURES),
        Setting("steps", "int", steps, "Steps", "Diffusion steps; more is slower and usually cleaner.",
                1, max_steps),
        Setting("shift", "float", SHIFT, "Shift", "Timestep shift of the schedule (turbo: 1, 2 or 3 at 8 "
                "steps).", 1.0, 5.0),
        Setting("guidance_scale", "float", 1.0 if turbo else (None if v is None else GUIDANCE),
                "Guidance scale", "How strongly to follow the prompt (base / SFT; 1 = a single pass; turbo "
                "is guidance-distilled and takes only 1).", 1.0, 20.0),
        Setting("cfg_interval_start", "float", 0.0, "CFG start",
                "Guidance only at times t >= this (base / SFT).", 0.0, 1.0),
        Setting("cfg_interval_end", "float", 1.0, "CFG end",
                "Guidance only at times t <= this (base / SFT).", 0.0, 1.0),
        Setting("guidance_method", "choice", "apg", "Guidance method",
                "CFG guidance with guidance_scale > 1 (base / SFT): apg (adaptive projected) or adg "
                "(angle-based dynamic).", choices=("apg", "adg")),
        Setting("infer_method", "choice", "ode", "Sampling method",
                "ode (deterministic) or sde (each step re-noises the predicted clean latents with fresh "
                "noise from the seed).", choices=("ode", "sde")),
        Setting("sampler_mode", "choice", "euler", "Sampler",
                "euler, or heun (second order: two model calls a step; ode only).",
                choices=("euler", "heun")),
        Setting("velocity_norm_threshold", "float", 0.0, "Velocity clamp",
                "Scale each step's velocity down to at most this times the latents' norm (0 = off; try 2).",
                0.0, 10.0),
        Setting("velocity_ema_factor", "float", 0.0, "Velocity EMA",
                "Blend this much of the previous step's velocity into each step's (0 = off; try 0.1).",
                0.0, 1.0, exclusive_maximum=True),
        Setting("dcw", "choice", "off", "DCW",
                "Wavelet-domain correction after each step: off, low, high, double (both bands) or pix "
                "(no transform).", choices=DCW_CHOICES),
        Setting("dcw_scaler", "float", DCW_SCALER, "DCW strength",
                "DCW's low-band strength (the single one for high and pix); needs dcw.", 0.0, 1.0),
        Setting("dcw_high_scaler", "float", DCW_HIGH_SCALER, "DCW high-band strength",
                "DCW's high-band strength in double mode; needs dcw double.", 0.0, 1.0),
        Setting("dcw_wavelet", "choice", "haar", "DCW wavelet", "DCW's wavelet basis; needs dcw low / "
                "high / double.", choices=DCW_WAVELETS),
        # adapters are read from this machine: the CLI and the Python API take them, not batch lines or the
        # server (whose clients must not name server paths)
        Setting("lora", "text", None, "LoRA",
                "DiT adapters applied for this run, stacked: PATH[:STRENGTH][,PATH[:STRENGTH]...], PATH a "
                "PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) or a LoKr "
                "lokr_weights.safetensors (or its folder); STRENGTH in [0, 1], default 1",
                metavar="PATH[:S],...", max_length=4000, batch=False, server=False),
        Setting("task", "choice", "text2music", "Task",
                "What to make: text2music (from the prompt), repaint (regenerate a window of --src-audio), "
                "cover (a new song on the structure of --src-audio or --audio-codes); base only: lego (add a "
                "--track to --src-audio), extract (isolate a --track), complete (complete --src-audio with a "
                "--track).", choices=TASKS if v in (None, "base") else TURBO_TASKS),
        Setting("src_audio", "file", None, "Source audio",
                "The song that repaint / cover / lego / extract / complete work on (its length is the "
                "result's; --seconds does not apply).", **local),
        Setting("repaint_start", "float", None, "Repaint start",
                "Start of the window to regenerate, in seconds of --src-audio (default 0).",
                0.0, MAX_SECONDS, region=("src_audio", "start")),
        Setting("repaint_end", "float", None, "Repaint end",
                "End of the window to regenerate, in seconds (default: the end of --src-audio).",
                0.0, MAX_SECONDS, exclusive_minimum=True, region=("src_audio", "end")),
        Setting("audio_cover_strength", "float", 1.0, "Cover strength",
                "Cover: the fraction of the steps that follow the source's structure; after it, the prompt "
                "alone (1 = every step).", 0.0, 1.0),
        Setting("cover_noise_strength", "float", 0.0, "Cover noise strength",
                "Cover: start from the source noised to t = 1 - this (the nearest step) instead of pure "
                "noise (0 = pure noise; closer to 1 stays closer to the source).", 0.0, 1.0),
        Setting("reference_audio", "file", None, "Timbre reference",
                "Audio whose timbre / style the song takes (three 10 s segments, picked from the seed).",
                **local),
        Setting("audio_codes", "text", None, "Audio codes",
                "5 Hz semantic codes (<|audio_code_N|> tokens, as the ACE-Step LM writes them) to cover; "
                "the song has their length.", max_length=MAX_CODES_CHARS, metavar="CODES"),
        Setting("retake_variance", "float", 0.0, "Retake variance",
                "Mix a second noise from --retake-seed into the seed's: 0 = the seed's song, 1 = the retake "
                "seed's (variations in between).", 0.0, 1.0),
        Setting("retake_seed", "int", None, "Retake seed", "Seed of the second noise of --retake-variance.",
                0, SEED_LIMIT - 1),
        Setting("track", "choice", None, "Track", "The instrument track of lego / extract / complete.",
                choices=TRACK_NAMES),
        Setting("planner", "text", PLANNER_OFF, "5 Hz LM planner",
                "off, 0.6B, 1.7B or 4B (fetched and converted once) or a planner / LM folder: the LM writes "
                "the unset bpm, key, time signature, duration, language and the 5 Hz codes the DiT follows.",
                max_length=4096, server=False, metavar="off|0.6B|1.7B|4B|FOLDER"),
    ]  # fmt: skip


def _read_config(folder: Path) -> dict[str, Any] | None:
    from ..hub import read_json

    config = read_json(Path(folder) / "config.json")
    return config if isinstance(config, dict) else None


def is_dit_folder(folder: Path) -> bool:
    config = _read_config(folder)
    return config is not None and config.get("model_type") == MODEL_TYPE


def _detect(folder: Path) -> bool:
    """An ACE-Step 1.5 DiT folder (config.json model_type 'acestep') or a repo / checkpoints folder holding
    one (the main repo: acestep-v15-turbo/ beside vae/ and the text encoder)."""
    folder = Path(folder)
    if is_dit_folder(folder):
        return True
    return any(is_dit_folder(sub) for sub in sorted(folder.glob("acestep-v15-*")) if sub.is_dir())


COMPONENT_PATTERNS = [f"{VAE_FOLDER}/*", f"{TEXT_ENCODER_FOLDER}/*"]  # the main repo's shared parts


def _patterns(repo: str) -> list[str]:
    """Exactly what the converter reads: the DiT files; the main repo also holds the VAE and text encoder."""
    if repo == MAIN_REPO:
        return [f"{TURBO_FOLDER}/{f}" for f in DIT_FILES] + COMPONENT_PATTERNS
    return list(DIT_FILES)


def _convert(job: ConvertJob) -> None:
    from .convert import convert_ace_step

    convert_ace_step(job)


def _load(conv: Any) -> AudioModel:
    from .generate import AceStep

    return AceStep.from_converted(conv)


def _facts(config: dict[str, Any]) -> ModelFacts:
    vae = config["vae"]
    return ModelFacts(
        int(vae.get("sampling_rate", SAMPLE_RATE)), int(vae.get("audio_channels", 2)), MAX_SECONDS
    )


# The web UI's presets (data: tests/seam/test_family_presets.py checks them against `settings(None)`):
# song metadata (lyrics, language, BPM, key, time signature) the DiT is conditioned on. Steps and guidance
# stay the checkpoint's (turbo takes no guidance); the one preset with 50 steps is offered only by base /
# SFT checkpoints, whose schema allows them (turbo's ends at 20).
POP_LYRICS = """[Verse]
City lights are calling out my name
Every street is humming the same refrain

[Chorus]
We are golden, we are young tonight
Dancing in the neon light"""
PRESETS = (
    Preset("Pop song with lyrics", "upbeat pop, bright synths, catchy female vocals", 60.0,
           {"lyrics": POP_LYRICS, "language": "en", "bpm": 120, "keyscale": "C major", "timesignature": "4"}),
    Preset("Lofi instrumental", "lofi hip hop, mellow Rhodes, dusty drums, instrumental", 90.0,
           {"lyrics": "[Instrumental]", "bpm": 80, "keyscale": "F minor", "timesignature": "4"}),
    Preset("Folk waltz", "melancholic indie folk waltz, acoustic guitar, soft male vocals", 60.0,
           {"lyrics": "[Instrumental]", "bpm": 90, "keyscale": "D major", "timesignature": "3"}),
    Preset("Rock anthem (base / SFT, 50 steps)",
           "energetic rock anthem, distorted guitars, big drums, gang vocals", 120.0,
           {"lyrics": "[Instrumental]", "bpm": 140, "keyscale": "E minor", "timesignature": "4",
            "steps": 50}),
)  # fmt: skip

CONVERT_SETTINGS = (
    Setting("components", "text", None, "VAE / text encoder source",
            f"where the VAE ({VAE_FOLDER}/) and text encoder ({TEXT_ENCODER_FOLDER}/) come from: a folder "
            f"holding both, or a repo id (default: beside the DiT, else {MAIN_REPO})",
            metavar="FOLDER|REPO", batch=False, server=False),
)  # fmt: skip

FAMILY = Family(
    name="ace_step",
    label="ACE-Step 1.5",
    models=MODELS,
    example="ace-step-1.5-turbo",
    detect=_detect,
    convert=_convert,
    load=_load,
    facts=_facts,
    settings=settings,
    # the DiT's linears; condition_embedder's `.weight` is the DiT's dtype probe and the timestep embedders
    # (linear_1 is read as a dtype probe too) are small and set the modulation's precision
    quantize=QuantizeSpec("dit", frozenset({"condition_embedder"}), ("time_embed",), "DiT"),
    download_patterns=_patterns,
    extra_repos=frozenset({MAIN_REPO}),
    convert_settings=CONVERT_SETTINGS,
    verb="denoising",
    examples=(
        "upbeat pop, bright synths, catchy female vocals, 120 BPM",
        "melancholic indie folk, acoustic guitar, soft male vocals",
        "energetic rock anthem, distorted guitars, big drums, gang vocals",
        "lofi hip hop, mellow Rhodes, dusty drums, instrumental",
    ),
    presets=PRESETS,
)
