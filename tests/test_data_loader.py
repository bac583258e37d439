"""The whole pipeline: batch format, packing, sampling frequencies, sharding over ranks/workers,
epochs, bad-data counters, and exact resume with several dataloader workers."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from mmbert.data import IGNORE_INDEX, PhaseData, ReadOptions, assemble_batch, build_loader
from tests.test_data_helpers import chi2_pvalue, corpus_tokenizer, write_corpus

BATCH_KEYS = {"input_ids", "labels", "cu_seqlens", "max_seqlen", "position_ids", "languages", "num_tokens"}


@pytest.fixture
def corpus(tmp_path):
    manifest, texts = write_corpus(tmp_path)
    return manifest, texts, corpus_tokenizer(texts)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def documents(batches, tok, rows_per_batch, seq_len):
    """Documents as laid out per language: rows of a language concatenated, cut at <bos>. Only
    meaningful for an unmasked single-worker stream."""
    streams = defaultdict(list)
    for b in batches:
        for r, lang in enumerate(b["languages"]):
            streams[lang] += b["labels_free_ids"][r * seq_len : (r + 1) * seq_len].tolist()
    out = {}
    for lang, ids in streams.items():
        docs, cur = [], []
        for i in ids:
            if i == tok.bos_id and cur:
                docs.append(cur)
                cur = []
            cur.append(i)
        out[lang] = docs  # the last one may be incomplete
    return out


def test_assemble_batch_hand_computed():
    rows = [[np.array([2, 7, 8]), np.array([2, 9])], [np.array([5, 6, 1, 2, 7])]]
    b = assemble_batch(rows, ["eng_Latn", "fao_Latn"])
    assert b["input_ids"].tolist() == [2, 7, 8, 2, 9, 5, 6, 1, 2, 7]
    assert b["cu_seqlens"].dtype == torch.int32 and b["cu_seqlens"].tolist() == [0, 3, 5, 10]
    assert b["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert b["max_seqlen"] == 5 and b["num_tokens"] == 10 and b["languages"] == ["eng_Latn", "fao_Latn"]


def test_batch_format_packing_and_documents_intact(corpus):
    manifest, texts, tok = corpus
    seq_len, rows = 16, 4
    loader = build_loader(manifest, tok, PhaseData(tau=0.5, mask_ratio=0.0, seq_len=seq_len, batch_rows=rows, seed=1))
    batches = take(loader, 60)
    for b in batches:
        assert set(b) == BATCH_KEYS
        n = rows * seq_len
        assert b["num_tokens"] == n and b["input_ids"].shape == (n,) and b["input_ids"].dtype == torch.long
        assert b["labels"].dtype == torch.long and (b["labels"] == IGNORE_INDEX).all()  # mask_ratio 0
        cu = b["cu_seqlens"]
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == n and (cu[1:] > cu[:-1]).all()
        assert set(range(0, n + 1, seq_len)) <= set(cu.tolist()), "a piece crosses a row boundary"
        lengths = (cu[1:] - cu[:-1]).tolist()
        assert b["max_seqlen"] == max(lengths)
        expected_pos = torch.cat([torch.arange(k) for k in lengths])
        assert torch.equal(b["position_ids"], expected_pos)
        assert len(b["languages"]) == rows
        # every <bos> starts a piece (documents are not glued inside a piece)
        bos_at = set(torch.nonzero(b["input_ids"] == tok.bos_id).flatten().tolist())
        assert bos_at <= set(cu[:-1].tolist())
        b["labels_free_ids"] = b["input_ids"]
    encoded = {lang: {tuple(ids) for ids in tok.encode_batch(ts)} for lang, ts in texts.items()}
    for lang, docs in documents(batches, tok, rows, seq_len).items():
        complete = docs[:-1]
        assert complete, lang
        for d in complete:
            assert tuple(d) in encoded[lang], f"{lang}: packed document is not a corpus document"
        n_docs = len(texts[lang])
        first_epoch = complete[:n_docs]
        assert len({tuple(d) for d in first_epoch}) == len(first_epoch), f"{lang}: repeated within an epoch"
    assert loader.stats()["languages"]["fao_Latn"]["epochs"] >= 1  # the small language wrapped, no crash


def test_masking_in_the_pipeline(corpus):
    manifest, texts, tok = corpus
    loader = build_loader(manifest, tok, PhaseData(mask_ratio=0.3, seq_len=64, batch_rows=8))
    for b in take(loader, 5):
        predicted = b["labels"] != IGNORE_INDEX
        special = torch.isin(b["input_ids"], torch.tensor(sorted(tok.special_ids))) & ~predicted
        eligible = int(b["num_tokens"] - special.sum())
        assert abs(predicted.sum().item() - 0.3 * eligible) <= 1
        assert not torch.isin(b["labels"][predicted], torch.tensor(sorted(tok.special_ids))).any()


def test_row_languages_follow_p(corpus):
    manifest, texts, tok = corpus
    loader = build_loader(manifest, tok, PhaseData(tau=0.5, mask_ratio=0.0, seq_len=4, batch_rows=100, seed=3),
                          num_workers=0)
    counts = Counter(lang for b in take(loader, 40) for lang in b["languages"])
    probs = loader.stats()["probabilities"]
    sizes = {lang: sum(len(t.encode()) for t in ts) for lang, ts in texts.items()}
    assert probs == pytest.approx({k: v ** 0.5 / sum(s ** 0.5 for s in sizes.values()) for k, v in sizes.items()})
    stat, p = chi2_pvalue(counts, probs)
    assert p > 1e-3, f"chi2={stat:.2f}, p={p:.2e}: {counts} vs {probs}"


def _run(manifest, tok, phase, n, state=None, **kw):
    loader = build_loader(manifest, tok, phase, state=state, **kw)
    out = take(loader, n)
    st = json.loads(json.dumps(loader.state_dict()))  # must survive JSON
    loader.close()
    return out, st


def _assert_same(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        for k in ("input_ids", "labels", "cu_seqlens", "position_ids"):
            assert torch.equal(x[k], y[k]), f"{what}: batch {i} differs in {k}"
        assert (x["languages"], x["max_seqlen"], x["num_tokens"]) == (y["languages"], y["max_seqlen"], y["num_tokens"])


@pytest.mark.parametrize("num_workers, splits", [(2, (5, 12)), (2, (8,)), (0, (7, 13))])
def test_resume_is_exact(tmp_path, num_workers, splits):
    manifest, texts = write_corpus(tmp_path, {"eng_Latn": 40, "fao_Latn": 5, "tir_Ethi": 9})
    tok = corpus_tokenizer(texts)
    # Tiny windows and blocks: restores land mid-window, mid-document, and epochs wrap in between.
    phase = PhaseData(tau=0.3, mask_ratio=0.3, seq_len=24, batch_rows=3, seed=11, shuffle_window=4)
    opts = ReadOptions(block_bytes=700)
    total = 18
    loader = build_loader(manifest, tok, phase, num_workers=num_workers, options=opts)
    reference = take(loader, total)
    assert loader.stats()["languages"]["fao_Latn"]["epochs"] >= 1  # restores straddle an epoch change
    loader.close()
    got, state, done = [], None, 0
    for split in (*splits, total):  # stop and restore at each split, chaining the states
        part, state = _run(manifest, tok, phase, split - done, state=state, num_workers=num_workers, options=opts)
        got += part
        done = split
        assert state["batches"] == split and len(state["workers"]) == max(1, num_workers)
    _assert_same(got, reference, f"resume at {splits} with {num_workers} workers")


def test_phase_from_dict_rejects_unknown_keys():
    assert PhaseData.from_dict({"tau": 0.3, "mask_ratio": 0.05}) == PhaseData(tau=0.3, mask_ratio=0.05)
    with pytest.raises(ValueError, match="mask_rate.*phase 3"):
        PhaseData.from_dict({"mask_rate": 0.05}, "phase 3")
    with pytest.raises(ValueError, match="mask_ratio"):
        PhaseData(mask_ratio=1.5)


def test_state_of_another_setup_is_refused(corpus):
    manifest, texts, tok = corpus
    phase = PhaseData(seq_len=16, batch_rows=2)
    _, state = _run(manifest, tok, phase, 2, num_workers=0)
    with pytest.raises(ValueError, match="num_workers"):
        build_loader(manifest, tok, phase, num_workers=2, state=state)
    with pytest.raises(ValueError, match="phase"):
        build_loader(manifest, tok, PhaseData(seq_len=32, batch_rows=2), state=state)


def test_ranks_and_workers_see_disjoint_documents(corpus):
    manifest, texts, tok = corpus
    phase = PhaseData(tau=0.0, mask_ratio=0.0, seq_len=8, batch_rows=2, seed=4)
    world, workers = 2, 2
    seen = defaultdict(dict)  # lang -> marker -> global worker
    stats = []
    for rank in range(world):
        loader = build_loader(manifest, tok, phase, rank=rank, world_size=world, num_workers=workers,
                              options=ReadOptions(block_bytes=500))
        for i, b in enumerate(take(loader, 12)):
            g = rank * workers + i % workers  # DataLoader serves workers round-robin
            ids = b["input_ids"]
            cu = b["cu_seqlens"].tolist()
            for start, end in zip(cu[:-1], cu[1:]):
                if ids[start] == tok.bos_id and end - start > 1:  # a document start: next is its unique marker
                    marker = tok.id_to_token(int(ids[start + 1]))
                    lang = marker.split("#")[0]
                    assert seen[lang].setdefault(marker, g) == g, f"{marker} read by workers {seen[lang][marker]} and {g}"
        stats.append(loader.stats())
        loader.close()
    for lang in texts:
        assert all(s["languages"].get(lang, {"epochs": 0})["epochs"] == 0 for s in stats), "an epoch wrapped; the check needs fewer batches"
        assert seen[lang], lang


def test_tiny_language_wraps_many_epochs_without_crash(tmp_path):
    manifest, texts = write_corpus(tmp_path, {"fao_Latn": 2})  # two documents, four workers
    tok = corpus_tokenizer(texts)
    phase = PhaseData(languages=["fao_Latn", "tir_Ethi"], tau=0.0, mask_ratio=0.0, seq_len=32, batch_rows=4)
    loader = build_loader(manifest, tok, phase, rank=1, world_size=2, num_workers=2)
    batches = take(loader, 30)
    st = loader.stats()
    loader.close()
    assert st["languages"]["fao_Latn"]["epochs"] >= 10
    assert {lang for b in batches for lang in b["languages"]} == {"fao_Latn", "tir_Ethi"}
    # global workers 2 and 3 hold the second copy of each one-document shard: their slices are empty
    assert st["languages"]["fao_Latn"]["whole_language_workers"] == 2
    assert st["languages"]["tir_Ethi"]["whole_language_workers"] == 0


def test_bad_data_is_skipped_and_counted_in_stats(tmp_path, caplog):
    manifest, texts = write_corpus(tmp_path)
    tok = corpus_tokenizer(texts)
    eng = tmp_path / "train" / "eng.jsonl"
    eng.write_bytes(eng.read_bytes() + b'{"text": "broken\n{"title": "x"}\n\xff\xfe\n' + b'{"text": "eng_Latn#0 ok"}\n')
    (tmp_path / "train" / "empty.txt").write_bytes(b"")
    manifest.write_text(manifest.read_text() + "  cmn_Hani:\n    - train/empty.txt\n    - train/missing.txt\n")
    with caplog.at_level(logging.WARNING):
        loader = build_loader(manifest, tok, PhaseData(tau=1.0, mask_ratio=0.15, seq_len=64, batch_rows=8), num_workers=2)
        take(loader, 12)  # > 120 eng documents: the bad records at the end have been read
    st = loader.stats()
    loader.close()
    assert st["languages"]["eng_Latn"]["epochs"] >= 1
    # counted once although both workers share the single eng shard
    assert st["skipped"] == {"malformed_json": 1, "missing_field": 1, "invalid_utf8": 1, "missing_path": 1, "empty_file": 1}
    assert set(st["probabilities"]) == {"eng_Latn", "fao_Latn", "tir_Ethi"}
    for needle in (f"{eng}:121", f"{eng}:122", f"{eng}:123", "missing.txt", "empty.txt"):
        assert needle in caplog.text, needle


def test_project_tokenizer_class_fits_the_protocol(corpus):
    tokenizer = pytest.importorskip("mmbert.tokenizer")
    manifest, texts, tok = corpus
    real = tokenizer.Tokenizer(tok.backend)
    assert real.special_ids == tok.special_ids and real.mask_id == tok.mask_id
    phase = PhaseData(mask_ratio=0.15, seq_len=32, batch_rows=2)
    a = take(build_loader(manifest, real, phase), 3)
    b = take(build_loader(manifest, tok, phase), 3)
    _assert_same(a, b, "mmbert.tokenizer.Tokenizer vs the test tokenizer")


def test_unusable_and_tiny_languages_get_one_warning_each(tmp_path, caplog):
    """A language whose every record is bad, and one with a single short document that is re-read every
    few rows: one WARNING each with the numbers, not an INFO line per epoch (issue #13)."""
    from tests.test_data_helpers import doc_text, tiny_tokenizer

    eng = [doc_text("eng_Latn", i, 30) for i in range(60)]
    (tmp_path / "eng.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in eng))
    (tmp_path / "bad.jsonl").write_text("not json\n" * 7 + '{"text": 3}\n')
    (tmp_path / "one.txt").write_text("w1 w2\n")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("languages:\n  eng_Latn: [eng.jsonl]\n  fao_Latn: [bad.jsonl]\n  tir_Ethi: [one.txt]\n")
    tok = tiny_tokenizer(eng + ["w1 w2"])
    with caplog.at_level(logging.INFO):
        loader = build_loader(manifest, tok, PhaseData(tau=0.3, mask_ratio=0.0, seq_len=32, batch_rows=8, seed=0))
        batches = take(loader, 12)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    bad = [m for m in warnings if m.startswith("fao_Latn")]
    assert bad == ["fao_Latn: no readable document in its 1 file(s) (1 bad_field, 7 malformed_json); the language "
                   "is left out of training"]
    one = [m for m in warnings if m.startswith("tir_Ethi")]
    assert len(one) == 1 and "all 1 documents of the language read (sampling probability 0." in one[0], warnings
    assert sum(lang == "tir_Ethi" for b in batches for lang in b["languages"]) > 0
    assert not [r for r in caplog.records if "finished epoch" in r.getMessage() and r.levelno >= logging.INFO]
