"""Load or train a tokenizer; special-token ids; the wrapper every other module uses.

Layout follows mmBERT's Gemma-2 vocabulary: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3,
``<mask>`` 4, and sequences wrapped as ``<bos> A <eos>`` (pairs ``<bos> A <eos> B <eos>``) by a
``TemplateProcessing`` post-processor.

Training choices (``train_tokenizer``):
- Unigram LM (SentencePiece's algorithm, via HF ``tokenizers``) with **byte fallback**: the 256 pieces
  ``<0x00>``..``<0xFF>`` sit right after the special tokens, and a character missing from the vocabulary
  becomes its UTF-8 bytes instead of ``<unk>``, so every text round-trips exactly. The byte pieces get a
  prohibitive score so the Viterbi search never picks them for literal text like "<0x41>".
- No normaliser (Gemma has none): the text decoded is the text encoded. Spaces become ``▁``
  (Metaspace, prefixed to the first word only) and digits are split one by one, as Gemma does.
- Character coverage as SentencePiece: the rarest characters (0.05% of the balanced text) get no piece
  and are learned around (training splits words at them); they fall back to bytes. This keeps ~4,000
  once-seen Han/Yi/Hangul characters from filling a 16k vocabulary (the HF trainer would otherwise
  insist on a piece for every character it sees).
- Language-balanced text: per language id, ``p ∝ n^τ`` over character counts (τ = 0.3 by default, as
  mmBERT's last phase), realised by repeating or subsampling whole articles to a fixed character budget,
  so small languages and scripts get pieces. The texts come from the caller (``corpus.tokenizer_training``
  gives the shipped corpus's training articles: the held-out ones are dropped there).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer


PAD, EOS, BOS, UNK, MASK = "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, MASK)  # ids 0..4, Gemma-2's order
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
BYTE_TOKEN_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
MODEL_MAX_LENGTH = 8192  # mmBERT's context length
ASCII_PRINTABLE = tuple(chr(c) for c in range(0x20, 0x7F))  # always get a piece: code, URLs, numbers

# Accepted spellings when reading a foreign tokenizer.json (Gemma, ModernBERT/BERT, RoBERTa, T5...).
_ALIASES = {
    "pad": ("<pad>", "[PAD]"),
    "eos": ("<eos>", "</s>", "[SEP]"),
    "bos": ("<bos>", "<s>", "[CLS]"),
    "unk": ("<unk>", "[UNK]"),
    "mask": ("<mask>", "[MASK]"),
}


class InvalidTextError(ValueError):
    """A text the tokenizer cannot encode; ``index`` is its position in the batch, so callers can name it
    in their own terms (``input[3]``, ``file.txt:12``)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"texts[{index}] {reason}")
        self.index, self.reason = index, reason


def invalid_text(texts: list) -> InvalidTextError | TypeError:
    """The error for the first text of ``texts`` that is not a string (TypeError) or not valid Unicode."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            return TypeError(f"texts[{i}] is {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return InvalidTextError(i, f"holds a lone surrogate U+{ord(text[e.start]):04X} at character {e.start}; "
                                    "text must be valid Unicode")
    return TypeError("the tokenizer refused the texts, though every one is a valid Unicode string")


def default_tokenizer_path() -> Path:
    """Folder of the shipped tokenizer (``mmbert/assets/tokenizer``)."""
    return Path(str(resources.files("mmbert") / "assets" / "tokenizer"))


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special-token ids the model and the masking need."""

    def __init__(self, backend: BackendTokenizer, model_max_length: int = MODEL_MAX_LENGTH):
        self.backend = backend
        self.model_max_length = model_max_length
        # Outputs must be whole sequences: batching and truncation belong to the data pipeline.
        backend.no_padding()
        backend.no_truncation()
        ids = {}
        for role, spellings in _ALIASES.items():
            ids[role] = next((i for s in spellings if (i := backend.token_to_id(s)) is not None), None)
        missing = [f"{r} ({' / '.join(_ALIASES[r])})" for r in ("pad", "mask") if ids[r] is None]
        if missing:
            raise ValueError(f"tokenizer has no {' and no '.join(missing)} token; MLM training needs both")
        self.pad_id: int = ids["pad"]
        self.mask_id: int = ids["mask"]
        self.eos_id: int | None = ids["eos"]
        self.bos_id: int | None = ids["bos"]
        self.unk_id: int | None = ids["unk"]
        self.mask_token: str = backend.id_to_token(self.mask_id)
        added = backend.get_added_tokens_decoder()
        self.special_ids: frozenset[int] = frozenset(
            {i for i in ids.values() if i is not None} | {i for i, t in added.items() if t.special}
        )

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Load ``tokenizer.json`` or a folder holding one (model_max_length from its config if any)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        max_len = MODEL_MAX_LENGTH
        config = file.parent / "tokenizer_config.json"
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
            if isinstance(value, int) and value < 10**9:  # transformers writes 1e30 for "unlimited"
                max_len = value
        return cls(BackendTokenizer.from_file(str(file)), model_max_length=max_len)

    @classmethod
    def default(cls) -> "Tokenizer":
        """The shipped tokenizer: Unigram + byte fallback, 16,384 pieces, trained on the UDHR training articles."""
        return cls.from_file(default_tokenizer_path())

    # -- use -----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            raise invalid_text([text]) from None

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Ids per text. A text the Rust backend cannot take (a lone surrogate such as ``"\\ud800"``, which
        JSON's ``\\u`` escapes and Python strings allow but UTF-8 does not) raises ``InvalidTextError``."""
        texts = list(texts)
        try:
            encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        except TypeError:  # the backend's message names a type, not the text; find the text on this rare path
            raise invalid_text(texts) from None
        return [e.ids for e in encodings]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def byte_ids(self) -> frozenset[int]:
        """Ids of byte-fallback pieces (``<0xNN>``), empty for a tokenizer without them."""
        vocab = self.backend.get_vocab(with_added_tokens=False)
        return frozenset(i for t, i in vocab.items() if BYTE_TOKEN_RE.fullmatch(t))

    # -- saving --------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` so that
        ``transformers.AutoTokenizer.from_pretrained(directory)`` loads it offline."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        tokens = {
            f"{role}_token": self.backend.id_to_token(i)
            for role, i in (("bos", self.bos_id), ("eos", self.eos_id), ("unk", self.unk_id),
                            ("pad", self.pad_id), ("mask", self.mask_id))
            if i is not None
        }
        config = {
            # "PreTrainedTokenizerFast" loads in transformers 4.x and 5.x alike.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length,
            "padding_side": "right",
            "clean_up_tokenization_spaces": False,
            **tokens,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n", encoding="utf-8")
        return out


# -- training ----------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    vocab_size: int = 16_384  # matches the model preset "mini"
    tau: float = 0.3  # language sampling temperature: p ∝ n^τ
    budget_chars: int | None = None  # characters of balanced text; None = as many as the input has
    seed: int = 0
    max_piece_length: int = 16  # SentencePiece's default
    character_coverage: float = 0.9995  # SentencePiece's default: rarer characters are left to byte fallback
    model_max_length: int = MODEL_MAX_LENGTH


def balanced_texts(groups: dict[str, list[str]], tau: float, budget_chars: int | None, seed: int) -> list[str]:
    """Temperature-sample texts over languages: language ``l`` with ``n_l`` characters gets
    ``budget · n_l^τ / Σ n^τ`` characters, filled by cycling through its texts in a seeded order
    (repeating small languages, cutting large ones at a whole text; at least one text each)."""
    sizes = {lang: sum(map(len, texts)) for lang, texts in groups.items() if texts}
    if not sizes:
        raise ValueError("no training text")
    budget = budget_chars if budget_chars is not None else sum(sizes.values())
    weights = {lang: n**tau for lang, n in sizes.items()}
    norm = sum(weights.values())
    rng = random.Random(seed)
    out: list[str] = []
    for lang in sorted(sizes):
        texts = list(groups[lang])
        rng.shuffle(texts)
        target, taken, i = budget * weights[lang] / norm, 0, 0
        while taken < target or i == 0:
            text = texts[i % len(texts)]
            out.append(text)
            taken += len(text)
            i += 1
    rng.shuffle(out)
    return out


def build_backend(vocab: list[tuple[str, float]]) -> BackendTokenizer:
    """A byte-fallback Unigram tokenizer over ``vocab`` (specials first) with mmBERT's wrapping."""
    backend = BackendTokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK), byte_fallback=True))
    backend.pre_tokenizer = _pre_tokenizer()
    # Gemma's decoder chain; Metaspace's own decoder drops inner spaces once bytes are fused.
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
        special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS)), (EOS, SPECIAL_TOKENS.index(EOS))],
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return backend


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"), pre_tokenizers.Digits(individual_digits=True)]
    )


def rare_characters(texts: list[str], coverage: float, max_kept: int) -> set[str]:
    """Characters outside the most frequent set that covers ``coverage`` of all character occurrences
    (and outside the ``max_kept`` most frequent, so the alphabet leaves room for longer pieces)."""
    counts = Counter(ch for t in texts for ch in t)
    total, covered = sum(counts.values()), 0
    rare = set()
    for rank, (ch, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        if covered >= coverage * total or rank >= max_kept:
            rare.add(ch)
        covered += n
    return rare - set(ASCII_PRINTABLE)


def _class_escape(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch


def canonical_pieces(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Make the trainer's output reproducible: ids would otherwise change from run to run.

    Two sources of run-to-run noise in HF's UnigramTrainer: its multithreaded EM leaves ~1e-12 noise in
    the scores (so: round to 1e-6), and characters it appends after training to cover the alphabet get
    made-up scores below every learned piece in hash-set order (so: give that tail one score, the
    highest of it). Pieces are then ordered by (score desc, piece)."""
    rounded = [(p, round(s, 6)) for p, s in pieces if p not in BYTE_TOKENS]
    multi = [s for p, s in rounded if len(p) > 1]
    floor = min(multi) if multi else float("-inf")
    tail = [s for p, s in rounded if len(p) == 1 and s < floor]
    if tail:
        rounded = [(p, max(tail) if len(p) == 1 and s < floor else s) for p, s in rounded]
    return sorted(rounded, key=lambda ps: (-ps[1], ps[0]))


def train_tokenizer(texts: Iterable[str], config: TrainConfig | None = None) -> Tokenizer:
    """Train a byte-fallback Unigram tokenizer of ``config.vocab_size`` pieces (specials and bytes included)
    on already-balanced ``texts``."""
    config = config or TrainConfig()
    n_learned = config.vocab_size - len(BYTE_TOKENS)
    if n_learned <= len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size {config.vocab_size} leaves no room beside {len(BYTE_TOKENS)} byte pieces")
    texts = list(texts)
    # At most half the learned pieces single characters: below that the trainer cannot fit the alphabet.
    rare = rare_characters(texts, config.character_coverage, max_kept=n_learned // 2)
    scratch = BackendTokenizer(models.Unigram())
    scratch.pre_tokenizer = _pre_tokenizer()
    if rare:
        split = pre_tokenizers.Split(Regex("[" + "".join(_class_escape(c) for c in sorted(rare)) + "]"), "removed")
        scratch.pre_tokenizer = pre_tokenizers.Sequence([split, _pre_tokenizer()])
    trainer = trainers.UnigramTrainer(
        vocab_size=n_learned,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token=UNK,
        max_piece_length=config.max_piece_length,
        initial_alphabet=list(ASCII_PRINTABLE),
        show_progress=False,
    )
    scratch.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(scratch.to_str())["model"]["vocab"]
    if [p for p, _ in learned[: len(SPECIAL_TOKENS)]] != list(SPECIAL_TOKENS):
        raise RuntimeError("the trainer did not put the special tokens first")
    pieces = canonical_pieces(learned[len(SPECIAL_TOKENS):])
    floor = min((s for _, s in pieces), default=0.0) - 1000.0
    vocab = [(t, 0.0) for t in SPECIAL_TOKENS] + [(b, floor) for b in BYTE_TOKENS] + pieces
    return Tokenizer(build_backend(vocab), model_max_length=config.model_max_length)


# -- extension ---------------------------------------------------------------------------------------
def unigram_pieces(tokenizer: Tokenizer) -> list[tuple[str, float]]:
    """The (piece, score) list of a Unigram tokenizer, in id order; a ValueError for any other model."""
    model = json.loads(tokenizer.backend.to_str())["model"]
    if model.get("type") != "Unigram":
        raise ValueError(f"vocabulary extension needs a Unigram tokenizer, this one is {model.get('type')!r}")
    return [(p, float(s)) for p, s in model["vocab"]]


def extend_tokenizer(tokenizer: Tokenizer, texts: Iterable[str], n_new: int, multiple_of: int = 64,
                     seed: int = 0) -> tuple[Tokenizer, list[str]]:
    """``tokenizer`` with pieces learned on ``texts`` appended (ids after every old one, which keep theirs).

    A Unigram of ``n_new`` learned pieces is trained on ``texts`` with ``train_tokenizer``; its pieces the old
    vocabulary lacks are appended with the scores (log-probabilities) they got there, highest first, and the
    lowest are dropped until the vocabulary size is a multiple of ``multiple_of`` (so fewer than ``n_new``
    may be added; none is ever a duplicate). Returns (tokenizer, added pieces)."""
    old = unigram_pieces(tokenizer)
    have = {p for p, _ in old}
    fresh = train_tokenizer(texts, TrainConfig(vocab_size=n_new + len(BYTE_TOKENS) + len(SPECIAL_TOKENS), seed=seed))
    learned = [(p, s) for p, s in unigram_pieces(fresh) if p not in SPECIAL_TOKENS and p not in BYTE_TOKENS]
    new = sorted(((p, s) for p, s in learned if p not in have), key=lambda ps: (-ps[1], ps[0]))
    size = len(old) + len(new)
    keep = len(new) - (size % multiple_of) if size % multiple_of else len(new)
    if keep <= 0:
        raise ValueError(f"only {len(new)} of the {len(learned)} learned pieces are new, too few to reach a "
                         f"vocabulary size that is a multiple of {multiple_of} above {len(old)}; ask for more pieces")
    new = new[:keep]
    state = json.loads(tokenizer.backend.to_str())
    state["model"]["vocab"] = [[p, s] for p, s in old + new]
    backend = BackendTokenizer.from_str(json.dumps(state))
    return Tokenizer(backend, model_max_length=tokenizer.model_max_length), [p for p, _ in new]


def fertility(tokenizer: Tokenizer, texts: list[str]) -> float:
    """Pieces per character of ``texts`` (special tokens not counted)."""
    chars = sum(len(t) for t in texts)
    pieces = sum(len(ids) for ids in tokenizer.encode_batch(texts, add_special_tokens=False))
    return pieces / chars if chars else float("nan")
