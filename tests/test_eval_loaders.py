"""Each loader on a fixture in the benchmark's own format, and on a malformed file."""

import pytest

from tests.eval_helpers import FIXTURES
from mmbert.eval.loaders import (
    DataFormatError, parse_file_spec, read_beir, read_bitext_tsv, read_conll, read_squad_json, read_tsv,
)


def test_glue_sst2_cola_mnli():
    sst = read_tsv(FIXTURES / "glue/SST-2/dev.tsv", "sst2")
    assert [e.label for e in sst] == ["1", "0", "1"] and sst[1].text.startswith("unflinchingly bleak")
    assert sst[0].text_pair is None
    cola = read_tsv(FIXTURES / "glue/CoLA/dev.tsv", "cola")  # no header: source, label, mark, sentence
    assert [e.label for e in cola] == ["1", "1", "0"] and cola[2].text == "They drank the pub."
    mnli = read_tsv(FIXTURES / "glue/MNLI/dev_matched.tsv", "mnli")  # the "-" (no gold label) row is dropped
    assert [e.label for e in mnli] == ["neutral", "contradiction"]
    assert mnli[1].text_pair.startswith("The Government Executive articles")


def test_xnli_languages():
    xnli = read_tsv(FIXTURES / "XNLI/xnli.test.tsv", "xnli")
    assert [(e.lang, e.label) for e in xnli] == [("en", "contradiction"), ("fr", "entailment"), ("sw", "neutral")]
    assert xnli[1].text == "Et il a dit, maman, je suis à la maison."


def test_squad_and_tydiqa():
    qa = read_squad_json(FIXTURES / "squad.json")
    assert [q.id for q in qa] == ["q1", "q2", "q3"]
    assert qa[0].answers == ("France", "France", "a region in France") and qa[0].answer_starts == (104, 104, 92)
    assert qa[2].answer_starts == (0,)  # the fixture's off-by-one start is moved onto the text
    tydi = read_squad_json(FIXTURES / "tydiqa.json")
    assert [q.lang for q in tydi] == ["swahili", "finnish"]
    assert read_squad_json(FIXTURES / "tydiqa.json", lang="xx")[0].lang == "xx"


def test_conll():
    sents = read_conll(FIXTURES / "conll2003.txt", "eng")
    assert len(sents) == 3  # -DOCSTART- skipped
    assert sents[0].tokens[:3] == ("EU", "rejects", "German") and sents[0].tags[:3] == ("B-ORG", "O", "B-MISC")
    assert sents[1].tags == ("B-PER", "I-PER") and sents[2].lang == "eng"


def test_beir_and_bitext():
    data = read_beir(FIXTURES / "beir")
    assert data.corpus["d1"] == "Faroe Tórshavn is the capital of the Faroe Islands."
    assert data.corpus["d3"] == "Eritrea lies on the Red Sea."
    assert sorted(data.queries) == ["q1", "q2"]  # q9 has no judgements
    assert data.qrels == {"q1": {"d1": 1.0}, "q2": {"d2": 1.0, "d1": 0.0}}
    pairs = read_bitext_tsv(FIXTURES / "bitext.fao.tsv")
    assert len(pairs) == 2 and pairs[1][1] == "Hvør maður hevur rætt til arbeiði."


def test_file_spec_language():
    assert parse_file_spec("de=/x/y.json") == ("de", parse_file_spec("/x/y.json")[1])
    assert parse_file_spec("data/xquad.de.json")[0] == "de"
    assert parse_file_spec("panx/fo/test")[0] == "fo"
    assert parse_file_spec(FIXTURES / "bitext.fao.tsv")[0] == "fao"
    assert parse_file_spec("xnli.test.tsv")[0] is None


@pytest.mark.parametrize("reader, name, where", [
    (lambda p: read_tsv(p, "cola"), "cola.tsv", ":2: 2 tab-separated field(s), expected 4"),
    (lambda p: read_tsv(p, "xnli"), "xnli.test.tsv", ":1: header lacks column(s) ['gold_label']"),
    (read_squad_json, "squad_syntax.json", ":2: not valid JSON"),
    (read_squad_json, "squad_answer.json", "qas[0].answers[0] (id x1): answer 'Sweden' does not occur"),
    (read_conll, "conll_columns.txt", ":4: expected 'token ... tag', got 'Peter'"),
    (read_conll, "conll_tag.txt", ":3: tag 'B_MISC' is not O or B-/I-/E-/S-TYPE"),
])
def test_malformed_files_name_file_and_line(reader, name, where):
    path = FIXTURES / "malformed" / name
    with pytest.raises(DataFormatError) as e:
        reader(path)
    assert str(e.value).startswith(str(path)) and where in str(e.value), str(e.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_tsv(FIXTURES / "nope.tsv", "sst2")
