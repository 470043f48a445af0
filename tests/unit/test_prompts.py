import json

import pytest
import torch

import causal_nb as cnb
from causal_nb.data.prompts import PromptSetError, parse_jsonl


def write(tmp_path, lines, name="dom.jsonl"):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines))
    return p


def rec(i, text="some text", split="train"):
    return json.dumps({"id": f"x-{i}", "text": text, "split": split})


def test_valid_file_loads_by_path_with_splits(tmp_path):
    p = write(tmp_path, [rec(1), rec(2, split="test"), rec(3)])
    ps = cnb.load_prompts(p, split="train")
    assert ps.ids == ("x-1", "x-3") and ps.domain == "dom" and len(ps) == 2
    assert cnb.load_prompts(p, split="test").ids == ("x-2",)
    assert len(cnb.load_prompts(p, split="all")) == 3
    assert cnb.load_prompts(p, split="all", n=2).ids == ("x-1", "x-2")


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"id": "a", "text": "t"', "invalid JSON"),
        ('{"text": "t"}', "missing field 'id'"),
        ('{"id": "a"}', "missing field 'text'"),
        ('{"id": "a", "text": "   "}', "empty 'text'"),
        ('{"id": "x-1", "text": "t"}', "duplicate id 'x-1' (first on line 1)"),
        ('{"id": "a", "text": "t", "split": "dev"}', "split must be one of"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad_line, needle):
    p = write(tmp_path, [rec(1), bad_line])
    with pytest.raises(PromptSetError) as e:
        parse_jsonl(p)
    assert f"{p}:2:" in str(e.value) and needle in str(e.value)


def test_empty_file_and_empty_split(tmp_path):
    p = write(tmp_path, [])
    with pytest.raises(PromptSetError, match="has no prompts"):
        cnb.load_prompts(p)
    p2 = write(tmp_path, [rec(1)], "only_train.jsonl")
    with pytest.raises(PromptSetError, match="no prompts in split 'test'"):
        cnb.load_prompts(p2, split="test")


def test_unknown_domain_lists_available():
    with pytest.raises(PromptSetError, match=r"unknown domain 'klingon'.*python"):
        cnb.load_prompts("klingon")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        cnb.load_prompts("python", split="validation")
    with pytest.raises(PromptSetError, match="not a single string"):
        from causal_nb.data.prompts import as_prompt_set

        as_prompt_set("def f(): pass")
    with pytest.raises(PromptSetError, match="non-empty"):
        cnb.PromptSet.from_texts(["ok", ""])


def test_shipped_prompt_sets_meet_the_counts():
    summary = cnb.prompt_set_summary().set_index("domain")
    for d in ("python", "cpp"):
        assert summary.loc[d, "train"] + summary.loc[d, "test"] >= 200
    for d in ("finance", "medical", "science", "maths"):
        assert summary.loc[d, "train"] + summary.loc[d, "test"] >= 50


def test_code_prompts_test_split_comes_from_other_files():
    for d in ("python", "cpp"):
        recs = parse_jsonl(cnb.data.prompts.prompt_dir() / f"{d}.jsonl")
        files = {s: {r["source"].split(":")[0] for r in recs if r["split"] == s} for s in ("train", "test")}
        assert files["train"] and files["test"] and not files["train"] & files["test"]


def test_code_prompts_come_from_heldout_files_only():
    from causal_nb.zoo.corpus import is_heldout

    for d in ("python", "cpp"):
        recs = parse_jsonl(cnb.data.prompts.prompt_dir() / f"{d}.jsonl")
        assert all(is_heldout(r["source"].split(":")[0]) for r in recs)


def test_tokenize_pads_truncates_and_masks(tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["gpt2"]))
    ps = cnb.PromptSet.from_texts(["def add(a, b):\n    return a + b\n" * 5, "int"])
    b = ps.tokenize(tok, 12)
    assert b.tokens.shape == (2, 12) and b.mask.shape == (2, 12)
    assert (b.tokens[:, 0] == tok.bos_token_id).all()
    long_ids = [tok.bos_token_id] + tok(ps.texts[0], add_special_tokens=False)["input_ids"][:11]
    assert b.tokens[0].tolist() == long_ids and b.mask[0].all()
    n_short = 1 + len(tok("int", add_special_tokens=False)["input_ids"])
    assert b.lengths.tolist() == [12, n_short]
    assert not b.mask[1, n_short:].any() and (b.tokens[1, n_short:] == tok.pad_token_id).all()
    with pytest.raises(PromptSetError, match="fewer than n_tokens=12"):
        ps.tokenize(tok, 12, pad=False)
    no_bos = tok(ps.texts[0], add_special_tokens=False)["input_ids"][:12]
    assert ps.tokenize(tok, 12, prepend_bos=False).tokens[0].tolist() == no_bos
    assert torch.equal(ps.tokenize(tok, 12).tokens, b.tokens)  # deterministic


def test_fitting_keeps_prompts_that_fill_n_tokens(tiny_model):
    ps = cnb.PromptSet.from_texts(["a b", "def add(a, b): return a + b and more words here", "x"], "py")
    lengths = [len(tiny_model.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in ps.texts]
    n = lengths[1]
    fit = ps.fitting(tiny_model, n)
    assert fit.ids == ("py-1",) and fit.texts == (ps.texts[1],)
    assert len(ps.fitting(tiny_model, 1)) == 3
    assert fit.tokenize(tiny_model, n, pad=False).mask.all()
    with pytest.raises(cnb.PromptSetError, match="no py prompt has"):
        ps.fitting(tiny_model, n + 1)
