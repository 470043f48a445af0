"""lm-evaluation-harness through ``cnb.lm_eval``: its per-item numbers equal a plain torch
log-likelihood computation on the plain Hugging Face model (loaded with ``from_pretrained``,
not the kit's copy), on the shipped tasks, with a small ``limit``; and bad input fails clearly.

The reference follows the harness's documented request semantics: a multiple-choice item scores
``log p(choice | context)``, where the context's trailing whitespace moves into the choice and
the pair is tokenised whole; a rolling document is scored in disjoint windows of the model's
``max_length`` predicted tokens, the first after the prefix (BOS/EOS) token and the last one
conditioned on a full window of earlier tokens.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import causal_nb as cnb
from causal_nb.evaluation.harness import TASK_DIR, HarnessTaskError
from causal_nb.zoo.tiny import make_tiny_model

N_CTX = 128  # short, so that long contexts are truncated and long documents take several windows
LIMIT = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("lme") / "gpt2", "gpt2", n_layers=2, d_model=32, n_heads=4,
                             d_mlp=64, n_ctx=N_CTX, seed=1, init_std=0.1)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    return folder, cnb.load_model(folder, device="cpu"), hf, tok


def docs(name, n=LIMIT):
    return [json.loads(line) for line in (TASK_DIR / f"{name}.jsonl").read_text().splitlines()[:n]]


@torch.no_grad()
def ref_choice_ll(hf, tok, context, choice, delim):
    cont = delim + choice
    n_sp = len(context) - len(context.rstrip())
    if n_sp:
        context, cont = context[:-n_sp], context[-n_sp:] + cont
    whole, ctx = tok.encode(context + cont), tok.encode(context)
    n_cont = len(whole) - len(ctx)
    ids = whole[-(N_CTX + 1):]  # the harness keeps the last max_length + 1 tokens
    lp = torch.log_softmax(hf(torch.tensor([ids[:-1]])).logits[0].double(), -1)
    tgt = torch.tensor(ids[1:])
    return float(lp[torch.arange(len(tgt)), tgt][-n_cont:].sum())


@torch.no_grad()
def ref_rolling_ll(hf, tok, text):
    toks = tok.encode(text)
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    total, done = 0.0, 0
    while done < len(toks):
        n = min(N_CTX, len(toks) - done)
        if done == 0:
            inp, tgt = [prefix] + toks[: n - 1], toks[:n]
        else:
            end = done + n
            inp, tgt = toks[max(end - N_CTX - 1, 0): end - 1], toks[end - n: end]
        lp = torch.log_softmax(hf(torch.tensor([inp])).logits[0].double(), -1)
        total += float(lp[torch.arange(len(inp))[-n:], torch.tensor(tgt)].sum())
        done += n
    return total


def test_harness_equals_plain_loglikelihood(tiny):
    folder, model, hf, tok = tiny
    assert hf.config.n_positions == N_CTX
    tasks = ["cnb_next_line_python", "cnb_tatoeba_ending", "cnb_heldout_ppl_cpp"]
    df = cnb.lm_eval(model, tasks, limit=LIMIT, batch_size=2)
    items = pd.DataFrame(df.attrs["items"])
    assert set(df.task) == set(tasks) and (df.n == LIMIT).all()
    for task, file, delim in (("cnb_next_line_python", "next_line_python", ""), ("cnb_tatoeba_ending", "tatoeba_ending", " ")):
        got = items[items.task == task].sort_values("doc_id")
        accs = []
        for (_, row), d in zip(got.iterrows(), docs(file)):
            ref = [ref_choice_ll(hf, tok, d["context"], c, delim) for c in d["choices"]]
            np.testing.assert_allclose(row.loglikelihoods, ref, rtol=1e-4, atol=1e-4)
            assert int(row.target) == d["label"]
            accs.append(float(np.argmax(ref) == d["label"]))
        acc = df[(df.task == task) & (df.metric == "acc")].value.item()
        assert acc == pytest.approx(np.mean(accs))
    got = items[items.task == "cnb_heldout_ppl_cpp"].sort_values("doc_id")
    ds = docs("heldout_cpp")
    assert max(len(tok.encode(d["text"])) for d in ds) > N_CTX  # several windows are exercised
    ref = [ref_rolling_ll(hf, tok, d["text"]) for d in ds]
    np.testing.assert_allclose(got.loglikelihood, ref, rtol=1e-4, atol=1e-3)
    # byte perplexity: exp(-sum ll / sum bytes) over the documents
    n_bytes = sum(len(d["text"].encode()) for d in ds)
    bpp = df[(df.task == "cnb_heldout_ppl_cpp") & (df.metric == "byte_perplexity")].value.item()
    assert bpp == pytest.approx(math.exp(-sum(ref) / n_bytes), rel=1e-4)


def test_saved_folder_and_plain_model_give_the_same_numbers(tiny, tmp_path):
    folder, model, hf, tok = tiny
    a = cnb.lm_eval(model, ["cnb_next_line_cpp"], limit=2)
    b = cnb.lm_eval(folder, ["cnb_next_line_cpp"], limit=2)
    c = cnb.lm_eval(hf, ["cnb_next_line_cpp"], limit=2, tokenizer=tok)
    for other in (b, c):
        np.testing.assert_allclose(np.stack([r["loglikelihoods"] for r in a.attrs["items"]]),
                                   np.stack([r["loglikelihoods"] for r in other.attrs["items"]]),
                                   rtol=1e-5, atol=1e-5)


def test_include_path_and_bad_input(tiny, tmp_path):
    folder, model, hf, tok = tiny
    user = tmp_path / "mytasks"
    user.mkdir()
    (user / "items.jsonl").write_text("".join(json.dumps({"q": f"x = {i}", "opts": [" + 1", " ** 2"], "y": i % 2}) + "\n"
                                              for i in range(3)))
    base = ("task: my_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\n"
            "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\n")
    (user / "my_mc.yaml").write_text(base + "doc_to_choice: '{{opts}}'\ndoc_to_target: '{{y}}'\n")
    df = cnb.lm_eval(model, ["my_mc"], include_path=user)
    items = pd.DataFrame(df.attrs["items"])
    ref = [ref_choice_ll(hf, tok, f"x = {i}", c, " ") for i in range(3) for c in (" + 1", " ** 2")]
    np.testing.assert_allclose(np.concatenate(items.sort_values("doc_id").loglikelihoods.tolist()), ref, rtol=1e-4, atol=1e-4)

    with pytest.raises(HarnessTaskError, match=r"include_path.*cnb_next_line_python|cnb_next_line_python.*include_path"):
        cnb.lm_eval(model, ["cnb_next_lines_python"])
    (user / "my_mc.yaml").write_text(base + "doc_to_choice: '{{opts}}'\n")  # no doc_to_target
    with pytest.raises(HarnessTaskError, match="doc_to_target"):
        cnb.lm_eval(model, ["my_mc"], include_path=user)
    (user / "my_mc.yaml").write_text(base + "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{y}}'\n")
    with pytest.raises(HarnessTaskError, match=r"items.jsonl:1.*choices"):
        cnb.lm_eval(model, ["my_mc"], include_path=user)
    with pytest.raises(HarnessTaskError, match="not a folder"):
        cnb.lm_eval(model, ["my_mc"], include_path=tmp_path / "nowhere")
    # a model folder without its tokenizer, and a plain model without one
    bare = tmp_path / "bare"
    hf.save_pretrained(bare)
    with pytest.raises(HarnessTaskError, match="tokenizer"):
        cnb.lm_eval(bare, ["cnb_next_line_cpp"], limit=1)
    with pytest.raises(HarnessTaskError, match="tokenizer="):
        cnb.lm_eval(hf, ["cnb_next_line_cpp"], limit=1)


def test_shipped_tasks_rebuild_from_the_prompt_files():
    import hashlib

    from causal_nb.data.prompts import parse_jsonl, prompt_dir
    from causal_nb.zoo.build_lm_eval_tasks import build_next_line, build_ppl

    prov = json.loads((TASK_DIR / "PROVENANCE.json").read_text())
    assert sorted(prov) == cnb.shipped_tasks()
    for task, p in prov.items():
        file = {"cnb_tatoeba_ending": "tatoeba_ending"}.get(task, task.replace("cnb_", "").replace("_ppl", ""))
        data = (TASK_DIR / f"{file}.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest() == p["sha256"] and len(data.splitlines()) == p["items"], task
    for domain in ("python", "cpp"):
        shipped = [json.loads(x) for x in (TASK_DIR / f"next_line_{domain}.jsonl").read_text().splitlines()]
        assert build_next_line(domain) == shipped
        assert build_ppl(domain) == [json.loads(x) for x in (TASK_DIR / f"heldout_{domain}.jsonl").read_text().splitlines()]
        texts = {r["source"]: r["text"] for r in parse_jsonl(prompt_dir() / f"{domain}.jsonl") if r["split"] == "test"}
        for it in shipped:
            src, k = it["source"].rsplit("+", 1)
            lines = texts[src].splitlines()
            assert it["context"] == "\n".join(lines[: int(k)]) + "\n" and it["choices"][it["label"]] == lines[int(k)]
            others = [c for i, c in enumerate(it["choices"]) if i != it["label"]]
            own_file = src.split(":")[0]
            assert len(set(it["choices"])) == 4 and not any(
                c.strip() in {x.strip() for x in t.splitlines()} for c in others for s, t in texts.items() if s.split(":")[0] == own_file)
