"""Manifest parsing and validation, and the per-language size cache."""

from __future__ import annotations

import json
import logging
import os

import pytest

from mmbert.data import ManifestError, load_manifest, measure_sizes, validate_language_code
from mmbert.data.sizes import cache_path
from tests.test_data_helpers import corpus_tokenizer, write_corpus


def test_manifest_formats_and_paths(tmp_path):
    manifest, texts = write_corpus(tmp_path)
    m = load_manifest(manifest)
    assert list(m.languages) == ["eng_Latn", "fao_Latn", "tir_Ethi"]
    assert [(os.path.basename(f.path), f.format) for f in m.languages["fao_Latn"]] == [("a.txt", "txt"), ("b.txt", "txt")]
    assert m.languages["eng_Latn"][0].format == "jsonl" and m.languages["eng_Latn"][0].text_field == "text"
    assert m.languages["tir_Ethi"][0].format == "parquet"
    assert m.problems == []


@pytest.mark.parametrize("code", ["eng_Latn", "fao_Latn", "tir_Ethi", "eng_Latn_2", "cmn_Hani", "zho_Hans"])
def test_valid_codes(code):
    assert validate_language_code(code) == code


@pytest.mark.parametrize(
    "code, message",
    [("english", "malformed"), ("en_Latn", "malformed"), ("eng_latn", "malformed"), ("eng_Latn_", "malformed"),
     ("zzz_Latn", "unknown ISO 639-3 language 'zzz'"), ("eng_Xxxx", "unknown ISO 15924 script 'Xxxx'")],
)
def test_bad_code_names_code_and_file(tmp_path, code, message):
    (tmp_path / "a.txt").write_text("hello\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"languages:\n  {code}:\n    - a.txt\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(manifest)
    assert message in str(e.value) and code in str(e.value) and str(manifest) in str(e.value)


def test_unknown_source_key_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("languages:\n  eng_Latn:\n    - {path: a.txt, txt_field: body}\n")
    with pytest.raises(ManifestError, match="txt_field"):
        load_manifest(manifest)


def test_missing_path_is_reported_and_the_rest_used(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("hello\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("languages:\n  eng_Latn:\n    - a.txt\n    - nowhere/*.jsonl\n  fao_Latn:\n    - gone.txt\n")
    with caplog.at_level(logging.WARNING):
        m = load_manifest(manifest)
    assert [os.path.basename(f.path) for f in m.languages["eng_Latn"]] == ["a.txt"]
    assert "fao_Latn" not in m.languages  # nothing left of it
    assert [p[0] for p in m.problems] == ["missing_path", "missing_path"]
    assert "gone.txt" in caplog.text and str(manifest) in caplog.text


def test_folder_source_expands_and_keeps_save_to_disk_dirs_whole(tmp_path):
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / "x.txt").write_text("a\n")
    (tmp_path / "c" / "sub" / "y.jsonl").write_text('{"text": "b"}\n')
    (tmp_path / "c" / "notes.md").write_text("ignored\n")
    ds = tmp_path / "c" / "ds"
    ds.mkdir()
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (ds / "dataset_info.json").write_text("{}")
    (ds / "data-00000-of-00001.arrow").write_bytes(b"")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("languages:\n  eng_Latn: c\n")
    files = load_manifest(manifest).languages["eng_Latn"]
    assert [(os.path.relpath(f.path, tmp_path), f.format) for f in files] == [
        ("c/ds", "arrow"), ("c/sub/y.jsonl", "jsonl"), ("c/x.txt", "txt")]


def test_sizes_are_measured_cached_and_invalidated(tmp_path):
    manifest, texts = write_corpus(tmp_path)
    m = load_manifest(manifest)
    tok = corpus_tokenizer(texts)
    sizes = measure_sizes(m, tok)
    for lang, ts in texts.items():
        assert sizes[lang]["bytes"] == sum(len(t.encode()) for t in ts)
        assert sizes[lang]["docs"] == len(ts)
        assert sizes[lang]["tokens"] == sum(len(t.split()) + 2 for t in ts)  # word-level + <bos>/<eos>
    cache = json.loads(open(cache_path(m)).read())
    assert set(cache["languages"]) == set(texts)
    # A cached entry is reused as is: poison it and check it comes back.
    cache["languages"]["eng_Latn"]["bytes"] = 123
    open(cache_path(m), "w").write(json.dumps(cache))
    assert measure_sizes(m)["eng_Latn"]["bytes"] == 123
    # Touching a source file invalidates its language only.
    cache["languages"]["fao_Latn"]["bytes"] = 456
    open(cache_path(m), "w").write(json.dumps(cache))
    eng = tmp_path / "train" / "eng.jsonl"
    eng.write_text(eng.read_text() + json.dumps({"text": "one more"}) + "\n")
    again = measure_sizes(m)
    assert again["eng_Latn"]["bytes"] == sizes["eng_Latn"]["bytes"] + len("one more")
    assert again["fao_Latn"]["bytes"] == 456
