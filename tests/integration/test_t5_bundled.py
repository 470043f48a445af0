"""The bundled English-to-German T5 (``t5-tatoeba-en-de``) on the shipped Tatoeba test pairs: it
loads as the engine's T5 bridge with the card's shape, translates a test sentence, and the BLEU
that ``cnb.evaluate(task=Seq2SeqTask)`` reports on a few test pairs equals sacrebleu's on the
plain Hugging Face model's greedy ``generate`` output (the independent reference); the card's
test BLEU is sacrebleu's on the greedy translations of the whole test split.

The model ships in the package, so its absence is a failure.
"""

from __future__ import annotations

import pytest
import sacrebleu
import torch
from transformers import T5ForConditionalGeneration, T5Tokenizer

import causal_nb as cnb
from causal_nb.zoo import MODELS_DIR

NAME = "t5-tatoeba-en-de"


@pytest.fixture(scope="module")
def t5():
    if NAME not in cnb.list_models():
        pytest.fail(f"{NAME} is missing from causal_nb/zoo/models (python -m causal_nb t5 train --ship)")
    return cnb.load_model(NAME, device="cpu")


@pytest.fixture(scope="module")
def plain():
    return (T5ForConditionalGeneration.from_pretrained(MODELS_DIR / NAME).eval(),
            T5Tokenizer.from_pretrained(MODELS_DIR / NAME))


def generate(plain, sources, max_new_tokens, batch_size=64):
    hf, tok = plain
    sources, hyps = list(sources), []
    for i in range(0, len(sources), batch_size):
        enc = tok(sources[i:i + batch_size], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        hyps += [s.strip() for s in tok.batch_decode(out, skip_special_tokens=True)]
    return hyps


def test_it_loads_as_the_t5_bridge_with_the_cards_shape(t5):
    card = cnb.model_card(NAME)
    assert cnb.models.families.family(t5) == "t5"
    hf = t5.original_model
    assert (hf.config.num_layers, hf.config.num_decoder_layers, hf.config.d_model, hf.config.num_heads) == (
        card["shape"]["n_layers"], card["shape"]["n_decoder_layers"], card["shape"]["d_model"],
        card["shape"]["n_heads"])
    assert sum(p.numel() for p in hf.parameters()) == card["params"]
    row = cnb.list_models(cards=True).set_index("model").loc[NAME]
    assert row.test_bleu == card["test_bleu"] and row.architecture == "t5"


def test_it_translates_a_test_sentence(plain):
    df = cnb.load_translation_pairs("test", n=1)
    (out,) = generate(plain, df.en, 64)
    assert out and out != df.en[0]
    tok = plain[1]
    assert tok.unk_token_id not in tok(out).input_ids  # German words from its own vocabulary


def test_evaluate_bleu_equals_sacrebleu_on_plain_generate(t5, plain):
    df = cnb.load_translation_pairs("test", n=24)
    task = cnb.Seq2SeqTask(list(df.en), list(df.de))
    ev = cnb.evaluate(t5, task=task)
    longest = max(len(plain[1](t).input_ids) for t in df.de)
    hyps = generate(plain, df.en, max(16, 2 * longest), batch_size=32)  # greedy_generations' defaults
    assert ev["generations"] == hyps
    assert ev["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [list(df.de)]).score, abs=1e-9)


def test_card_bleu_is_sacrebleu_on_the_whole_test_split(plain):
    card = cnb.model_card(NAME)
    df = cnb.load_translation_pairs("test")
    assert card["data"]["test"] == len(df)
    hyps = generate(plain, df.en, 64)
    assert round(sacrebleu.corpus_bleu(hyps, [list(df.de)]).score, 2) == pytest.approx(card["test_bleu"], abs=0.05)
    assert round(sacrebleu.corpus_chrf(hyps, [list(df.de)]).score, 2) == pytest.approx(card["test_chrf"], abs=0.05)
    assert [e["model"] for e in card["examples"]] == hyps[:len(card["examples"])]


def test_compose_bleu_curve_starts_at_sacrebleu_of_the_pruned_model(plain, tmp_path):
    """The composable-pruning runs' BLEU curve (``bleu_curve_pairs``): taken at every evaluation,
    its step 0 equal to sacrebleu on plain greedy ``generate`` of the directly pruned model,
    its last equal to the run's BLEU after."""
    import pandas as pd

    from causal_nb.pruning import compose_stages
    from causal_nb.pruning.compose_modules import compose_model

    conf = cnb.compose_config(NAME, [0.25], [0.3])
    scheme = cnb.make_scheme(conf)
    compose_stages.prune_variants(scheme, tmp_path)
    data = compose_stages.shared_data(scheme, data={"n_heldout": 8, "n_train": 32, "bleu_pairs": 12,
                                                    "bleu_curve_pairs": 12})
    model, _ = compose_model(data["hf"], scheme, 1, tmp_path / "pruned")
    df = cnb.load_translation_pairs("val", n=12)
    hyps = generate((model.eval(), plain[1]), df.en, 48)
    by_hand = sacrebleu.corpus_bleu(hyps, [list(df.de)]).score
    r = compose_stages.run_configuration(data, scheme, tmp_path, 1, "baseline", steps=3, batch_size=8, lr=1e-3,
                                         eval_every=2, out=tmp_path / "after")
    c = pd.read_csv(tmp_path / "runs" / "c1_baseline.csv")
    assert list(c.step[c.val_bleu.notna()]) == [0, 2, 3] and list(c.step[c.val_loss.notna()]) == [0, 2, 3]
    assert by_hand > 0 and c.val_bleu.iloc[0] == pytest.approx(by_hand, abs=1e-9)
    assert r["bleu_before"] == pytest.approx(by_hand, abs=1e-9)
    from causal_nb.models.t5 import load_pruned_t5  # heads removed: the saved folder has their shapes

    after = load_pruned_t5(tmp_path / "after").eval()
    after_by_hand = sacrebleu.corpus_bleu(generate((after, plain[1]), df.en, 48), [list(df.de)]).score
    assert c.val_bleu.iloc[-1] == pytest.approx(after_by_hand, abs=1e-9)
    assert r["bleu_after"] == pytest.approx(after_by_hand, abs=1e-9)
