"""Shared by the tests/test_eval_*.py files: a tiny checkpoint (the "tiny" preset, random weights, a
512-piece BPE tokenizer trained on English and UDHR text) and seeded toy data in the benchmarks' formats."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, processors, trainers

from mmbert.model import MmBertForMaskedLM, ModelConfig
from mmbert.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
POSITIVE = ["good", "great", "fine", "happy", "lovely", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly", "nasty"]
FILLER = ["the", "film", "was", "really", "a", "story", "and", "plot", "very", "it", "music", "actor"]


def build_tokenizer(texts: list[str]) -> Tokenizer:
    backend = BackendTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, limit_alphabet=160, show_progress=False)
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    return Tokenizer(backend)


def make_checkpoint(directory: Path, texts: list[str]) -> Path:
    torch.manual_seed(0)
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    model.save_pretrained(directory)
    build_tokenizer(texts).save(directory)
    return directory


def toy_sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def write_sst2(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        y = rng.random() < 0.5
        rows.append(f"{toy_sentence(rng, y)}\t{int(y)}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_xnli(path: Path, n: int, seed: int, languages=("en", "fr")) -> Path:
    """XNLI columns; entailment iff both sentences carry the same polarity word (a separable toy)."""
    rng = random.Random(seed)
    cols = ["language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
            "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID", "genre", "label1", "label2",
            "label3", "label4", "label5", "sentence1_tokenized", "sentence2_tokenized", "match"]
    rows = ["\t".join(cols)]
    for i in range(n):
        for lang in languages:
            a, b = rng.random() < 0.5, rng.random() < 0.5
            label = "entailment" if a == b else "contradiction"
            s1, s2 = toy_sentence(rng, a), toy_sentence(rng, b)
            rows.append("\t".join([lang, label, "", "", "", "", s1, s2, str(i), str(i), "toy", label, "", "", "", "",
                                   s1, s2, "True"]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_squad(path: Path, n: int, seed: int, prefix: str = "english") -> Path:
    """Each context names one colour after 'colour is'; the question asks for it."""
    rng = random.Random(seed)
    colours = ["red", "blue", "green", "yellow", "black", "white"]
    paragraphs = []
    for i in range(n):
        colour = rng.choice(colours)
        before = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 12)))
        after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 12)))
        context = f"{before} the colour is {colour} {after}."
        start = context.index(f"is {colour}") + 3
        paragraphs.append({"context": context, "qas": [{"id": f"{prefix}-{i}", "question": "what is the colour?",
                                                        "answers": [{"text": colour, "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "toy", "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return path


def write_conll(path: Path, n: int, seed: int) -> Path:
    """Capitalised names after 'mr' are PER (two tokens: B-PER I-PER); place words are LOC."""
    rng = random.Random(seed)
    names, places = ["Anna", "Ole", "Mia", "Jon", "Kari"], ["Oslo", "Bergen", "Paris", "Rome"]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, 3)]
        words += [("mr", "O"), (rng.choice(names), "B-PER"), (rng.choice(names), "I-PER")]
        words += [("in", "O"), (rng.choice(places), "B-LOC")] + [(w, "O") for w in rng.sample(FILLER, 2)]
        lines += [f"{w} X X {t}" for w, t in words] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_CACHE: dict[str, Path] = {}


def tiny_checkpoint(tmp_root: Path) -> Path:
    """One tiny checkpoint per test session (built in ~2 s): tokenizer from toy words + every third
    UDHR training article."""
    if "ckpt" not in _CACHE:
        from mmbert.corpus import load_corpus, split_heldout

        train, _ = split_heldout(load_corpus())
        rng = random.Random(0)
        texts = [r.text for r in train[::3]] + [toy_sentence(rng, i % 2 == 0) for i in range(300)]
        texts += ["Anna Ole Mia Jon Kari Oslo Bergen Paris Rome mr in what is the colour ? red blue green yellow"] * 20
        _CACHE["ckpt"] = make_checkpoint(tmp_root / "tiny-ckpt", texts)
    return _CACHE["ckpt"]


def one_thread():
    """Generator for an autouse fixture: on the shared 2-core machine, torch's OpenMP threads spin against
    other processes and a tiny model's step slows ~100x; one thread avoids it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
