"""Multilingual MLM data: manifest -> lazy readers -> p ∝ n^τ language sampling -> packing -> masking.

API (what the trainer uses)::

    from mmbert.data import PhaseData, build_loader

    phase = PhaseData(languages="all" | ["eng_Latn", ...], tau=0.7, mask_ratio=0.3,
                      seq_len=1024, batch_rows=8, seed=0)
    loader = build_loader("corpus/manifest.yaml", tokenizer, phase,
                          rank=rank, world_size=world_size, num_workers=2,
                          state=saved_state_or_None)
    for batch in loader:           # infinite: languages start new epochs as they run out
        ...
        ckpt["data"] = loader.state_dict()    # JSON-serialisable; exact resume
    loader.stats()                  # {"batches", "skipped": {reason: n}, "split_docs", "probabilities",
                                    #  "languages": {lang: {"docs", "tokens", "epochs", "whole_language_workers"}}}
    loader.load_state_dict(state)   # same as passing state= to build_loader; the state must come from the
                                    # same phase, rank, world_size and num_workers (else ValueError)
    PhaseData.from_dict(yaml_phase, where="recipe.yaml phase 2")   # unknown keys are an error
    loader.close()                  # stop the workers

Batch (a dict, unpadded/varlen layout; B = batch_rows, N = B * seq_len)::

    input_ids     LongTensor (N,)        all rows concatenated, already masked
    labels        LongTensor (N,)        original id where predicted, -100 elsewhere
    cu_seqlens    IntTensor (D+1,) int32 document-piece boundaries over N (0 ... N); pieces never cross rows
    max_seqlen    int                    longest piece in the batch
    position_ids  LongTensor (N,)        position within its piece (restarts at 0 at each boundary)
    languages     list[str]              language of each **row** (B entries; a row is one language)
    num_tokens    int                    N

Rows are always full. Documents are tokenized ``<bos> ... <eos>``; one that does not fit in a row is
split and continues at the start of the next row of its language *without* a new ``<bos>``. A
document longer than ``ReadOptions.max_doc_chars`` characters is split into several documents.

Pre-tokenized input (mmBERT's published MDS shards, or ``token_field`` columns of JSONL/Parquet/Arrow)
skips the tokenizer: each record is cut at ``<bos>``/``<eos>`` into documents (packing.split_documents)
and packed like tokenized text; the run's tokenizer is checked against the data first (vocabulary size,
declared ``special_ids``).

Building blocks, usable on their own:
- ``load_manifest(path) -> Manifest`` (manifest.py), ``validate_language_code(code)``
- ``measure_sizes(manifest, tokenizer=None) -> {lang: {"bytes", "docs", "tokens"}}``, cached in
  ``<manifest stem>.sizes.json`` (sizes.py)
- ``plan_shards(files) -> [Shard]``, ``read_shard(shard, cursor) -> (text, cursor)...`` (sources.py)
- ``language_probabilities(sizes, tau) -> {lang: p}``, ``draw_languages``, ``assign_shards`` (sampling.py)
- ``assemble_batch(rows, languages)``, ``split_documents(ids, bos_id, eos_id)`` (packing.py)
- ``mds.read_index(folder)``, ``mds.iter_samples(shard)``, ``mds.write_mds(folder, columns, samples)`` (mds.py)
- ``mask_tokens(input_ids, mask_ratio, mask_id, vocab_size, special_ids, generator) -> (ids, labels)``
  (masking.py)

Tokenizer protocol (duck-typed): ``encode_batch(texts, add_special_tokens=True) -> list[list[int]]``,
``mask_id``, ``vocab_size``, ``special_ids`` (iterable of ints); it must be picklable if DataLoader
workers are spawned rather than forked.
"""

from mmbert.data.loader import DataPipeline, PhaseData, build_loader
from mmbert.data.manifest import Manifest, ManifestError, SourceFile, load_manifest, validate_language_code
from mmbert.data.masking import IGNORE_INDEX, mask_tokens
from mmbert.data.packing import assemble_batch
from mmbert.data.sampling import assign_shards, draw_languages, language_probabilities
from mmbert.data.sizes import measure_sizes
from mmbert.data.sources import DataErrors, ReadOptions, Shard, plan_shards, read_shard

__all__ = [
    "IGNORE_INDEX",
    "DataErrors",
    "DataPipeline",
    "Manifest",
    "ManifestError",
    "PhaseData",
    "ReadOptions",
    "Shard",
    "SourceFile",
    "assemble_batch",
    "assign_shards",
    "build_loader",
    "draw_languages",
    "language_probabilities",
    "load_manifest",
    "mask_tokens",
    "measure_sizes",
    "plan_shards",
    "read_shard",
    "validate_language_code",
]
