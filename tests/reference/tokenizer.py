"""A tiny T5 tokenizer (sentencepiece unigram) trained offline, saved the way transformers saves it."""

from __future__ import annotations

import io
from pathlib import Path

from . import require

_CORPUS = [
    "happy upbeat rock song with electric guitar",
    "lofi piano with warm vinyl crackle",
    "ambient electronic pad with warm reverb",
    "a calm acoustic folk tune, slow tempo",
    "dark techno beat 128 bpm with heavy bass",
    "orchestral strings and brass, epic cinematic",
    "jazz trio: piano, upright bass and brushed drums",
    "birds chirping in a forest, gentle wind",
    "80s synthwave with gated reverb drums",
    "hip hop drums and a mellow saxophone",
]


def save_tiny_t5_tokenizer(out_dir: str | Path, vocab_size: int = 96) -> Path:
    """Train a ~1 KB unigram model; save it as a transformers T5 tokenizer (tokenizer.json)."""
    require("transformers")
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tok.save_pretrained(out_dir)
    return out_dir
