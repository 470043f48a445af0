"""``zoo.train_t5`` (``python -m causal_nb t5 train``) on a tiny T5 and small pair files the tests write:

- the tokenizer is a ``T5Tokenizer`` with ``<pad>``/``</s>``/``<unk>`` at 0/1/2 that round-trips
  training sentences;
- training lowers the loss; an interrupted run resumed from its checkpoint ends bit-exactly where
  the uninterrupted run ends (dropout on: the checkpoint keeps the RNG state); resuming with other
  settings, or without a checkpoint, is refused;
- the written folder loads with ``load_model`` as the T5 bridge, and the card's test BLEU is
  sacrebleu's on the plain Hugging Face model's greedy ``generate`` output, computed here;
- the command line names its bad input.
"""

from __future__ import annotations

import gzip
import json

import pytest
import sacrebleu
import torch
from interrupted import run_killed_after_first_checkpoint
from transformers import T5ForConditionalGeneration, T5Tokenizer

import causal_nb as cnb
from causal_nb.__main__ import main
from causal_nb.zoo import train_t5 as tt
from causal_nb.zoo.train_t5 import T5TrainConfig, TrainT5Error, build_translation_tokenizer, train_t5

TINY = {"n_layers": 1, "n_decoder_layers": 1, "d_model": 16, "n_heads": 2, "d_kv": 8, "d_ff": 32,
        "vocab_size": 120, "dropout": 0.1, "description": "tiny test T5", "why": "fast"}
EN = "the cat dog bird sees eats likes red small big".split()
DE = "die katze hund vogel sieht isst mag rote kleine grosse".split()


def pairs(n, offset):
    out = []
    for i in range(offset, offset + n):
        a, b, c = i % 4, 4 + (i // 4) % 3, 1 + (i // 12) % 3
        out.append({"en": f"{EN[0]} {EN[7 + c - 1]} {EN[a + 1]} {EN[b]} {EN[1 + (a + 1) % 3]}.",
                    "de": f"{DE[0]} {DE[7 + c - 1]} {DE[a + 1]} {DE[b]} {DE[1 + (a + 1) % 3]}.", "ja_id": str(i)})
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    for split, n, off in (("train", 48, 0), ("val", 8, 100), ("test", 8, 200)):
        with gzip.open(folder / f"tatoeba_en_de_{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in pairs(n, off))
    return folder


def config(**kw):
    return T5TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-2, "warmup": 2, "val_bleu_pairs": 4,
                            "spec": dict(TINY), **kw})


def run(out, data_dir, cfg=None, **kw):
    return train_t5(out, cfg or config(), progress=False, data_dir=data_dir, **kw)


def test_tokenizer_is_a_t5_tokenizer_that_round_trips(data_dir):
    texts = [r["en"] for r in pairs(48, 0)] + [r["de"] for r in pairs(48, 0)]
    tok = build_translation_tokenizer(texts, 120)
    assert isinstance(tok, T5Tokenizer) and len(tok) <= 120
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"] and tok.pad_token_id == 0
    for t in texts[:5] + texts[-5:]:
        ids = tok(t).input_ids
        assert ids[-1] == 1 and 2 not in ids
        assert tok.decode(ids, skip_special_tokens=True) == t


def test_training_lowers_the_loss(data_dir, tmp_path):
    card = run(tmp_path / "run", data_dir, config(epochs=4))
    losses = [h["train_loss"] for h in card["history"]]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0] and losses == sorted(losses, reverse=True), losses
    assert (card["data"]["train"], card["data"]["val"], card["data"]["test"]) == (48, 8, 8)


def test_resume_equals_the_uninterrupted_run_bit_exactly(data_dir, tmp_path, monkeypatch):
    full = run(tmp_path / "full", data_dir)
    run_killed_after_first_checkpoint(monkeypatch, tt, lambda: run(tmp_path / "cut", data_dir))
    torch.manual_seed(12345)  # whatever the global RNG holds now, the checkpoint's state wins
    resumed = run(tmp_path / "cut", data_dir, resume=True)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]
    assert resumed["test_bleu"] == full["test_bleu"]


def test_resume_is_refused_without_a_checkpoint_or_with_other_settings(data_dir, tmp_path):
    with pytest.raises(TrainT5Error, match="no checkpoint at"):
        run(tmp_path / "none", data_dir, resume=True)
    run(tmp_path / "r", data_dir, config(epochs=1))
    with pytest.raises(TrainT5Error, match=r"settings differ.*'lr': \(0.01, 0.001\)"):
        run(tmp_path / "r", data_dir, config(epochs=1, lr=1e-3), resume=True)
    with pytest.raises(TrainT5Error, match="epochs=0 must be at least 1"):
        run(tmp_path / "x", data_dir, config(epochs=0))
    with pytest.raises(TrainT5Error, match=r"weight_decay=-0.1 must be at least 0 \(e.g. --weight-decay"):
        run(tmp_path / "x", data_dir, config(weight_decay=-0.1))  # before: torch's AdamW error, after loading
    reworded = config(epochs=1, spec={**TINY, "why": "reworded"})  # the card's prose is not a setting
    assert run(tmp_path / "r", data_dir, reworded, resume=True)["why"] == "reworded"


def test_written_folder_loads_as_t5_bridge_and_card_bleu_is_sacrebleus(data_dir, tmp_path):
    card = run(tmp_path / "run", data_dir, config(epochs=2))
    folder = tmp_path / "run" / "model"
    hf = T5ForConditionalGeneration.from_pretrained(folder).eval()
    tok = T5Tokenizer.from_pretrained(folder)
    test = pairs(8, 200)
    enc = tok([r["en"] for r in test], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = hf.generate(**enc, max_new_tokens=64, do_sample=False, num_beams=1)
    hyps = [s.strip() for s in tok.batch_decode(out, skip_special_tokens=True)]
    want = sacrebleu.corpus_bleu(hyps, [[r["de"] for r in test]]).score
    assert card["test_bleu"] == pytest.approx(round(want, 2), abs=1e-9)
    chrf = sacrebleu.corpus_chrf(hyps, [[r["de"] for r in test]]).score
    assert card["test_chrf"] == pytest.approx(round(chrf, 2), abs=1e-9)
    assert [e["model"] for e in card["examples"]] == hyps
    bridge = cnb.load_model(str(folder), device="cpu")
    assert cnb.models.families.family(bridge) == "t5" and bridge.cfg.d_model == 16
    assert json.loads((folder / "card.json").read_text()) == card
    assert f"Test BLEU **{card['test_bleu']:.2f}**" in (folder / "README.md").read_text()


def test_the_command_line_names_bad_input(tmp_path, capsys):
    assert main(["t5", "train", "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["t5", "train", "--out", str(tmp_path / "z"), "--epochs", "0"]) == 1
    assert "epochs=0 must be at least 1" in capsys.readouterr().err


def test_a_further_phase_starts_from_the_earlier_weights_and_tokenizer_and_lists_both(data_dir, tmp_path):
    first = run(tmp_path / "one", data_dir, config(epochs=1))
    folder = tmp_path / "one" / "model"
    # lr ~0 in phase 2: the weights must come out as phase 1 left them, read through its own vocabulary
    second = run(tmp_path / "two", data_dir, config(epochs=1, lr=1e-12, weight_decay=0.0, init_from=str(folder)))
    a = T5ForConditionalGeneration.from_pretrained(folder).state_dict()
    b = T5ForConditionalGeneration.from_pretrained(tmp_path / "two" / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)
    assert (T5Tokenizer.from_pretrained(folder).get_vocab()
            == T5Tokenizer.from_pretrained(tmp_path / "two" / "model").get_vocab())
    assert [p["test_bleu"] for p in second["phases"]] == [first["test_bleu"], second["test_bleu"]]
    assert second["training"]["seconds_all_phases"] == pytest.approx(
        first["training"]["seconds"] + second["training"]["seconds"], abs=0.11)
    assert "--init-from" in second["training"]["command"]
    assert "phase 2" in (tmp_path / "two" / "model" / "README.md").read_text()
    with pytest.raises(TrainT5Error, match="has no config.json and tokenizer"):
        run(tmp_path / "bad", data_dir, config(init_from=str(tmp_path)))
    with pytest.raises(TrainT5Error, match="do not fit this run's shape"):
        run(tmp_path / "bad", data_dir, config(init_from=str(folder), spec=dict(TINY, d_ff=16)))
