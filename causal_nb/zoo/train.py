"""Train a bundled code model: ``python -m causal_nb.zoo.train --model code-llama-4l``.

A nanoGPT-style loop over the offline code corpus (Python stdlib + C/C++ headers) with a
byte-level BPE shared by all bundled models. Each batch is half Python, half C++ windows,
each window starting with BOS (TransformerLens prepends BOS to prompts). Training
checkpoints to the cache every few hundred steps and resumes from there when restarted with
the same arguments. The result is a Hugging Face folder (fp16 safetensors, tokenizer,
``card.json`` and a ``README.md`` model card) inside ``causal_nb/zoo/models/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import MODELS_DIR, SPECS, build_config, corpus, quality
from .tokenizer import SPECIAL, save_hf_tokenizer, train_tokenizer

DOMAINS = ("python", "cpp")


def load_tokenizer(vocab_size: int):
    """The shared tokenizer, trained once and cached (shipped copies live in each model folder)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    path = corpus.cache_dir() / f"tokenizer-{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = train_tokenizer(vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def token_streams(tok) -> dict[tuple[str, str], np.ndarray]:
    """uint16 token streams per (domain, split), cached by the tokenizer's fingerprint."""
    fp = hashlib.sha1(tok.to_str().encode()).hexdigest()[:12]
    eos = tok.token_to_id(SPECIAL)
    corpus.cache_dir().mkdir(parents=True, exist_ok=True)
    out = {}
    for d in DOMAINS:
        for split in ("train", "heldout"):
            path = corpus.cache_dir() / f"tokens-{fp}-{d}-{split}.npy"
            if not path.exists():
                arr = corpus.encode_split(tok, d, split == "heldout", eos)
                np.save(path, arr)
            out[d, split] = np.load(path)
    return out


def sample_batch(streams, batch: int, seq: int, bos: int, rng: np.random.Generator) -> torch.Tensor:
    """Half Python, half C++ random windows of seq-1 tokens, each prefixed with BOS."""
    rows = []
    for i in range(batch):
        s = streams[DOMAINS[i % 2], "train"]
        start = rng.integers(0, len(s) - seq)
        rows.append(np.concatenate([[bos], s[start : start + seq - 1]]))
    return torch.as_tensor(np.stack(rows).astype(np.int64))


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def evaluate(model, streams, vocab_size: int, bos: int, seq: int) -> dict:
    """Held-out loss per domain vs unigram, domain classification, induction report."""
    model.eval()
    report = {"heldout_loss": {}, "unigram_loss": {}}
    for d in DOMAINS:
        w = quality.heldout_windows(streams[d, "heldout"], seq, 64, bos)
        report["heldout_loss"][d] = round(quality.mean_loss(model, w), 4)
        report["unigram_loss"][d] = round(quality.unigram_loss(streams[d, "train"], streams[d, "heldout"], vocab_size), 4)
    prefixes = {d: streams[d, "train"][1000:1064] for d in DOMAINS}
    chunks = {d: streams[d, "heldout"] for d in DOMAINS}
    report["domain_classification_accuracy"] = round(quality.domain_classification(model, chunks, prefixes, bos), 4)
    model.set_attn_implementation("eager")
    report["induction"] = quality.induction_report(model, vocab_size, bos)
    model.set_attn_implementation("sdpa")
    return report


def write_unigram(out: Path, streams, vocab_size: int) -> None:
    """Train-split unigram counts per domain (``unigram.json``): the baseline a real LM must beat."""
    counts = {d: np.bincount(streams[d, "train"].astype(np.int64), minlength=vocab_size).tolist() for d in DOMAINS}
    (out / "unigram.json").write_text(json.dumps(counts, separators=(",", ":")))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(SPECS), help="bundled model to train")
    p.add_argument("--tokens", type=float, default=None, help="training tokens (default: the spec's)")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence, BOS included")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=int, default=100, help="warmup steps")
    p.add_argument("--seed", type=int, default=0, help="seed for init and data order")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the bundled zoo)")
    p.add_argument("--eval-every", type=int, default=250, help="steps between progress evaluations")
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue from a trained folder of the same model (fresh optimizer, new schedule)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = SPECS[a.model]
    tokens = int(a.tokens or spec["tokens"])
    steps = tokens // (a.batch * a.seq)
    out = a.out or MODELS_DIR / a.model

    from tokenizers import Tokenizer  # noqa: PLC0415

    # Continuing a model: its own tokenizer, not one retrained here (another corpus could change it).
    tok = Tokenizer.from_file(str(a.init_from / "tokenizer.json")) if a.init_from else load_tokenizer(spec["vocab_size"])
    bos = tok.token_to_id(SPECIAL)
    streams = token_streams(tok)
    torch.manual_seed(a.seed)
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_config(build_config(a.model), attn_implementation="sdpa")
    if getattr(model.get_input_embeddings(), "padding_idx", None) is not None:
        raise RuntimeError("the embedding has a padding row, frozen at zero: BOS (the same id) would never train")
    prior = None
    if a.init_from:
        # Weights were saved in fp16; continue in fp32 from them, keeping the earlier card's record.
        trained = AutoModelForCausalLM.from_pretrained(str(a.init_from), dtype=torch.float32)
        model.load_state_dict(trained.state_dict())
        prior = json.loads((a.init_from / "card.json").read_text())
        del trained
    model = model.to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(a.seed)
    run_key = hashlib.sha1(json.dumps([a.model, tokens, a.batch, a.seq, a.lr, a.warmup, a.seed,
                                       prior["training"]["tokens"] if prior else 0]).encode()).hexdigest()[:10]
    ckpt = corpus.cache_dir() / f"ckpt-{a.model}-{run_key}.pt"
    step, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed from step {step} ({ckpt})", flush=True)
    t0 = time.time() - elapsed
    done_before = prior["training"]["tokens"] if prior else 0
    log = list(prior["progress"]) if prior else []
    while step < steps:
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, a.lr, a.warmup)
        x = sample_batch(streams, a.batch, a.seq, bos, rng).to(a.device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            rate = step * a.batch * a.seq / (time.time() - t0)
            print(f"step {step}/{steps} loss {loss.item():.3f} {rate:.0f} tok/s", flush=True)
        if step % a.eval_every == 0 or step == steps:
            model.cpu()
            rep = quality.induction_report(model.set_attn_implementation("eager") or model, spec["vocab_size"], bos)
            model.set_attn_implementation("sdpa")
            model.to(a.device)
            log.append({"step": step, "tokens": done_before + step * a.batch * a.seq, "gap": rep["gap"],
                        "max_induction": rep["max_induction"], "max_prev_token": rep["max_prev_token"]})
            print("eval", log[-1], flush=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                        "step": step, "elapsed": time.time() - t0}, tmp)
            tmp.replace(ckpt)  # atomic: a kill mid-save leaves the previous checkpoint intact
    train_seconds = time.time() - t0
    model.cpu()
    report = evaluate(model, streams, spec["vocab_size"], bos, a.seq)
    stats = {d: corpus.corpus_stats(d) for d in DOMAINS}
    card = {
        "name": a.model,
        "architecture": spec["arch"],
        "shape": {k: v for k, v in spec.items() if k not in ("arch", "tokens", "description")},
        "description": spec["description"],
        "corpus": stats,
        "corpus_tokens": {f"{d}_{s}": int(len(streams[d, s])) for d in DOMAINS for s in ("train", "heldout")},
        "tokenizer": {"type": "byte-level BPE (tokenizers)", "vocab_size": spec["vocab_size"], "special": SPECIAL},
        "training": {"tokens": done_before + steps * a.batch * a.seq, "steps": steps + (prior["training"]["steps"] if prior else 0),
                     "batch": a.batch, "seq": a.seq, "lr": a.lr, "warmup": a.warmup, "seed": a.seed, "device": a.device,
                     "threads": torch.get_num_threads(),
                     "seconds": round(train_seconds + (prior["training"]["seconds"] if prior else 0), 1),
                     "phases": (prior["training"].get("phases", [prior["training"]]) if prior else [])
                     + [{"tokens": steps * a.batch * a.seq, "lr": a.lr, "warmup": a.warmup,
                         "seconds": round(train_seconds, 1)}]},
        "progress": log,
        **report,
    }
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.half().save_pretrained(str(out), safe_serialization=True)
    save_hf_tokenizer(tok, out, model_max_length=spec["n_ctx"])
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    write_unigram(out, streams, spec["vocab_size"])
    from .card import render_card  # noqa: PLC0415

    (out / "README.md").write_text(render_card(card))
    print(json.dumps(report, indent=1)[:2000])
    print(f"saved {out}")


if __name__ == "__main__":
    main()
