"""MDS sources and pre-tokenized input: the reader against shards the real MDSWriter wrote
(tests/fixtures/mds), the manifest layouts of the published data, document boundaries inside chunks,
sizes from the index, sharding over ranks x workers, exact resume, damaged shards, tokenizer checks."""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

from mmbert.data import DataErrors, PhaseData, ReadOptions, build_loader, load_manifest, measure_sizes, plan_shards, read_shard
from mmbert.data import mds
from mmbert.data.packing import split_documents
from tests.test_data_helpers import SPECIALS, WordTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "mds"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
BOS, EOS = 2, 1


def fixture_tokenizer(vocab: int = 1024) -> WordTokenizer:
    """Ids 0..4 are the specials (Gemma's layout), id i >= 5 is the word ``t{i}`` (as the fixtures)."""
    table = {t: i for i, t in enumerate(SPECIALS)} | {f"t{i}": i for i in range(5, vocab)}
    backend = BackendTokenizer(models.WordLevel(table, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import processors

    backend.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    return WordTokenizer(backend)


def copy_fixtures(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "mds"
    for n in names:
        shutil.copytree(FIXTURES / n, root / n)
    return root


def write_manifest(tmp_path: Path, body: str) -> Path:
    m = tmp_path / "manifest.yaml"
    m.write_text("languages:\n" + body)
    return m


def all_samples(folder) -> list:
    return [v for s in mds.read_index(str(folder)) for _, v in mds.iter_samples(s)]


def fixture_docs(name: str) -> list[tuple]:
    flat = np.concatenate([np.array(c) for c in EXPECTED[name]])
    return [tuple(d.tolist()) for d in split_documents(flat, BOS, EOS)]


# --- the reader against the real writer ------------------------------------------------------------

def test_reader_matches_the_real_writer_uint32_and_str():
    got = all_samples(FIXTURES / "eng_Latn")
    assert len(mds.read_index(str(FIXTURES / "eng_Latn"))) == 5  # several shards (size_limit 1 KiB)
    assert [a.dtype for a in got] == [np.uint32] * len(got)
    assert [a.tolist() for a in got] == EXPECTED["eng_Latn"]
    texts = all_samples(FIXTURES / "ita_Latn_text")
    assert texts == EXPECTED["ita_Latn_text"]


def test_reader_dynamic_dtype_subfolders_and_merged_root_index():
    parts = sorted((FIXTURES / "fra_Latn").iterdir())
    got = [v for p in parts for v in all_samples(p)]
    assert {str(v.dtype) for v in got} == {"int32", "uint16"}  # 'ndarray' with the dtype in each sample
    assert [v.tolist() for v in got] == EXPECTED["fra_Latn"]
    shards = mds.read_index(str(FIXTURES / "deu_Latn"))  # root index.json listing a/ and b/ shards
    assert [Path(s.raw).parent.name for s in shards] == ["a", "b"]
    assert [v.tolist() for v in all_samples(FIXTURES / "deu_Latn")] == EXPECTED["deu_Latn"]


def test_compressed_shards(tmp_path):
    root = copy_fixtures(tmp_path, "compressed_gz", "compressed_zstd")
    assert not list((root / "compressed_gz").glob("*.mds"))  # only the compressed copies are there
    assert [v.tolist() for v in all_samples(root / "compressed_gz")] == EXPECTED["compressed"]
    assert len(list((root / "compressed_gz").glob("*.mds"))) == 2  # decompressed once, beside the zip
    try:
        import zstandard  # noqa: F401
        have_zstd = True
    except ImportError:
        try:
            import zstd  # noqa: F401
            have_zstd = True
        except ImportError:
            have_zstd = False
    if have_zstd:
        assert [v.tolist() for v in all_samples(root / "compressed_zstd")] == EXPECTED["compressed"]
    else:
        with pytest.raises(mds.MDSError, match=r"shard\.00000\.mds\.zstd.*zstandard"):
            all_samples(root / "compressed_zstd")


def test_estimated_tokens_from_the_index_alone(monkeypatch):
    for name in ("eng_Latn", "deu_Latn"):
        true = sum(len(c) for c in EXPECTED[name])
        est = sum(s.estimated_tokens() for s in mds.read_index(str(FIXTURES / name)))
        assert abs(est - true) <= 0.03 * true, (name, est, true)


def test_pickle_and_unknown_encodings_are_refused(tmp_path):
    root = copy_fixtures(tmp_path, "eng_Latn")
    index = root / "eng_Latn" / "index.json"
    obj = json.loads(index.read_text())
    for s in obj["shards"]:
        s["column_encodings"][s["column_names"].index("input_ids")] = "pkl"
    index.write_text(json.dumps(obj))
    with pytest.raises(mds.MDSRefused, match="pickled"):
        mds.read_index(str(root / "eng_Latn"))
    m = write_manifest(tmp_path, f"  eng_Latn: [{root / 'eng_Latn'}]\n")
    with pytest.raises(mds.MDSRefused, match=str(index)):  # not skipped as bad data: an error
        plan_shards(load_manifest(m).languages["eng_Latn"])


def test_truncated_and_corrupt_shards_are_named_and_skipped(tmp_path, caplog):
    root = copy_fixtures(tmp_path, "eng_Latn")
    folder = root / "eng_Latn"
    truncated, corrupt = folder / "shard.00001.mds", folder / "shard.00003.mds"
    truncated.write_bytes(truncated.read_bytes()[:-30])
    raw = bytearray(corrupt.read_bytes())
    raw[0:4] = np.uint32(999).tobytes()  # header disagrees with the index
    corrupt.write_bytes(bytes(raw))
    m = write_manifest(tmp_path, f"  eng_Latn: [{folder}]\n")
    errors = DataErrors()
    files = load_manifest(m).languages["eng_Latn"]
    with caplog.at_level(logging.WARNING):
        got = [t for s in plan_shards(files, errors=errors) for t, _ in read_shard(s, None, errors)]
    assert errors.counts["unreadable_file"] == 2
    assert f"{truncated}: " in caplog.text and "truncated" in caplog.text
    assert f"{corrupt}: header says 999 samples" in caplog.text
    # every sample of the intact shards, and those of the truncated one before the damage
    per_shard = [[v.tolist() for v in all_samples_of(s)] for s in mds.read_index(str(FIXTURES / "eng_Latn"))]
    intact = [x for k, xs in enumerate(per_shard) if k not in (1, 3) for x in xs]
    got_l = [g.tolist() for g in got]
    assert all(x in got_l for x in intact)
    assert len(got_l) < len(EXPECTED["eng_Latn"])


def all_samples_of(shard):
    return [v for _, v in mds.iter_samples(shard)]


# --- manifest layouts --------------------------------------------------------------------------------

def test_manifest_layouts_of_the_published_data(tmp_path):
    m = write_manifest(tmp_path, f"  fra_Latn: [{FIXTURES / 'fra_Latn'}]\n  deu_Latn: [{FIXTURES / 'deu_Latn'}]\n"
                                 f"  eng_Latn: ['{FIXTURES}/eng_*']\n")
    man = load_manifest(m)
    assert [Path(f.path).name for f in man.languages["fra_Latn"]] == ["shard_00000-tokenized-chunked", "shard_00001-tokenized-chunked"]
    assert [f.format for f in man.languages["fra_Latn"]] == ["mds", "mds"]
    assert [Path(f.path).name for f in man.languages["deu_Latn"]] == ["deu_Latn"]  # the root index: one source
    assert [Path(f.path).name for f in man.languages["eng_Latn"]] == ["eng_Latn"]


# --- document boundaries and packing ---------------------------------------------------------------

def test_split_documents_hand_computed():
    ids = np.array([7, 8, 1, 2, 5, 1, 2, 9, 9, 1, 2])
    got = [p.tolist() for p in split_documents(ids, BOS, EOS)]
    assert got == [[7, 8, 1], [2, 5, 1], [2, 9, 9, 1], [2]]
    assert [p.tolist() for p in split_documents(np.array([5, 6]), BOS, EOS)] == [[5, 6]]
    assert np.concatenate(split_documents(ids, None, EOS)).tolist() == ids.tolist()


def mds_manifest(tmp_path, extra: str = "") -> Path:
    return write_manifest(tmp_path, f"  eng_Latn: [{FIXTURES / 'eng_Latn'}]\n  fra_Latn: [{FIXTURES / 'fra_Latn'}]\n"
                                    f"  deu_Latn: [{FIXTURES / 'deu_Latn'}]\n" + extra)


def test_chunks_are_cut_to_seq_len_with_document_boundaries(tmp_path):
    tok = fixture_tokenizer()
    m = mds_manifest(tmp_path)
    seq_len, rows = 40, 4  # fixture chunks are 48 tokens: each is cut into rows
    loader = build_loader(m, tok, PhaseData(tau=0.5, mask_ratio=0.0, seq_len=seq_len, batch_rows=rows, seed=2, shuffle_window=4))
    streams, pieces = defaultdict(list), defaultdict(list)
    for _ in range(40):
        b = next(loader)
        ids, cu = b["input_ids"], b["cu_seqlens"].tolist()
        assert b["num_tokens"] == rows * seq_len and set(range(0, rows * seq_len + 1, seq_len)) <= set(cu)
        # a piece never spans a document boundary: <bos> only opens a piece, <eos> only closes one
        bos_at = torch.nonzero(ids == BOS).flatten().tolist()
        eos_at = torch.nonzero(ids == EOS).flatten().tolist()
        assert set(bos_at) <= set(cu[:-1]) and {i + 1 for i in eos_at} <= set(cu[1:])
        for start, end in zip(cu[:-1], cu[1:]):
            pieces[b["languages"][start // seq_len]].append(tuple(ids[start:end].tolist()))
        for r, lang in enumerate(b["languages"]):
            streams[lang] += ids[r * seq_len : (r + 1) * seq_len].tolist()
    loader.close()
    n_whole = 0
    for lang, stream in streams.items():
        expected = set(fixture_docs(lang))
        # a piece holding a whole document is one of the data's documents (inside a row, nothing is cut)
        whole = [p for p in pieces[lang] if p[0] == BOS and p[-1] == EOS]
        assert all(p in expected for p in whole), lang
        n_whole += len(whole)
        # one epoch of the language's token stream is exactly the data's tokens: none lost, none twice
        n = sum(len(c) for c in EXPECTED[lang])
        assert len(stream) >= n, f"{lang}: the test needs a full epoch"
        assert sorted(stream[:n]) == sorted(t for c in EXPECTED[lang] for t in c), lang
    assert n_whole >= 10


def test_sizes_come_from_the_index_without_reading(tmp_path, monkeypatch):
    tok = fixture_tokenizer()
    m = mds_manifest(tmp_path)

    def no_read(*a, **k):
        raise AssertionError("sizes must not read MDS samples")

    monkeypatch.setattr(mds, "iter_samples", no_read)
    sizes = measure_sizes(load_manifest(m), tok)
    for lang in ("eng_Latn", "deu_Latn"):
        true = sum(len(c) for c in EXPECTED[lang])
        assert abs(sizes[lang]["tokens"] - true) <= 0.03 * true and sizes[lang]["docs"] == len(EXPECTED[lang])
        assert sizes[lang]["bytes"] == 4 * sizes[lang]["tokens"]


# --- sharding and resume ----------------------------------------------------------------------------

def test_ranks_and_workers_read_disjoint_samples(tmp_path):
    tok = fixture_tokenizer()
    m = mds_manifest(tmp_path)
    phase = PhaseData(tau=0.0, mask_ratio=0.0, seq_len=8, batch_rows=2, seed=4, shuffle_window=2)
    opts = ReadOptions(block_bytes=300)  # shards cut into sample ranges: more pieces than workers
    world, workers = 2, 2
    seen = defaultdict(dict)
    stats = []
    for rank in range(world):
        loader = build_loader(m, tok, phase, rank=rank, world_size=world, num_workers=workers, options=opts)
        for i in range(10):
            b = next(loader)
            g = rank * workers + i % workers
            ids, cu = b["input_ids"], b["cu_seqlens"].tolist()
            for start, end in zip(cu[:-1], cu[1:]):
                if ids[start] == BOS and end - start > 1:  # a document start: next is its unique marker
                    lang = b["languages"][start // 8]
                    marker = int(ids[start + 1])
                    assert seen[lang].setdefault(marker, g) == g, f"{lang} doc {marker} read by workers {seen[lang][marker]} and {g}"
        stats.append(loader.stats())
        loader.close()
    assert all(s["languages"].get(lang, {"epochs": 0})["epochs"] == 0 for s in stats for lang in seen), "an epoch wrapped"
    assert len({g for lang in seen for g in seen[lang].values()}) == world * workers


def _run(m, tok, phase, n, state=None, **kw):
    loader = build_loader(m, tok, phase, state=state, **kw)
    out = [next(loader) for _ in range(n)]
    st = json.loads(json.dumps(loader.state_dict()))
    loader.close()
    return out, st


@pytest.mark.parametrize("num_workers, splits", [(2, (5, 11)), (0, (7,))])
def test_resume_is_exact(tmp_path, num_workers, splits):
    tok = fixture_tokenizer()
    m = mds_manifest(tmp_path, f"  ita_Latn: [{FIXTURES / 'ita_Latn_text'}]\n")  # text MDS mixed in
    phase = PhaseData(tau=0.3, mask_ratio=0.3, seq_len=20, batch_rows=3, seed=11, shuffle_window=3, size_unit="tokens")
    opts = ReadOptions(block_bytes=400)
    total = 16
    reference, _ = _run(m, tok, phase, total, num_workers=num_workers, options=opts)
    got, state, done = [], None, 0
    for split in (*splits, total):
        part, state = _run(m, tok, phase, split - done, state=state, num_workers=num_workers, options=opts)
        got += part
        done = split
    for i, (x, y) in enumerate(zip(got, reference)):
        for k in ("input_ids", "labels", "cu_seqlens", "position_ids"):
            assert torch.equal(x[k], y[k]), f"batch {i} differs in {k} (resume at {splits}, {num_workers} workers)"
        assert x["languages"] == y["languages"]


# --- the run's tokenizer against the data ---------------------------------------------------------

def test_vocabulary_too_small_for_the_data_is_an_error(tmp_path):
    m = mds_manifest(tmp_path)
    with pytest.raises(ValueError, match=r"eng_Latn: source .*eng_Latn .*token id \d+, not below the run's vocabulary size 100"):
        build_loader(m, fixture_tokenizer(100), PhaseData(seq_len=16, batch_rows=2))


def test_declared_special_ids_are_checked(tmp_path):
    m = write_manifest(tmp_path, f"  eng_Latn: [{{path: {FIXTURES / 'eng_Latn'}, special_ids: {{bos: 2, eos: 1, mask: 4}}}}]\n")
    build_loader(m, fixture_tokenizer(), PhaseData(seq_len=16, batch_rows=2)).close()
    m = write_manifest(tmp_path, f"  eng_Latn: [{{path: {FIXTURES / 'eng_Latn'}, special_ids: {{bos: 5}}}}]\n")
    with pytest.raises(ValueError, match=r"eng_Latn: source .*eng_Latn was tokenized with bos id 5, the run's tokenizer has 2"):
        build_loader(m, fixture_tokenizer(), PhaseData(seq_len=16, batch_rows=2))


def test_out_of_range_record_mid_stream_is_skipped_and_counted(tmp_path):
    root = copy_fixtures(tmp_path, "deu_Latn")
    shard = mds.read_index(str(root / "deu_Latn"))[1]  # not the first shard, which the build-time check reads
    raw = bytearray(Path(shard.raw).read_bytes())
    raw[-4:] = np.uint32(5000).tobytes()  # the last token id of the last sample
    Path(shard.raw).write_bytes(bytes(raw))
    m = write_manifest(tmp_path, f"  deu_Latn: [{root / 'deu_Latn'}]\n")
    loader = build_loader(m, fixture_tokenizer(), PhaseData(mask_ratio=0.0, seq_len=16, batch_rows=4, shuffle_window=2))
    for _ in range(12):
        assert int(next(loader)["input_ids"].max()) < 1024
    st = loader.stats()
    loader.close()
    assert st["languages"]["deu_Latn"]["epochs"] >= 1 and st["skipped"] == {"token_out_of_range": 1}


# --- pre-tokenized parquet / jsonl / arrow -----------------------------------------------------------

def test_pretokenized_parquet_jsonl_and_arrow_skip_the_tokenizer(tmp_path):
    chunks = [list(map(int, c)) for c in EXPECTED["eng_Latn"]]
    pq.write_table(pa.table({"input_ids": chunks}), tmp_path / "a.parquet", row_group_size=4)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"input_ids": c}) + "\n" for c in chunks)
                                      + json.dumps({"input_ids": "oops"}) + "\n")
    with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as f, pa.ipc.new_file(f, pa.schema([("input_ids", pa.list_(pa.int32()))])) as w:
        w.write_table(pa.table({"input_ids": pa.array(chunks, pa.list_(pa.int32()))}))
    m = write_manifest(tmp_path, "  eng_Latn: [{path: a.parquet, token_field: input_ids}]\n"
                                 "  fra_Latn: [{path: b.jsonl, token_field: input_ids}]\n"
                                 "  deu_Latn: [{path: c.arrow, token_field: input_ids}]\n")
    man = load_manifest(m)
    for lang in ("eng_Latn", "fra_Latn", "deu_Latn"):
        errors = DataErrors()
        got = [t.tolist() for s in plan_shards(man.languages[lang]) for t, _ in read_shard(s, None, errors)]
        assert got == chunks, lang
        assert dict(errors.counts) == ({"bad_field": 1} if lang == "fra_Latn" else {})

    class NoEncode(WordTokenizer):
        def encode_batch(self, texts, add_special_tokens=True):
            raise AssertionError("pre-tokenized data must not be tokenized")

    tok = NoEncode(fixture_tokenizer().backend)
    loader = build_loader(m, tok, PhaseData(mask_ratio=0.15, seq_len=32, batch_rows=4, size_unit="tokens"))
    b = next(loader)
    loader.close()
    assert b["num_tokens"] == 128
    assert measure_sizes(man, None)["eng_Latn"]["bytes"] == 4 * sum(len(c) for c in chunks)


# --- our writer --------------------------------------------------------------------------------------

def test_our_writer_writes_what_the_real_writer_wrote(tmp_path):
    """Same samples, columns and size_limit as make_fixtures.py: byte-identical shards and index."""
    eng = [np.array(c, np.uint32) for c in EXPECTED["eng_Latn"]]
    mds.write_mds(str(tmp_path / "eng"), {"input_ids": "ndarray:uint32", "id": "str"},
                  ({"input_ids": c, "id": f"eng-{i}"} for i, c in enumerate(eng)), size_limit=1 << 10)
    ref = json.loads((FIXTURES / "eng_Latn" / "index.json").read_text())
    assert json.loads((tmp_path / "eng" / "index.json").read_text()) == ref
    for s in ref["shards"]:
        name = s["raw_data"]["basename"]
        assert (tmp_path / "eng" / name).read_bytes() == (FIXTURES / "eng_Latn" / name).read_bytes(), name
    fra = EXPECTED["fra_Latn"][: len(EXPECTED["fra_Latn"]) // 2]
    mds.write_mds(str(tmp_path / "fra"), {"input_ids": "ndarray", "len": "int"},
                  ({"input_ids": np.array(c, np.int32), "len": len(c)} for c in fra), size_limit=1 << 10)
    sub = FIXTURES / "fra_Latn" / "shard_00000-tokenized-chunked"
    assert sorted(p.name for p in (tmp_path / "fra").iterdir()) == sorted(p.name for p in sub.iterdir())
    for p in sub.iterdir():
        assert (tmp_path / "fra" / p.name).read_bytes() == p.read_bytes(), p.name
