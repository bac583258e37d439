"""Per-language corpus sizes (bytes of text, documents, and tokens for a given tokenizer), measured
once by a full read and cached beside the manifest in ``<manifest stem>.sizes.json``.

Choices:
- "Bytes" are UTF-8 bytes of the documents as the readers yield them (after skipping bad records),
  not file sizes: JSON syntax, Parquet compression and markup would otherwise skew p ∝ n^τ.
- Pre-tokenized sources have no text: their "bytes" are 4 per token (uint32 ids) and their tokens are
  counted whatever the tokenizer; an MDS token source is sized from its ``index.json`` alone (sample
  counts and shard bytes, see ``mds.MDSShard.estimated_tokens``), so a terabyte corpus starts at once.
  Use ``size_unit: tokens`` to mix text and pre-tokenized languages on one scale.
- Each language's entry carries the (path, size, mtime_ns, format, field, split) of every file behind
  it; an entry whose files changed is re-measured, the others are reused. Token counts are stored per
  tokenizer fingerprint (a hash of its serialized JSON) so switching tokenizers re-counts tokens only.
- The cache is written atomically (temporary file + rename), so ranks measuring concurrently never
  read half a file; a read-only corpus folder only costs a warning (sizes are then re-measured).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from mmbert.data.manifest import Manifest
from mmbert.data.sources import DataErrors, ReadOptions, file_fingerprint, plan_shards, read_shard

log = logging.getLogger(__name__)

CACHE_VERSION = 1
TOKEN_BYTES = 4  # "bytes" of a pre-tokenized source: its ids as uint32, as mmBERT's MDS shards store them
_ENCODE_CHUNK = 256  # documents per encode_batch call while counting tokens


def cache_path(manifest: Manifest) -> str:
    return os.path.splitext(manifest.path)[0] + ".sizes.json"


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash identifying a tokenizer's vocabulary and rules."""
    backend = getattr(tokenizer, "backend", None)
    blob = backend.to_str() if hasattr(backend, "to_str") else f"{type(tokenizer).__name__}:{tokenizer.vocab_size}"
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def _measure_language(files, tokenizer, opts: ReadOptions, errors: DataErrors) -> dict:
    n_bytes = n_docs = n_tokens = 0
    chunk: list[str] = []

    def count_tokens():
        nonlocal n_tokens, chunk
        if tokenizer is not None and chunk:
            n_tokens += sum(len(ids) for ids in tokenizer.encode_batch(chunk, add_special_tokens=True))
        chunk = []

    for shard in plan_shards(files, opts, errors):
        if shard.mds is not None and shard.mds.kind == "tokens":
            # from the index alone: pre-tokenized MDS data is never scanned to be sized
            share = (shard.end - shard.start) / shard.mds.samples
            tokens = round(shard.mds.estimated_tokens() * share)
            n_tokens += tokens
            n_bytes += TOKEN_BYTES * tokens
            n_docs += shard.end - shard.start
            continue
        for text, _ in read_shard(shard, None, errors, opts):
            if not isinstance(text, str):  # a pre-tokenized record: its ids are its size
                n_tokens += len(text)
                n_bytes += TOKEN_BYTES * len(text)
                n_docs += 1
                continue
            n_bytes += len(text.encode("utf-8"))
            n_docs += 1
            chunk.append(text)
            if len(chunk) >= _ENCODE_CHUNK:
                count_tokens()
    count_tokens()
    pretokenized_only = all(f.token_field or f.format == "mds" for f in files) and n_tokens > 0
    return {"bytes": n_bytes, "docs": n_docs, "tokens": n_tokens if (tokenizer is not None or pretokenized_only) else None}


def measure_sizes(manifest: Manifest, tokenizer=None, opts: ReadOptions = ReadOptions(),
                  languages: list[str] | None = None, use_cache: bool = True) -> dict[str, dict]:
    """``{lang: {"bytes", "docs", "tokens"}}`` for ``languages`` (default: all in the manifest);
    ``tokens`` is None unless a tokenizer is given. Reads the cache, measures what is missing or stale,
    writes the cache back."""
    languages = list(manifest.languages) if languages is None else languages
    path = cache_path(manifest)
    cache = {"version": CACHE_VERSION, "languages": {}}
    if use_cache and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
            if loaded.get("version") == CACHE_VERSION:
                cache = loaded
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable size cache %s: %s", path, e)
    tok_fp = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
    out: dict[str, dict] = {}
    changed = False
    for lang in languages:
        files = manifest.languages[lang]
        fp = [file_fingerprint(files), opts.max_doc_chars, opts.max_record_bytes]
        entry = cache["languages"].get(lang)
        if entry is None or entry.get("fingerprint") != fp:
            errors = DataErrors(opts.max_logged_per_file)
            m = _measure_language(files, tokenizer, opts, errors)
            entry = {"fingerprint": fp, "bytes": m["bytes"], "docs": m["docs"], "tokens": {}, "skipped": dict(errors.counts)}
            if tok_fp is not None:
                entry["tokens"][tok_fp] = m["tokens"]
            log.info("measured %s: %d bytes, %d documents", lang, m["bytes"], m["docs"])
            if m["docs"] == 0:  # once, when measured: the cached entry is reused silently afterwards
                skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(errors.counts.items())) or "no records"
                log.warning("%s: no readable document in its %d file(s) (%s); the language is left out of "
                            "training", lang, len(files), skipped)
            cache["languages"][lang] = entry
            changed = True
        elif tok_fp is not None and tok_fp not in entry["tokens"]:
            entry["tokens"][tok_fp] = _measure_language(files, tokenizer, opts, DataErrors(enabled=False))["tokens"]
            changed = True
        out[lang] = {"bytes": entry["bytes"], "docs": entry["docs"], "tokens": entry["tokens"].get(tok_fp) if tok_fp else None}
    if changed and use_cache:
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(cache, f, indent=1)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write size cache %s: %s", path, e)
    return out
