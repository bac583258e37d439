"""Readers: every format, byte-range blocks, resumable cursors, and bad data."""

from __future__ import annotations

import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmbert.data import DataErrors, ReadOptions, SourceFile, plan_shards, read_shard
from mmbert.data.sources import split_text


def read_all(files, opts=ReadOptions(), errors=None):
    errors = errors if errors is not None else DataErrors()
    return [t for s in plan_shards(files, opts, errors) for t, _ in read_shard(s, None, errors, opts)]


def src(path, fmt, **kw):
    return SourceFile(str(path), fmt, **kw)


DOCS = [f"document {i} " + "ab " * (i % 7) + "é漢" for i in range(50)]


def write_save_to_disk(folder, texts, n_files=2):
    """What ``datasets.Dataset.save_to_disk`` writes: Arrow IPC *stream* files plus two JSON files."""
    folder.mkdir()
    names, per = [], -(-len(texts) // n_files)
    for k in range(n_files):
        name = f"data-{k:05d}-of-{n_files:05d}.arrow"
        table = pa.table({"text": texts[k * per : (k + 1) * per], "n": list(range(len(texts[k * per : (k + 1) * per])))})
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=7):
                w.write_batch(batch)
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string", "_type": "Value"}}}))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "l.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    (tmp_path / "p.txt").write_text("\n\n".join(d.replace(" ab", "\nab", 1) for d in DOCS) + "\n", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d}, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in DOCS)
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "d.parquet", row_group_size=16)
    write_save_to_disk(tmp_path / "ds", DOCS)
    return {
        "lines": src(tmp_path / "l.txt", "txt"),
        "paragraph": src(tmp_path / "p.txt", "txt", split="paragraph"),
        "jsonl": src(tmp_path / "d.jsonl", "jsonl", text_field="body"),
        "jsonl.gz": src(tmp_path / "d.jsonl.gz", "jsonl.gz"),
        "parquet": src(tmp_path / "d.parquet", "parquet"),
        "arrow": src(tmp_path / "ds", "arrow"),
    }


@pytest.mark.parametrize("kind", ["lines", "paragraph", "jsonl", "jsonl.gz", "parquet", "arrow"])
def test_every_format_reads_all_documents_in_order(files, kind):
    got = read_all([files[kind]])
    expected = [d.replace(" ab", "\nab", 1) for d in DOCS] if kind == "paragraph" else DOCS
    assert got == expected


@pytest.mark.parametrize("kind", ["lines", "paragraph", "jsonl", "jsonl.gz", "parquet", "arrow"])
def test_resuming_from_any_cursor_continues_exactly(files, kind):
    # Small max_doc_chars so documents split into pieces and cursors point inside records too.
    opts = ReadOptions(block_bytes=300, max_doc_chars=12)
    for shard in plan_shards([files[kind]], opts):
        full = list(read_shard(shard, None, DataErrors(), opts))
        assert len(full) > 1
        for i in range(len(full)):
            rest = [t for t, _ in read_shard(shard, json.loads(json.dumps(full[i][1])), DataErrors(), opts)]
            assert rest == [t for t, _ in full[i + 1 :]], f"{kind}: resume after document {i}"


@pytest.mark.parametrize("kind", ["lines", "jsonl"])
@pytest.mark.parametrize("block", [1, 17, 100, 10_000])
def test_byte_blocks_partition_the_lines(files, kind, block):
    opts = ReadOptions(block_bytes=block)
    shards = plan_shards([files[kind]], opts)
    assert len(shards) >= 2 or block == 10_000
    assert read_all([files[kind]], opts) == DOCS


def test_split_text_keeps_words_and_limit():
    text = " ".join(f"word{i}" for i in range(100))
    pieces = split_text(text, 50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == text
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_bad_jsonl_records_are_skipped_counted_and_named(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b'{"text": "unterminated',
        json.dumps({"title": "no text field"}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps({"text": "   "}).encode(),
        b'{"text": "bad \xff\xfe utf8"}',
        b"[1, 2]",
        b"",
        json.dumps({"text": "x" * 5000}).encode(),  # longer than max_record_bytes: skipped
        json.dumps({"text": "good two"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    errors = DataErrors()
    with caplog.at_level(logging.WARNING):
        got = read_all([src(path, "jsonl")], ReadOptions(max_record_bytes=1000), errors)
    assert got == ["good one", "good two"]
    assert dict(errors.counts) == {"malformed_json": 2, "missing_field": 1, "bad_field": 1, "empty_text": 1,
                                   "invalid_utf8": 1, "record_too_long": 1}
    for line_no in (2, 3, 4, 5, 6, 7, 9):
        assert f"{path}:{line_no}:" in caplog.text


def test_invalid_utf8_in_txt_skips_only_that_line(tmp_path, caplog):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"first line\nsecond \xc3\x28 broken\nthird line\n")
    errors = DataErrors()
    with caplog.at_level(logging.WARNING):
        assert read_all([src(path, "txt")], errors=errors) == ["first line", "third line"]
    assert errors.counts == {"invalid_utf8": 1} and f"{path}:2:" in caplog.text


def test_enormous_line_is_split_not_loaded_whole(tmp_path):
    path = tmp_path / "big.txt"
    huge = " ".join(f"w{i % 10}" for i in range(20_000))  # 60 kB on one line
    path.write_text("short\n" + huge + "\nafter\n")
    errors = DataErrors()
    got = read_all([src(path, "txt")], ReadOptions(max_doc_chars=1000), errors)
    assert got[0] == "short" and got[-1] == "after"
    middle = got[1:-1]
    assert all(len(p) <= 1000 for p in middle) and len(middle) >= 60
    assert " ".join(middle).split() == huge.split()  # nothing lost, only split
    assert errors.counts["split_docs"] == 1


def test_empty_and_unreadable_files(tmp_path, caplog):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    (tmp_path / "ok.txt").write_text("kept\n")
    gz = tmp_path / "trunc.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\n' * 200)[:60])
    files = [src(tmp_path / "empty.txt", "txt"), src(tmp_path / "empty.jsonl", "jsonl"),
             src(tmp_path / "broken.parquet", "parquet"), src(gz, "jsonl.gz"), src(tmp_path / "ok.txt", "txt")]
    errors = DataErrors()
    with caplog.at_level(logging.WARNING):
        got = read_all(files, errors=errors)
    assert got[-1] == "kept"
    assert errors.counts["empty_file"] == 2 and errors.counts["unreadable_file"] == 2
    assert "empty.txt" in caplog.text and "broken.parquet" in caplog.text and "trunc.jsonl.gz" in caplog.text


def test_missing_column_in_parquet_and_arrow(tmp_path):
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "x.parquet")
    write_save_to_disk(tmp_path / "ds", ["a", "b", None, "c"], n_files=1)
    errors = DataErrors()
    assert read_all([src(tmp_path / "x.parquet", "parquet")], errors=errors) == []
    assert errors.counts == {"missing_field": 1}
    errors = DataErrors()
    assert read_all([src(tmp_path / "ds", "arrow")], errors=errors) == ["a", "b", "c"]
    assert errors.counts == {"missing_field": 1}  # the null row


def test_log_volume_is_capped_per_file(tmp_path, caplog):
    path = tmp_path / "many.jsonl"
    path.write_text("not json\n" * 50)
    errors = DataErrors(max_logged_per_file=3)
    with caplog.at_level(logging.WARNING):
        read_all([src(path, "jsonl")], errors=errors)
    assert errors.counts["malformed_json"] == 50
    assert len(caplog.records) == 4  # three records and one "further ... are counted" note


# ---- corrupt files (issue #13) ------------------------------------------------------------------------------
def test_corrupt_gzip_is_skipped_with_the_file_named(tmp_path, caplog):
    raw = bytearray(gzip.compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(2000))))
    raw[len(raw) // 2] ^= 0xFF  # zlib.error "invalid distance too far back" (or a CRC error), not EOFError
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(bytes(raw))
    (tmp_path / "ok.txt").write_text("kept\n")
    errors = DataErrors()
    with caplog.at_level(logging.WARNING):
        got = read_all([src(path, "jsonl.gz"), src(tmp_path / "ok.txt", "txt")], errors=errors)
    assert got[-1] == "kept" and 0 < len(got) - 1 < 2000  # what came before the damage is kept
    assert errors.counts["unreadable_file"] == 1
    assert f"{path}: unreadable_file:" in caplog.text and "rest of the file skipped" in caplog.text


def test_corrupt_parquet_row_group_skips_only_that_row_group(tmp_path, caplog):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " + "x" * 50 for i in range(300)]}), path, row_group_size=100,
                   compression="snappy", use_dictionary=False)
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    raw = bytearray(path.read_bytes())
    start = col.data_page_offset
    raw[start : start + col.total_compressed_size] = b"\x07" * col.total_compressed_size
    path.write_bytes(bytes(raw))
    errors = DataErrors()
    with caplog.at_level(logging.WARNING):
        got = read_all([src(path, "parquet")], errors=errors)
    assert got[:100] == [f"row {i} " + "x" * 50 for i in range(100)]
    assert got[100:] == [f"row {i} " + "x" * 50 for i in range(200, 300)]  # row group 2 is still read
    assert errors.counts["unreadable_file"] == 1
    assert f"{path} [row group 1]" in caplog.text and "rest of this row group skipped" in caplog.text
    assert "rest of the file" not in caplog.text


@pytest.mark.parametrize("split", ["line", "paragraph"])
def test_invalid_utf8_names_file_and_line_in_any_block(tmp_path, caplog, split):
    path = tmp_path / "u.txt"
    path.write_bytes(b"ok line\n" * 50 + b"bad \xff\xfe here\n" + b"more\n" * 10)
    errors = DataErrors()
    with caplog.at_level(logging.WARNING):
        read_all([src(path, "txt", split=split)], ReadOptions(block_bytes=100), errors)
    assert errors.counts["invalid_utf8"] == 1
    assert f"{path}:51:" in caplog.text, caplog.text  # the line of the bad byte, though its block starts later


# ---- property-based: arbitrary bytes never crash a reader ----------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LINE = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.text(max_size=30).map(lambda t: json.dumps({"text": t}).encode()),
    st.sampled_from([b'{"text": 1}', b'{"text": null}', b"[1, 2]", b'{"text": "\xc3\x28"}', b'{"text": "  "}', b"{"]),
)
_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fuzz_read(tmp_path, name, data: bytes, fmt, **kw):
    path = tmp_path / name
    path.write_bytes(data)
    errors = DataErrors()
    opts = ReadOptions(block_bytes=37, max_doc_chars=25, max_record_bytes=64)
    got = read_all([src(path, fmt, **kw)], opts, errors)
    assert all(isinstance(t, str) and t and len(t) <= 25 for t in got)
    assert all(n > 0 for n in errors.counts.values())
    return got, errors


@_FUZZ
@given(lines=st.lists(_LINE, max_size=12))
def test_fuzz_jsonl_every_nonblank_line_is_a_document_or_counted(tmp_path, lines):
    got, errors = _fuzz_read(tmp_path, "f.jsonl", b"\n".join(lines) + b"\n", "jsonl")
    records = sum(bool(line.strip()) for line in lines)
    # every record gives one or more documents (split) or exactly one counted problem
    documents = records - sum(n for r, n in errors.counts.items() if r != "split_docs")
    assert documents <= len(got) and (documents == len(got) or errors.counts["split_docs"])


@_FUZZ
@given(data=st.binary(max_size=300), split=st.sampled_from(["line", "paragraph"]))
def test_fuzz_txt_arbitrary_bytes(tmp_path, data, split):
    _fuzz_read(tmp_path, "f.txt", data, "txt", split=split)


@_FUZZ
@given(lines=st.lists(_LINE, max_size=12), cut=st.floats(0, 1), flip=st.integers(0, 10_000))
def test_fuzz_gzip_truncated_or_damaged(tmp_path, lines, cut, flip):
    raw = bytearray(gzip.compress(b"\n".join(lines) + b"\n"))
    raw[flip % len(raw)] ^= 0x5A
    got, errors = _fuzz_read(tmp_path, "f.jsonl.gz", bytes(raw[: max(1, int(len(raw) * cut))]), "jsonl.gz")


@_FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_gzip_arbitrary_bytes(tmp_path, data):
    _fuzz_read(tmp_path, "g.jsonl.gz", data, "jsonl.gz")
