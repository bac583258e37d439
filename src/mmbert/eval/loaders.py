"""Readers for the benchmarks' own file formats, from local paths; a malformed file raises
``DataFormatError`` naming the file and the line (or, for JSON, the line of a syntax error and the path
inside the document of a structural one).

- GLUE TSV (``sentence\\tlabel`` for SST-2; CoLA without a header; MNLI/QNLI/RTE/... with headers) and the
  XNLI TSV (``language gold_label sentence1_binary_parse ... sentence1 sentence2 ...``): fields split on tabs
  with no quoting, as GLUE's own readers (``csv.QUOTE_NONE``).
- SQuAD v1.1 JSON, which TyDiQA-GoldP, XQuAD and MLQA also use: ``data[].paragraphs[].{context, qas[]}``.
- CoNLL: ``token ... tag`` per line (tag last, whitespace separated, the same number of columns on every
  line), a blank line between sentences, ``-DOCSTART-`` lines skipped (CoNLL-2002/2003, WikiANN as XTREME
  ships it).
- Tables with named columns (what users of ``run_glue.py`` bring): CSV, TSV, JSONL, parquet; a ``.txt`` file
  is one text per line (prediction input).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


class DataFormatError(ValueError):
    """A benchmark file that does not have the expected format."""

    def __init__(self, path, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


@dataclass(frozen=True)
class TextExample:
    text: str
    text_pair: str | None
    label: str
    lang: str = "und"


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold texts (several in dev sets)
    answer_starts: tuple[int, ...]  # character offsets into context, one per answer
    lang: str = "und"


@dataclass(frozen=True)
class TokenExample:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    lang: str = "und"


# ---- TSV classification (GLUE, XNLI) ---------------------------------------------------------------


@dataclass(frozen=True)
class TsvFormat:
    """Where a TSV keeps its fields: header names, or column indices for header-less files."""

    text: str | int
    label: str | int
    pair: str | int | None = None
    lang: str | None = None  # a language column (XNLI)
    header: bool = True
    positive: str | None = None  # the class whose F1 the benchmark reports (MRPC, QQP)
    primary: str = "accuracy"  # the metric the benchmark ranks by
    skip_labels: frozenset[str] = field(default_factory=frozenset)  # e.g. MNLI's "-" (no gold label)


TSV_FORMATS: dict[str, TsvFormat] = {
    "sst2": TsvFormat(text="sentence", label="label"),
    "cola": TsvFormat(text=3, label=1, header=False, primary="mcc"),
    "mrpc": TsvFormat(text="#1 String", pair="#2 String", label="Quality", positive="1", primary="f1"),
    "qqp": TsvFormat(text="question1", pair="question2", label="is_duplicate", positive="1", primary="f1"),
    "mnli": TsvFormat(text="sentence1", pair="sentence2", label="gold_label", skip_labels=frozenset({"-"})),
    "qnli": TsvFormat(text="question", pair="sentence", label="label"),
    "rte": TsvFormat(text="sentence1", pair="sentence2", label="label"),
    "wnli": TsvFormat(text="sentence1", pair="sentence2", label="label"),
    "xnli": TsvFormat(text="sentence1", pair="sentence2", label="gold_label", lang="language",
                      skip_labels=frozenset({"-"})),
}


def read_tsv(path: str | Path, fmt: TsvFormat | str, lang: str = "und") -> list[TextExample]:
    """Labelled examples of a GLUE / XNLI TSV file (``fmt`` a ``TsvFormat`` or a name in ``TSV_FORMATS``)."""
    if isinstance(fmt, str):
        if fmt not in TSV_FORMATS:
            raise ValueError(f"unknown TSV format {fmt!r}; known: {sorted(TSV_FORMATS)}")
        fmt = TSV_FORMATS[fmt]
    path = Path(path)
    lines = _read_lines(path)
    if fmt.header:
        if not lines:
            raise DataFormatError(path, 1, "empty file: expected a header line")
        names = lines[0].split("\t")
        wanted = [c for c in (fmt.text, fmt.pair, fmt.label, fmt.lang) if c is not None]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataFormatError(path, 1, f"header lacks column(s) {missing}; it has {names}")
        col = {c: names.index(c) for c in wanted}
        width, body, first = len(names), lines[1:], 2
    else:
        col = {c: c for c in (fmt.text, fmt.pair, fmt.label) if c is not None}
        width, body, first = max(col.values()) + 1, lines, 1
    out = []
    for n, line in enumerate(body, start=first):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < width:
            raise DataFormatError(path, n, f"{len(cells)} tab-separated field(s), expected {width}")
        label = cells[col[fmt.label]].strip()
        if not label:
            raise DataFormatError(path, n, "empty label")
        if label in fmt.skip_labels:
            continue
        text = cells[col[fmt.text]]
        pair = cells[col[fmt.pair]] if fmt.pair is not None else None
        out.append(TextExample(text, pair, label, cells[col[fmt.lang]].strip() if fmt.lang else lang))
    if not out:
        raise DataFormatError(path, None, "no labelled examples")
    return out


# ---- SQuAD JSON (SQuAD, TyDiQA-GoldP, XQuAD, MLQA) -------------------------------------------------

_TYDI_ID = re.compile(r"^([a-z]+)-")  # TyDiQA-GoldP ids start with the language name: "swahili-123..."


def read_squad_json(path: str | Path, lang: str | None = None) -> list[QAExample]:
    """Questions of a SQuAD-v1.1-format file. Language: ``lang`` if given, else the TyDiQA id prefix,
    else ``und``. An answer whose ``answer_start`` does not point at its text is moved to the nearest
    occurrence of the text (SQuAD has a few off-by-one starts); one absent from the context is an error."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"not valid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataFormatError(path, None, "expected a SQuAD document {\"data\": [...]} at the top level")
    out = []
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(_get(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(para, "context", str, path, where)
            for q, qa in enumerate(_get(para, "qas", list, path, where)):
                w = f"{where}.qas[{q}]"
                qid = str(_get(qa, "id", (str, int), path, w))
                question = _get(qa, "question", str, path, w)
                texts, starts = [], []
                for i, ans in enumerate(_get(qa, "answers", list, path, w)):
                    text = _get(ans, "text", str, path, f"{w}.answers[{i}]")
                    start = _get(ans, "answer_start", int, path, f"{w}.answers[{i}]")
                    starts.append(_locate(context, text, start, path, f"{w}.answers[{i}] (id {qid})"))
                    texts.append(text)
                if not texts:
                    raise DataFormatError(path, None, f"{w} (id {qid}): no answers (SQuAD v2 unanswerable "
                                                      "questions are not supported)")
                m = _TYDI_ID.match(qid)
                out.append(QAExample(qid, question, context, tuple(texts), tuple(starts),
                                     lang or (m.group(1) if m else "und")))
    if not out:
        raise DataFormatError(path, None, "no questions")
    return out


def _get(obj, key: str, kind, path: Path, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(path, None, f"{where}: missing {key!r}")
    if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        raise DataFormatError(path, None, f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, "
                                          f"got {type(obj[key]).__name__}")
    return obj[key]


def _locate(context: str, text: str, start: int, path: Path, where: str) -> int:
    if context[start:start + len(text)] == text:
        return start
    found = [m.start() for m in re.finditer(re.escape(text), context)]
    if not found:
        raise DataFormatError(path, None, f"{where}: answer {text!r} does not occur in the context")
    return min(found, key=lambda s: abs(s - start))


# ---- CoNLL -----------------------------------------------------------------------------------------

_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def read_conll(path: str | Path, lang: str = "und") -> list[TokenExample]:
    """Sentences of a CoNLL file: the first column is the token, the last the IOB/IOBES tag."""
    path = Path(path)
    out, tokens, tags = [], [], []
    width = None  # columns per token line: the file's first one sets it

    def flush():
        if tokens:
            out.append(TokenExample(tuple(tokens), tuple(tags), lang))
            tokens.clear()
            tags.clear()

    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            flush()
            continue
        cols = line.split()
        if cols[0] == "-DOCSTART-":
            flush()
            continue
        if len(cols) < 2:
            raise DataFormatError(path, n, f"expected 'token ... tag', got {line.strip()!r}")
        width = width or len(cols)
        if len(cols) != width:
            raise DataFormatError(path, n, f"{len(cols)} columns, earlier lines have {width}")
        if not _TAG.match(cols[-1]):
            raise DataFormatError(path, n, f"tag {cols[-1]!r} is not O or B-/I-/E-/S-TYPE")
        tokens.append(cols[0])
        tags.append(cols[-1])
    flush()
    if not out:
        raise DataFormatError(path, None, "no sentences")
    return out


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataFormatError(path, line, "not UTF-8 text") from None


# ---- which language a test file holds --------------------------------------------------------------

_LANG_PART = re.compile(r"^[a-z]{2,3}(_[A-Z][a-z]{3})?$")


def parse_file_spec(spec: str | Path) -> tuple[str | None, Path]:
    """``LANG=PATH`` -> (LANG, PATH); a bare path -> (its language if the name shows one, PATH): the last
    dotted part of the stem (``xquad.de.json``, ``test.fao_Latn.tsv``) or the folder (``panx/de/test``)."""
    text = str(spec)
    if "=" in text and not Path(text).exists():
        lang, _, path = text.partition("=")
        return lang, Path(path)
    path = Path(text)
    last = path.name.split(".")[1:-1] or path.name.split(".")[:1]
    for candidate in (last[-1] if last else "", path.parent.name):
        if _LANG_PART.match(candidate) and candidate not in ("dev", "test", "train"):
            return candidate, path
    return None, path


# ---- retrieval (BEIR / MTEB layout) and bitext pairs -----------------------------------------------


@dataclass(frozen=True)
class RetrievalData:
    corpus: dict[str, str]  # doc id -> "title text"
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, float]]  # query id -> {doc id: relevance}


def read_beir(directory: str | Path, split: str = "test") -> RetrievalData:
    """``corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id", "text"}) and
    ``qrels/<split>.tsv`` (``query-id corpus-id score`` with a header): the layout BEIR and MTEB use."""
    directory = Path(directory)
    corpus = {d["_id"]: (d.get("title", "") + " " + d["text"]).strip()
              for d in _read_jsonl(directory / "corpus.jsonl", ("_id", "text"))}
    queries = {d["_id"]: d["text"] for d in _read_jsonl(directory / "queries.jsonl", ("_id", "text"))}
    qrels: dict[str, dict[str, float]] = {}
    path = directory / "qrels" / f"{split}.tsv"
    for n, line in enumerate(_read_lines(path), start=1):
        cells = line.split("\t")
        if n == 1 and not _is_number(cells[-1]):
            continue  # header
        if not line.strip():
            continue
        if len(cells) != 3 or not _is_number(cells[2]):
            raise DataFormatError(path, n, f"expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}")
        if cells[0] not in queries or cells[1] not in corpus:
            raise DataFormatError(path, n, f"unknown query {cells[0]!r} or document {cells[1]!r}")
        qrels.setdefault(cells[0], {})[cells[1]] = float(cells[2])
    return RetrievalData(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels)


def read_bitext_tsv(path: str | Path) -> list[tuple[str, str]]:
    """Translation pairs from a TSV with a ``sentence1<TAB>sentence2`` header (MTEB's bitext columns)."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines or lines[0].split("\t")[:2] != ["sentence1", "sentence2"]:
        raise DataFormatError(path, 1, "expected the header 'sentence1<TAB>sentence2'")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 2:
            raise DataFormatError(path, n, "expected two tab-separated sentences")
        out.append((cells[0], cells[1]))
    return out


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    return [{k: str(v) if k == "_id" else v for k, v in d.items()} for _, d in _jsonl_rows(path, required)]


def _jsonl_rows(path: Path, required: tuple[str, ...], lines: list[str] | None = None) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line; each must be a JSON object holding ``required``."""
    out = []
    for n, line in enumerate(_read_lines(path) if lines is None else lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, n, f"not valid JSON: {e.msg}") from None
        if not isinstance(d, dict):
            raise DataFormatError(path, n, f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in required if k not in d]
        if missing:
            raise DataFormatError(path, n, f"missing field(s) {missing}; the line has {sorted(d)}")
        out.append((n, d))
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ---- tables with named columns: CSV, TSV, JSONL, parquet (what `mmbert finetune` / `predict` read) -------

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                 ".txt": "txt"}


def table_format(path: str | Path) -> str:
    """The format of a table file from its suffix (``.gz`` is not read: decompress first)."""
    path = Path(path)
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataFormatError(path, None, f"unknown file format {path.suffix or '(no suffix)'!r}; expected one of "
                                          f"{sorted(TABLE_FORMATS)} (CoNLL and SQuAD JSON: --task "
                                          "token-classification / qa)")
    return fmt


def read_rows(path: str | Path, columns: list[str]) -> list[tuple[int, dict]]:
    """(line number, {column: value}) per row of a CSV / TSV / JSONL / parquet file (parquet: the row's
    index + 1); ``columns`` must all exist (an error names the file and the first row without one). A
    ``.txt`` file is one text per line under the column ``text``."""
    path = Path(path)
    fmt = table_format(path)
    if fmt == "parquet":
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow's errors do not name the file
            raise DataFormatError(path, None, f"unreadable parquet ({e})") from None
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataFormatError(path, None, f"no column(s) {missing}; it has {table.column_names}")
        return [(i + 1, row) for i, row in enumerate(table.select(columns).to_pylist())]
    lines = _read_lines(path)
    if fmt == "txt":
        return [(n, {"text": line}) for n, line in enumerate(lines, start=1) if line.strip()]
    if fmt == "jsonl":
        return _jsonl_rows(path, tuple(columns), lines)
    import csv

    if fmt == "tsv":  # no quoting, as GLUE's own TSV readers
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFormatError(path, 1, "empty file: expected a header line") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataFormatError(path, 1, f"header lacks column(s) {missing}; it has {header}")
    out = []
    try:
        for cells in reader:
            n = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataFormatError(path, n, f"{len(cells)} field(s), the header has {len(header)}")
            out.append((n, dict(zip(header, cells))))
    except csv.Error as e:
        raise DataFormatError(path, reader.line_num, f"malformed CSV ({e})") from None
    return out


def read_text_examples(path: str | Path, text_column: str = "text", pair_column: str | None = None,
                       label_column: str | None = "label", lang: str = "und",
                       lang_column: str | None = None) -> list[TextExample]:
    """Classification / regression examples of a table; ``label_column=None`` reads unlabelled texts
    (label ""). An empty text or label is an error naming the file and line: nothing is skipped silently."""
    path = Path(path)
    columns = [c for c in (text_column, pair_column, label_column, lang_column) if c is not None]
    out = []
    for n, row in read_rows(path, columns):
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(path, n, f"empty or non-text {text_column!r}")
        pair = row[pair_column] if pair_column else None
        if pair_column and (not isinstance(pair, str) or not pair.strip()):
            raise DataFormatError(path, n, f"empty or non-text {pair_column!r}")
        label = "" if label_column is None else row[label_column]
        label = "" if label is None else str(label).strip()
        if label_column is not None and not label:
            raise DataFormatError(path, n, f"empty {label_column!r}")
        out.append(TextExample(text, pair, label, str(row[lang_column]) if lang_column else lang))
    if not out:
        raise DataFormatError(path, None, "no examples")
    return out


# ---- pairs for embedding training: (anchor, positive[, negatives...]) tables ----------------------------


@dataclass(frozen=True)
class PairExample:
    texts: tuple[str, ...]  # anchor, positive, then any hard negatives
    lang: str = "und"


def table_columns(path: str | Path) -> list[str]:
    """The column names of a table file (CSV/TSV header, parquet schema, the first JSONL object's keys)."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as e:  # pyarrow's errors do not name the file
            raise DataFormatError(path, None, f"unreadable parquet ({e})") from None
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        if fmt == "jsonl":
            try:
                first = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, n, f"not valid JSON: {e.msg}") from None
            return list(first) if isinstance(first, dict) else []
        import csv

        return next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ",",
                               quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL))
    return []


def default_negative_columns(columns: list[str]) -> list[str]:
    """sentence-transformers' hard-negative column names present in a table: ``negative``, ``negative_1``, ..."""
    numbered = sorted((int(c.rsplit("_", 1)[1]), c) for c in columns if re.fullmatch(r"negative_\d+", c))
    return (["negative"] if "negative" in columns else []) + [c for _, c in numbered]


def read_pairs(path: str | Path, anchor_column: str = "anchor", positive_column: str = "positive",
               negative_columns: list[str] | None = None, lang_column: str | None = None,
               lang: str = "und") -> list[PairExample]:
    """(anchor, positive[, negatives...]) examples of a CSV / TSV / JSONL / parquet table, with
    sentence-transformers' column names by default; ``negative_columns=None`` takes those of
    ``default_negative_columns``. An empty or non-text cell is an error naming the file and line."""
    path = Path(path)
    if negative_columns is None:
        negative_columns = default_negative_columns(table_columns(path))
    columns = [anchor_column, positive_column, *negative_columns]
    out = []
    for n, row in read_rows(path, columns + ([lang_column] if lang_column else [])):
        texts = tuple(row[c] for c in columns)
        bad = next((c for c, t in zip(columns, texts) if not isinstance(t, str) or not t.strip()), None)
        if bad is not None:
            raise DataFormatError(path, n, f"empty or non-text {bad!r}")
        out.append(PairExample(texts, str(row[lang_column]) if lang_column else lang))
    if not out:
        raise DataFormatError(path, None, "no examples")
    return out
