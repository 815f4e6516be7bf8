"""Reference outputs of ACE-Step 1.5's 5 Hz LM planner (the original `acestep.llm_inference.LLMHandler` and
`acestep.constrained_logits_processor`, ../shared/reference, PyTorch backend on CPU) on a tiny Qwen3 LM,
for tests/ace_step/test_ace_planner.py.

`save_tiny_planner(folder)` writes the LM in the released layout (transformers `Qwen3ForCausalLM.
save_pretrained`: config.json, model.safetensors; tokenizer files): the tokenizer is the committed tiny Qwen3
tokenizer (tests/fixtures/ace/Qwen3-Embedding-0.6B) plus `<think>` / `</think>` (added tokens, as in Qwen3)
and AUDIO_CODES `<|audio_code_N|>` tokens spread over 0..63999 (the real LM has all 64000; a tiny fixture
keeps a spread subset), eos `<|im_end|>`, pad `<|endoftext|>`, and a Qwen-style chat template (the released
template is not available here; the planner renders whatever template the checkpoint holds, through the
same transformers call as the reference).

`make(out_dir)` writes `meta.json` and `planner.safetensors`:
- `logits.ids` / `logits.ref`: transformers' Qwen3ForCausalLM logits (fp32) of two id rows;
- `prompts`: the reference handler's `build_formatted_prompt` (phase 1, and its CFG negative, unused by the
  reference), `build_formatted_prompt_with_cot` (phase 2 and its negative, default and a user negative) and
  `_format_metadata_as_cot` on a few metadata dicts;
- `parse`: `parse_lm_output` on example LM outputs (the docstring's, multi-line captions, no tags, codes);
- `fsm.<case>.{scores,out,tokens}`: the reference processor driven step by step (teacher-forced towards a
  target text: scores = float16 noise, 20 on the first token of the rest of the target, the token = argmax
  of the processor's output), its masked output per step (stored in float16, exactly); cases: a free
  phase 1, phase 1 with user values, phase 2 codes with a duration constraint;
- `greedy.<case>`: the whole two-phase `generate_with_stop_condition(infer_type="llm_dit")` at temperature 0
  (argmax: the reference's own `_sample_tokens` path) with CFG 2.0 (one case 3.0), top-p 0.9, constrained
  decoding on: its metadata (meta.json) and the code string's values (`greedy.<case>.codes`).
The tiny LM's weights are random with one tweak (see save_tiny_planner): ':' is its top free token, so greedy
phase 1 walks every field in ~640 tokens instead of writing caption text up to the 3500-token limit.
Nothing here is random at generation: greedy decoding; the FSM noise is drawn here and stored.

    python -m tests.reference.ace_planner tests/fixtures/ace/planner
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
TOKENIZER = FIXTURES / "Qwen3-Embedding-0.6B"
LM_FOLDER = "acestep-5Hz-lm-tiny"
AUDIO_CODES = [i * 125 for i in range(512)]  # 0, 125, ..., 63875
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
GREEDY = {  # generate_music's inputs: user_metadata is built from them as inference.py builds it
    "duration": {"caption": "lofi beat", "lyrics": "[Instrumental]", "duration": 10},
    "user": {"caption": "slow jazz ballad", "lyrics": "[Instrumental]", "duration": 12, "bpm": 90,
             "keyscale": "F# minor"},
    "all_metas": {"caption": "lofi", "lyrics": "[Instrumental]", "duration": 10, "bpm": 70,
                  "keyscale": "C major", "timesignature": "4"},
    # CFG 3 changes this tiny LM's greedy codes (at 1 and 2 they are one repeated code): checks the CFG
    "cfg3": {"caption": "lofi", "lyrics": "[Instrumental]", "duration": 10, "bpm": 70, "keyscale": "C major",
             "timesignature": "4", "cfg": 3.0},
}  # fmt: skip
COT_TARGET = (
    "<think>\nbpm: 128\ncaption: An upbeat synth pop track.\n  Bright pads and claps.\nduration: 45\n"
    "keyscale: F# minor\nlanguage: en\ntimesignature: 4\n</think>"
)
FSM_CASES = {
    "cot_free": {"phase": "cot", "user": None, "target": COT_TARGET, "target_duration": None},
    "cot_user": {"phase": "cot", "user": {"bpm": "100", "keyscale": "B♭ major", "duration": "30"},
                 "target": COT_TARGET, "target_duration": None},
    "codes": {"phase": "codes", "user": None, "target_duration": 2.0,
              "target": "".join(f"<|audio_code_{c}|>" for c in AUDIO_CODES[3:20])},
}  # fmt: skip
PARSE_EXAMPLES = [
    "<think>\nbpm: 73\ncaption: A calm piano melody\nduration: 273\ngenres: Chinese folk\nkeyscale: G major\n"
    "language: en\ntimesignature: 4\n</think>\n\n<|audio_code_56535|><|audio_code_62918|>",
    "<think>\nbpm: 128\ncaption: An emotional ballad.\n  The track opens with piano.\n  More text.\n"
    "duration: 30\nkeyscale: F# minor\nlanguage: zh\ntimesignature: 3\n</think>",
    "bpm: fast\nduration: 12.5\nkeyscale: C major\n<|audio_code_5|><|audio_code_70000|>",
    "<think>\n\n</think>\n\n<|audio_code_1|>",
    "",
]
COT_EXAMPLES = [
    {"bpm": 120, "caption": "A calm piano melody", "duration": 30, "keyscale": "G major", "language": "en",
     "timesignature": "4"},
    {"bpm": "90", "keyscale": "F# minor", "duration": 12, "timesignature": "3/4"},
    {"caption": "中文 歌曲: 慢", "language": "zh"},
    {},
]  # fmt: skip


def save_tiny_planner(folder: str | Path, seed: int = 0) -> Path:
    """The tiny LM in the released layout (module doc)."""
    import torch
    from transformers import AddedToken, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tok.add_tokens(
        [AddedToken(f"<|audio_code_{c}|>", special=True) for c in AUDIO_CODES], special_tokens=True
    )
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
        max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # larger than the default init so that greedy choices are far from ties
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5)
        # a constant first embedding dimension dominates the residual stream, and ':' has the largest one:
        # ':' is then the top free token, so a greedy caption ends (512 tokens, a newline, ':') and the walk
        # goes on through every field instead of writing caption text until the 3500-token limit
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 4.0
        emb[tok.convert_tokens_to_ids(":"), 0] = 4.5
    model.save_pretrained(folder)
    return folder


def import_llm():
    """`acestep.llm_inference` importable: stand-ins for the two modules the reference copy lacks
    (acestep.gpu_config: only its duration cap is reached here; acestep.llm_backend_compat: vLLM only)."""
    from .ace import import_ace

    import_ace()
    # one stand-in shared with the modes' builder (ace_modes.py, which sets get_gpu_memory_gb): each adds
    # only what it needs, whichever runs first
    gpu = sys.modules.setdefault("acestep.gpu_config", types.ModuleType("acestep.gpu_config"))
    gpu.get_global_gpu_config = lambda: types.SimpleNamespace(max_duration_with_lm=600, tier="cpu")
    gpu.get_lm_gpu_memory_ratio = gpu.get_lm_model_size = lambda *a, **k: None
    gpu.get_gpu_memory_gb = lambda: 24.0  # as ace_modes.py has it (only CUDA reads it)
    if "acestep.llm_backend_compat" not in sys.modules:
        compat = types.ModuleType("acestep.llm_backend_compat")
        compat.get_vllm_preflight_warning = lambda *a, **k: None
        sys.modules["acestep.llm_backend_compat"] = compat
    import acestep.constrained_logits_processor as clp
    import acestep.llm_inference as llm

    return llm, clp


def reference_handler(folder: Path):
    """An LLMHandler on the PyTorch backend, CPU, fp32, set up as `initialize` leaves it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm, clp = import_llm()
    h = llm.LLMHandler()
    h.llm_tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
    h.llm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    h.llm_backend, h.llm_initialized, h.device, h.dtype, h.disable_tqdm = (
        "pt",
        True,
        "cpu",
        torch.float32,
        True,
    )
    h.constrained_processor = clp.MetadataConstrainedLogitsProcessor(
        tokenizer=h.llm_tokenizer, enabled=True, debug=False, max_duration=600
    )
    return h


def drive_fsm(proc, tok, case: dict, seed: int):
    """(scores in, processor out, tokens) of a teacher-forced walk (module doc)."""
    import numpy as np
    import torch

    proc.reset()
    proc.enabled = True
    proc.metadata_temperature = proc.codes_temperature = None
    proc.set_target_duration(case["target_duration"])
    proc.set_user_metadata(case["user"])
    proc.set_stop_at_reasoning(False)
    proc.set_skip_genres(True)
    proc.set_skip_caption(False)
    proc.set_skip_language(False)
    proc.set_generation_phase(case["phase"])
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    ) + ("<think>\nbpm: 1\n</think>\n\n" if case["phase"] == "codes" else "")
    ids = tok(prompt)["input_ids"]
    rng = np.random.default_rng(seed)
    remaining, scores_in, outs, tokens = case["target"], [], [], []
    for _ in range(120):
        # float16-exact values (the processor only selects, adds 0 / -inf or zeroes: its output is exact
        # in float16 too, which halves the fixture)
        s = rng.standard_normal(len(tok)).astype(np.float16).astype(np.float32)
        want = tok.encode(remaining, add_special_tokens=False) if remaining else [tok.eos_token_id]
        s[want[0]] = 20.0
        out = proc(torch.tensor([ids]), torch.tensor(s[None].copy()))[0].numpy()
        t = int(np.argmax(out))
        scores_in.append(s)
        outs.append(out)
        tokens.append(t)
        proc.update_state(t)
        ids.append(t)
        text = tok.decode([t])
        remaining = remaining[len(text) :] if remaining.startswith(text) else remaining
        if t == tok.eos_token_id:
            break
    scores_in, outs = np.stack(scores_in), np.stack(outs)
    assert (scores_in.astype(np.float16).astype(np.float32) == scores_in).all()
    assert np.array_equal(outs.astype(np.float16).astype(np.float32), outs)
    return scores_in.astype(np.float16), outs.astype(np.float16), np.array(tokens, dtype=np.int32)


def user_metadata(case: dict) -> dict:
    """inference.py's user_metadata (generate_music): int bpm / duration, key and time signature as given."""
    user = {}
    if case.get("bpm"):
        user["bpm"] = int(case["bpm"])
    if case.get("keyscale"):
        user["keyscale"] = case["keyscale"]
    if case.get("timesignature"):
        user["timesignature"] = case["timesignature"]
    if case.get("duration"):
        user["duration"] = int(case["duration"])
    return user


def make(out_dir: str | Path) -> Path:
    import numpy as np
    import torch
    from loguru import logger
    from safetensors.numpy import save_file

    logger.remove()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / LM_FOLDER
    if not (folder / "config.json").is_file():
        save_tiny_planner(folder)
    h = reference_handler(folder)
    tok, model = h.llm_tokenizer, h.llm
    tensors: dict[str, np.ndarray] = {}
    meta: dict = {"greedy_cases": GREEDY, "fsm_cases": FSM_CASES}

    text = h.build_formatted_prompt("upbeat pop", "[Verse]\nHello")
    ids = tok([text, text[: len(text) // 2]], padding=True, padding_side="right")["input_ids"]
    ids = np.array(ids, dtype=np.int64)
    with torch.no_grad():
        tensors["logits.ref"] = model(torch.tensor(ids)).logits.float().numpy()
    tensors["logits.ids"] = ids.astype(np.int32)

    cot = h._format_metadata_as_cot(COT_EXAMPLES[0])
    meta["prompts"] = {
        "cot": h.build_formatted_prompt("upbeat pop", "[Verse]\nHello"),
        "codes": h.build_formatted_prompt_with_cot("upbeat pop", "[Verse]\nHello", cot),
        "codes_negative": h.build_formatted_prompt_with_cot(
            "upbeat pop", "[Verse]\nHello", cot, is_negative_prompt=True
        ),
        "codes_negative_user": h.build_formatted_prompt_with_cot(
            "upbeat pop", "[Verse]\nHello", cot, is_negative_prompt=True, negative_prompt="noisy, distorted"
        ),
        "cots": [h._format_metadata_as_cot(dict(m)) for m in COT_EXAMPLES],
    }
    meta["cot_examples"] = COT_EXAMPLES
    meta["parse"] = [[t, *h.parse_lm_output(t)] for t in PARSE_EXAMPLES]

    proc = h.constrained_processor
    for i, (name, case) in enumerate(FSM_CASES.items()):
        s, o, t = drive_fsm(proc, tok, case, seed=100 + i)
        tensors[f"fsm.{name}.scores"], tensors[f"fsm.{name}.out"], tensors[f"fsm.{name}.tokens"] = s, o, t

    meta["greedy"] = {}
    for name, case in GREEDY.items():
        r = h.generate_with_stop_condition(
            caption=case["caption"], lyrics=case["lyrics"], infer_type="llm_dit", temperature=0.0,
            cfg_scale=case.get("cfg", 2.0), negative_prompt="NO USER INPUT", top_k=None, top_p=0.9,
            target_duration=case["duration"], user_metadata=user_metadata(case) or None,
            use_constrained_decoding=True,
        )  # fmt: skip
        if not r["success"]:
            raise RuntimeError(f"reference planner failed on {name}: {r['error']}")
        meta["greedy"][name] = r["metadata"]
        codes = [int(x) for x in r["audio_codes"].replace("<|audio_code_", " ").replace("|>", " ").split()]
        tensors[f"greedy.{name}.codes"] = np.array(codes, dtype=np.int32)
    save_file(tensors, str(out / "planner.safetensors"))
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return out


_LIVE: dict[str, Path] = {}


def live() -> Path:
    """make() run once a session into a temporary folder holding a copy of the committed tiny LM."""
    import shutil
    import tempfile

    if "path" not in _LIVE:
        out = Path(tempfile.mkdtemp(prefix="ace-planner-"))
        shutil.copytree(FIXTURES / "planner" / LM_FOLDER, out / LM_FOLDER)
        _LIVE["path"] = make(out)
    return _LIVE["path"]


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "planner"))
