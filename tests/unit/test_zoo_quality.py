import math

import numpy as np
import torch

from causal_nb.zoo import SPECS, build_config, quality
from causal_nb.zoo.build_prompts import _chunks
from causal_nb.zoo.corpus import is_heldout
from causal_nb.zoo.train import lr_at, sample_batch


class CopyModel(torch.nn.Module):
    """Predicts token t+1 = the token after the previous occurrence of t (a perfect induction
    mechanism, written by hand) and attends accordingly: head 0 to the previous token, head 1
    to the induction target."""

    vocab = 1000

    def forward(self, input_ids, output_attentions=False):
        b, n = input_ids.shape
        logits = torch.zeros(b, n, self.vocab)
        att = torch.zeros(b, 2, n, n)
        for i in range(b):
            for q in range(n):
                att[i, 0, q, max(q - 1, 0)] = 1
                prev = [k for k in range(q) if input_ids[i, k] == input_ids[i, q]]
                if prev:
                    logits[i, q, input_ids[i, prev[-1] + 1]] = 50.0
                    att[i, 1, q, prev[-1] + 1] = 1
                else:
                    att[i, 1, q, 0] = 1

        class Out:
            pass

        out = Out()
        out.logits, out.attentions = logits, (att,)
        return out


def test_induction_report_on_a_hand_built_copier():
    rep = quality.induction_report(CopyModel(), vocab_size=1000, bos_id=0, seq_len=8, batch=4)
    assert rep["prev_token_scores"] == [[1.0, 0.0]]
    assert rep["induction_scores"][0][1] > 0.9
    assert rep["loss_second_copy"] < 0.1 < rep["gap"]
    assert math.isclose(rep["uniform_baseline_loss"], math.log(999), rel_tol=1e-4)


def test_unigram_and_windows():
    train = np.array([1, 1, 1, 2], dtype=np.uint16)
    ev = np.array([1, 2], dtype=np.uint16)
    p1, p2 = 4 / 7, 2 / 7  # add-one over vocab 3
    assert math.isclose(quality.unigram_loss(train, ev, 3), -(math.log(p1) + math.log(p2)) / 2, rel_tol=1e-9)
    w = quality.heldout_windows(np.arange(100, dtype=np.uint16), seq=5, n=3, bos_id=0)
    assert w.shape == (3, 5) and (w[:, 0] == 0).all() and w[0, 1:].tolist() == [0, 1, 2, 3]


def test_domain_classification_picks_the_matching_context():
    class ContextModel(torch.nn.Module):
        """Predicts the most frequent token of the context so far: the right prefix helps."""

        def forward(self, input_ids):
            b, n = input_ids.shape
            logits = torch.zeros(b, n, 10)
            for i in range(b):
                for q in range(n):
                    logits[i, q] = torch.bincount(input_ids[i, 1 : q + 1], minlength=10).float() * 2

            class Out:
                pass

            out = Out()
            out.logits = logits
            return out

    chunks = {"a": np.full(200, 3, dtype=np.uint16), "b": np.full(200, 7, dtype=np.uint16)}
    prefixes = {"a": np.full(8, 3, dtype=np.uint16), "b": np.full(8, 7, dtype=np.uint16)}
    acc = quality.domain_classification(ContextModel(), chunks, prefixes, bos_id=0, chunk_len=4, n=3)
    assert acc == 1.0


def test_heldout_split_is_stable_and_rare():
    names = [f"python/mod{i}.py" for i in range(2000)]
    share = sum(map(is_heldout, names)) / len(names)
    assert 0.02 < share < 0.06
    assert [is_heldout(n) for n in names[:50]] == [is_heldout(n) for n in names[:50]]


def test_chunks_skip_comment_blocks_and_respect_sizes():
    text = "\n".join(["# comment"] * 40 + [f"x{i} = {i} * 2 + foo(bar, baz)" for i in range(60)])
    chunks = list(_chunks(text, 100, 200, skip_lines=0, stride=3))
    assert chunks and all(100 <= len(c) <= 200 for _, c in chunks)
    for _, c in chunks:
        lines = c.splitlines()
        assert sum(ln.startswith("#") for ln in lines) <= 0.4 * len(lines)
    assert chunks[0][0] > 30  # the all-comment head of the file gives no chunk


def test_batches_alternate_domains_and_start_with_bos():
    streams = {("python", "train"): np.full(1000, 5, dtype=np.uint16), ("cpp", "train"): np.full(1000, 9, dtype=np.uint16)}
    x = sample_batch(streams, 4, 16, bos=0, rng=np.random.default_rng(0))
    assert x.shape == (4, 16) and (x[:, 0] == 0).all()
    assert (x[0::2, 1:] == 5).all() and (x[1::2, 1:] == 9).all()


def test_lr_schedule_and_configs():
    assert lr_at(0, 1000, 1.0, 100) == 0.01 and lr_at(99, 1000, 1.0, 100) == 1.0
    assert math.isclose(lr_at(1000, 1000, 1.0, 100), 0.1)
    for name, spec in SPECS.items():
        cfg = build_config(name)
        assert cfg.vocab_size == spec["vocab_size"]
    assert build_config("code-llama-4l").num_key_value_heads < build_config("code-llama-4l").num_attention_heads
