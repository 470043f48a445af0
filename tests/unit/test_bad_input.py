"""Bad input a notebook user hits gets a clear error from the kit that names the fix.

One test per category: misspelled keywords, options the chosen method would ignore, a table
handed to the wrong consumer, impossible coordinates, sparsity as a percent, a metric of the
wrong shape, the same domain twice, and files that are not what they are loaded as.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import causal_nb as cnb
from causal_nb.analyses.scoring import load_scores

TEXTS = ["def add(a, b):\n    return a + b", "for i in range(10):\n    print(i)",
         "int main() { return 0; }", "class A:\n    pass"]
OTHER = ["x = [1, 2, 3]\nprint(len(x))", "while True:\n    break", "import os\nos.getcwd()", "y = {'a': 1}"]
N = 8


@pytest.fixture(scope="module")
def model(tiny_dirs):
    """The tiny Llama (GQA: 4 query heads, 2 key/value heads, 2 layers)."""
    return cnb.load_model(tiny_dirs["llama"], device="cpu")


@pytest.fixture(scope="module")
def head_scores(model):
    return cnb.score(model, TEXTS, "random", unit="head", seed=0)


def test_misspelled_keywords_name_the_nearest_valid_one(model, head_scores):
    # Old main: patch() forwarded **method_kwargs and exact patching ignored them, so this
    # patched every position without a word.
    with pytest.raises(TypeError, match=r"patch\(\) got an unexpected keyword argument 'postions'; "
                                        r"did you mean 'positions'\?"):
        cnb.patch(model, TEXTS, OTHER, postions=[5], n_tokens=N)
    with pytest.raises(TypeError, match=r"score\(\) got an unexpected keyword argument 'metirc'; did you mean 'metric'"):
        cnb.score(model, TEXTS, "taylor", metirc="kl", n_tokens=N)
    with pytest.raises(TypeError, match="did you mean 'kind'"):
        cnb.ablate(model, TEXTS, knid="mean", n_tokens=N)
    with pytest.raises(TypeError, match=r"prune\(\) got an unexpected keyword argument 'sparsty'; did you mean 'sparsity'"):
        cnb.prune(model, head_scores, sparsty=0.5)
    with pytest.raises(TypeError, match="did you mean 'thresholds'"):
        cnb.acdc(model, TEXTS, threshold=[0.01], n_tokens=N)
    with pytest.raises(TypeError, match="did you mean 'top_k'"):
        cnb.reverse_intervention(model, TEXTS, OTHER, topk=3, n_tokens=N)
    with pytest.raises(TypeError, match="did you mean 'n_tokens'"):
        cnb.evaluate(model, TEXTS, ntokens=N)
    with pytest.raises(TypeError, match=r"load_model\(\) got an unexpected keyword argument 'dtpye'; did you mean 'dtype'"):
        cnb.load_model("code-gpt2-2l", dtpye="float32")
    with pytest.raises(TypeError, match=r"load_model\(\) got an unexpected keyword argument 'revison'; did you mean 'revision'"):
        cnb.load_model("code-gpt2-2l", revison="main")
    with pytest.raises(TypeError, match=r"HeadExplorer\(\) got an unexpected keyword argument 'refrence'; did you mean 'reference'"):
        cnb.widgets.HeadExplorer(model, TEXTS, refrence=TEXTS)


def test_options_the_method_ignores_are_errors(model):
    with pytest.raises(ValueError, match=r"metric= is not used by method 'taylor' \(it scores the loss\); "
                                         r"methods that take metric=: ablation, patching"):
        cnb.score(model, TEXTS, "taylor", metric="kl", n_tokens=N)
    with pytest.raises(ValueError, match=r"metric= is not used by method 'acdc' \(it scores the KL divergence, or a sentence-pair task's own metric\)"):
        cnb.score(model, TEXTS, "acdc", metric="loss", n_tokens=N)
    with pytest.raises(ValueError, match="kind= is not used by method 'magnitude'; methods that take kind=: ablation"):
        cnb.score(model, TEXTS, "magnitude", kind="zero")
    with pytest.raises(ValueError, match="steps= is not used by method 'attribution'.*methods that take steps=: eap-ig"):
        cnb.score(model, TEXTS, "attribution", steps=3, n_tokens=N)
    with pytest.raises(ValueError, match="corrupted= is not used by method 'ablation'"):
        cnb.score(model, TEXTS, "ablation", corrupted=OTHER, n_tokens=N)
    with pytest.raises(ValueError, match="p= is not used by method 'random'"):
        cnb.score(model, TEXTS, "random", p=1)
    with pytest.raises(ValueError, match="threshold= is not used by method 'ablation'.*take threshold=: acdc"):
        cnb.score(model, TEXTS, "ablation", threshold=0.1, n_tokens=N)
    with pytest.raises(ValueError, match="batch_size= is not used by method 'attribution'"):
        cnb.patch(model, TEXTS, OTHER, method="attribution", batch_size=4, n_tokens=N)
    with pytest.raises(ValueError, match="steps= is not used by method 'exact'"):
        cnb.patch(model, TEXTS, OTHER, steps=3, n_tokens=N)
    with pytest.raises(ValueError, match=r"reference= is not used by kind 'zero'.*kinds that take reference=: mean, resample"):
        cnb.ablate(model, TEXTS, kind="zero", reference=OTHER, n_tokens=N)
    with pytest.raises(ValueError, match="seed= is not used by kind 'mean'"):
        cnb.ablate(model, TEXTS, kind="mean", seed=3, n_tokens=N)
    # an explicitly passed default is still an option the method uses: no error
    a = cnb.score(model, TEXTS, "magnitude", p=2)
    b = cnb.score(model, TEXTS, "magnitude")
    assert a.score.equals(b.score)
    # run settings every method takes, as a loop over METHODS passes them
    cnb.score(model, TEXTS, "random", n_tokens=N, seed=1, progress=False)


def test_tables_handed_to_the_wrong_consumer(model, head_scores):
    patched = cnb.patch(model, TEXTS, OTHER, layers=[0], n_tokens=N, progress=False)
    with pytest.raises(ValueError, match=r"this is a patch\(\) table \(column 'value', raw metric values\); prune needs "
                                         r"importance scores: use score\(model, prompts, 'patching', corrupted=\.\.\.\)"):
        cnb.prune(model, patched, 0.5)
    ablated = cnb.ablate(model, TEXTS, layers=[0], n_tokens=N, progress=False)
    with pytest.raises(ValueError, match=r"this is an ablate\(\) table.*score\(model, prompts, 'ablation'"):
        cnb.prune(model, ablated, 0.5)
    with pytest.raises(ValueError, match=r"this is a patch\(\) table.*rank agreement needs importance scores"):
        cnb.stats.rank_agreement(patched, head_scores)
    # key-head values relabelled as scores (attrs keep unit='k'): not query-head scores
    kv = cnb.ablate(model, TEXTS, unit="k", n_tokens=N, progress=False).rename(columns={"value": "score"})
    with pytest.raises(ValueError, match=r"prune needs scores of 'head' or 'neuron' or 'block' units, but this table "
                                         r"scores key heads \(unit='k'\)"):
        cnb.prune(model, kv, 0.25)
    neurons = cnb.score(model, TEXTS, "random", unit="neuron")
    with pytest.raises(ValueError, match=r"needs scores of 'head' units, but this table scores neurons"):
        cnb.widgets.SparsityExplorer(model, {"random": neurons}, TEXTS, n_tokens=N)
    with pytest.raises(ValueError, match="the tables score different units"):
        cnb.stats.rank_agreement(head_scores, neurons)
    # Scores of another model shape with the same row count (4 layers x 2 heads vs 2 x 4):
    # old main indexed a layer this model doesn't have (a bare KeyError).
    other = pd.DataFrame({"layer": [la for la in range(4) for _ in range(2)], "head": [0, 1] * 4,
                          "score": torch.rand(8, generator=torch.Generator().manual_seed(0)).tolist()})
    other.attrs.update({"method": "random", "unit": "head"})
    with pytest.raises(ValueError, match=r"these head scores do not fit this model: layers 0\.\.3 \(the model has 0\.\.1\)"
                                         r".*another model"):
        cnb.prune(model, other, 0.5)
    with pytest.raises(ValueError, match=r"unit_heatmap: column 'value' is not in the table.*score\(\) tables have 'score'"):
        cnb.plotting.unit_heatmap(head_scores, value="value")
    fig, mat = cnb.plotting.unit_heatmap(head_scores)  # the default picks the table's own column
    assert mat.shape == (2, 4)


def test_impossible_coordinates(model):
    with pytest.raises(ValueError, match=r"positions= \[100\] lie outside the prompts' token positions 0\.\.7"):
        cnb.patch(model, TEXTS, OTHER, positions=[100], n_tokens=N)
    # a negative position used to index from the end silently
    with pytest.raises(ValueError, match=r"positions= \[-1\] lie outside"):
        cnb.ablate(model, TEXTS, positions=[-1], n_tokens=N)
    with pytest.raises(ValueError, match=r"scored_positions= \[7\]: scored positions must lie in 0\.\.6"):
        cnb.ablate(model, TEXTS, scored_positions=[0, 7], n_tokens=N)
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] do not exist: the model has layers 0\.\.1"):
        cnb.patch(model, TEXTS, OTHER, layers=[5], n_tokens=N)
    with pytest.raises(ValueError, match=r"layers= \[2\]: the model has layers 0\.\.1"):
        cnb.reverse_intervention(model, TEXTS, OTHER, layers=[2], n_tokens=N)
    for bad in (1, 0):
        with pytest.raises(ValueError, match=rf"n_tokens={bad} leaves no token to predict"):
            cnb.ablate(model, TEXTS, n_tokens=bad)
    with pytest.raises(ValueError, match="n_tokens=1 leaves no token to predict"):
        cnb.prompt_losses(model, TEXTS, n_tokens=1)


def test_sparsity_as_a_percent(model, head_scores):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 50: it is a share, not a "
                                         r"percent; did you mean 0\.5\?"):
        cnb.prune(model, head_scores, 50)
    with pytest.raises(ValueError, match=r"got 12\.5: it is a share, not a percent; did you mean 0\.125\?"):
        cnb.prune(model, head_scores, 12.5)
    with pytest.raises(ValueError, match=r"did you mean 0\.3\?"):
        cnb.pruning.selection.select_units(head_scores, 30, 4, 2)
    # 1 is "everything", not 1 %: no percent hint
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1 \(the share of units removed\)$"):
        cnb.prune(model, head_scores, 1)
    with pytest.raises(TypeError, match="sparsity is a share"):
        cnb.prune(model, head_scores, "50%")


@pytest.mark.parametrize("bad", ["scalar", "batch_pos"])
def test_metric_of_the_wrong_shape(model, bad):
    def metric(logits, batch):
        lp = torch.log_softmax(logits.float(), -1).max(-1).values  # [batch, scored]
        return lp.mean() if bad == "scalar" else lp

    got = r"\(\)" if bad == "scalar" else r"\(4, 7\)"
    with pytest.raises(ValueError, match=rf"metric 'metric' returned {got}; a metric returns one value per prompt, a "
                                         r"tensor of shape \[batch\] = \(4,\)"):
        cnb.patch(model, TEXTS, OTHER, metric=metric, n_tokens=N)
    with pytest.raises(ValueError, match=r"shape \[batch\]"):
        cnb.patch(model, TEXTS, OTHER, metric=metric, method="attribution", n_tokens=N)


def test_the_same_domain_twice(model):
    with pytest.raises(ValueError, match="a and b are the same prompts: reverse intervention compares two domains"):
        cnb.reverse_intervention(model, TEXTS, TEXTS, n_tokens=N)
    a = cnb.PromptSet.from_texts(TEXTS, domain="python")
    b = cnb.PromptSet.from_texts(OTHER, domain="python")
    with pytest.raises(ValueError, match="a and b are the same domain 'python'"):
        cnb.reverse_intervention(model, a, b, n_tokens=N)


def test_files_that_are_not_score_or_token_set_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not JSON")
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"lr": 0.1, "epochs": 3}))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match=r"notes\.txt is not a score file: not JSON"):
        load_scores(text)
    with pytest.raises(ValueError, match=r"config\.json is not a score file: it lacks \['model', 'tokenizer'"):
        load_scores(other)
    with pytest.raises(ValueError, match=r"list\.json is not a score file"):
        load_scores(listed)
    with pytest.raises(cnb.TokenSetError, match=r"notes\.txt is not a token set: not a JSON file"):
        cnb.TokenSet.load(text)
    with pytest.raises(cnb.TokenSetError, match=r"config\.json is not a token set: it lacks \['ids', 'tokens'"):
        cnb.TokenSet.load(other)


def test_evaluate_old_reference_spelling_names_the_new_one(model):
    # reference= means prompts (for mean ablation) everywhere else; evaluate's full model is full_model=
    with pytest.raises(TypeError, match=r"evaluate\(reference=\.\.\.\) is now evaluate\(full_model=\.\.\.\)"):
        cnb.evaluate(model, TEXTS, reference=model, n_tokens=N, latency_batches=())
    out = cnb.evaluate(model, TEXTS, full_model=model, n_tokens=N, latency_batches=(), memory=False)
    assert out["kl"] == pytest.approx(0.0, abs=1e-6) and out["top1_agreement"] == 1.0
