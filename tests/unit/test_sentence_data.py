"""Sentence data: the JGLUE-format loaders on fixture files (and their errors, by file and line),
the shipped Tatoeba sets, and the builder on a small SENTENCES-format fixture."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import causal_nb as cnb
from causal_nb.data.sentences import SENTENCE_DIR
from causal_nb.zoo import build_pairs


def write_jsonl(path, recs):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in recs),
                    encoding="utf-8")
    return path


JSTS = [{"sentence_pair_id": "0", "yjcaptions_id": "1-2", "sentence1": "川べりでサーフボードを持った人たちがいます。",
         "sentence2": "トイレの壁に黒いタオルがかけられています。", "label": 0.0},
        {"sentence_pair_id": "1", "yjcaptions_id": "3-4", "sentence1": "二人の男性がジャンボジェット機を見ています。",
         "sentence2": "2人の男性が、白い飛行機を眺めています。", "label": 3.8}]
JCOLA = [{"uid": 1, "source": "Asano_and_Ura_2010", "label": 1, "diacritic": "g", "sentence": "太郎が本を読んだ。"},
         {"uid": 2, "source": "Asano_and_Ura_2010", "label": 0, "diacritic": "*", "sentence": "太郎が本が読んだ。"}]
MARC = [{"sentence": "とても良い商品でした。", "label": "positive", "review_id": "R1"},
        {"sentence": "すぐに壊れました。", "label": "negative", "review_id": "R2"}]


def test_jglue_formats_load(tmp_path):
    jsts = cnb.load_jsts(write_jsonl(tmp_path / "jsts.jsonl", JSTS))
    assert list(jsts.score) == [0.0, 3.8] and jsts.sentence1[1] == JSTS[1]["sentence1"]
    assert jsts.attrs["score_range"] == (0.0, 5.0) and jsts.sentence_pair_id[1] == "1"
    jcola = cnb.load_jcola(write_jsonl(tmp_path / "jcola.jsonl", JCOLA))
    assert list(jcola.label) == [1, 0] and jcola.attrs["labels"] == ["unacceptable", "acceptable"]
    marc = cnb.load_marc_ja(write_jsonl(tmp_path / "marc.jsonl", MARC + [{"sentence": "普通", "label": 1}]))
    assert list(marc.label) == [0, 1, 1] and marc.attrs["labels"] == ["positive", "negative"]


@pytest.mark.parametrize("loader, recs, line, message", [
    ("load_jsts", [JSTS[0], {k: v for k, v in JSTS[1].items() if k != "label"}], 2, "the pair has no numeric 'label'"),
    ("load_jsts", [JSTS[0], {**JSTS[1], "label": 5.5}], 2, r"'label' 5.5 is outside \[0, 5\]"),
    ("load_jsts", [JSTS[0], {**JSTS[1], "sentence2": ""}], 2, "'sentence2' is missing"),
    ("load_jcola", [JCOLA[0], JCOLA[1], {**JCOLA[0], "label": 2}], 3, r"label 2 is not one of \['unacceptable'"),
    ("load_marc_ja", [MARC[0], {**MARC[1], "label": "neutral"}], 2, "label 'neutral' is not one of"),
    ("load_marc_ja", [MARC[0], "{not json"], 2, "not valid JSON"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, loader, recs, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", recs)
    with pytest.raises(cnb.SentenceDataError, match=f"{path}:{line}: .*{message}"):
        getattr(cnb, loader)(path)


def test_missing_file_and_unknown_set_are_named(tmp_path):
    with pytest.raises(cnb.SentenceDataError, match="does not exist"):
        cnb.load_jsts(tmp_path / "nope.jsonl")
    with pytest.raises(cnb.SentenceDataError, match=r"no shipped pairs set named 'tatoeba'; shipped: \['tatoeba-paraphrase'"):
        cnb.load_sentence_pairs("tatoeba")
    with pytest.raises(cnb.SentenceDataError, match="split must be 'train' or 'test'"):
        cnb.load_sentence_labels("tatoeba-questions", split="validation")


def test_shipped_sets_are_whole_balanced_and_split_cleanly():
    pairs = {s: cnb.load_sentence_pairs("tatoeba-paraphrase", s) for s in ("train", "test")}
    for df in pairs.values():
        assert len(df) == 1000 and df.score.isin([0.0, 1.0]).all()
        assert df.kind.value_counts().to_dict() == {"paraphrase": 500, "same_opening": 250, "random": 250}
        assert (df.loc[df.kind == "paraphrase", "pivots"] != "").all()
        same = df[df.kind == "same_opening"]
        assert all(build_pairs.opening(a) == build_pairs.opening(b) for a, b in zip(same.sentence1, same.sentence2))
        assert all(len(a.split()) >= 2 for a in same.sentence1)
    sents = {s: set(df.sentence1) | set(df.sentence2) for s, df in pairs.items()}
    assert not sents["train"] & sents["test"], "a sentence in both splits"
    qs = {s: cnb.load_sentence_labels("tatoeba-questions", s) for s in ("train", "test")}
    for df in qs.values():
        assert len(df) == 1000 and df.label.value_counts().to_dict() == {0: 500, 1: 500}
        assert not df.sentence.str.contains(r"[?.!]").any()
    assert not set(qs["train"].sentence) & set(qs["test"].sentence)
    info = json.loads((SENTENCE_DIR / "build_info.json").read_text())
    assert info["source_rows"] == 207995 and (SENTENCE_DIR / "PROVENANCE.md").read_text().count("CC-BY 2.0 FR") >= 2


def fixture_sentences(path, n=40):
    """A SENTENCES-format TSV: n German pivots with two English translations each (two rows of
    different Japanese sentences), plus questions, and rows with missing translations."""
    rows, i = [], 1
    for k in range(n):
        for en in (f"I like thing {k}.", f"I really like thing {k}."):
            rows.append([str(i), f"文{i}", en, "-", f"Satz {k}.", "-", "-", "-", "-"])
            i += 1
    for k in range(n):
        rows.append([str(i), f"問{i}", f"Do you see item {k}?", "-", "-", f"Vois-tu {k} ?", "-", "-", "-"])
        i += 1
    rows.append([str(i), "無", "-", "-", "Nur Deutsch.", "-", "-", "-", "-"])
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_builder_is_deterministic_and_pairs_through_the_pivot(tmp_path):
    src = fixture_sentences(tmp_path / "SENTENCES")
    rows = build_pairs.read_sentences(src)
    pairs = build_pairs.paraphrase_pairs(rows)
    assert len(pairs) == 40 and pairs[("I like thing 3.", "I really like thing 3.")]["pivots"] == ["de"]
    a = build_pairs.build(src, tmp_path / "a", n_pairs=8, n_questions=10, seed=0)
    build_pairs.build(src, tmp_path / "b", n_pairs=8, n_questions=10, seed=0)
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert a["tatoeba_paraphrase_test"] == {"paraphrase": 4, "same_opening": 2, "random": 2}
    for split in ("train", "test"):
        df = cnb.load_sentence_pairs(str(tmp_path / "a" / f"tatoeba_paraphrase_{split}.jsonl"))
        for r in df.itertuples():  # a positive shares its number, a negative never does
            assert (r.sentence1.split()[-1] == r.sentence2.split()[-1]) == (r.score == 1.0), r
    bad = tmp_path / "bad"
    bad.write_text("1\tja\ten\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad:1: 3 columns, expected 9"):
        build_pairs.read_sentences(bad)


def test_balanced_pairs_takes_the_first_of_each_kind_in_file_order():
    df = pd.DataFrame({"sentence1": list("abcdefg"), "sentence2": list("hijklmn"), "score": [0, 1, 1, 0, 0, 1, 0.0]})
    got = cnb.balanced_pairs(df, 4)
    assert list(got.index) == [0, 1, 2, 3] and got.score.tolist() == [0, 1, 1, 0]
    assert list(cnb.balanced_pairs(df, 5).index) == [0, 1, 2, 3, 4]  # odd n: one more negative
    with pytest.raises(ValueError, match="the set has 3 and 4"):
        cnb.balanced_pairs(df, 8)
    with pytest.raises(ValueError, match="binary gold"):
        cnb.balanced_pairs(df.assign(score=0.5), 2)
    with pytest.raises(TypeError, match="'score' column"):
        cnb.balanced_pairs(df.drop(columns="score"), 2)
    shipped = cnb.balanced_pairs(cnb.load_sentence_pairs("tatoeba-paraphrase", "train"), 48)
    assert len(shipped) == 48 and shipped.score.sum() == 24
