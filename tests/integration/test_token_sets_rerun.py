"""The committed token sets are what ``reverse_intervention`` gives: rerun with the settings and
prompts recorded in the file's own metadata (code-llama-4l, python vs cpp: 16 train prompts
per domain at 64 tokens, the settings the file was built with; about a second of compute)."""

import json
from pathlib import Path

import numpy as np
import pytest

import causal_nb as cnb

MODEL = "code-llama-4l"


@pytest.fixture(scope="module")
def llama(bundled):
    name, model = bundled
    if name != MODEL:
        pytest.skip(f"the rerun is checked on {MODEL}")
    return model


@pytest.mark.parametrize(("a", "b"), [("python", "cpp"), ("cpp", "python")])
def test_committed_token_set_is_reproduced(llama, a, b):
    path = cnb.token_set_path(Path(__file__).resolve().parents[2] / "token_sets", MODEL, a, b)
    saved = json.loads(path.read_text())
    p = saved["params"]
    n_a, n_b = p["n_prompts"]
    pa, pb = cnb.load_prompts(a, split="train", n=n_a), cnb.load_prompts(b, split="train", n=n_b)
    # the same prompts as the file was built from (else the comparison is meaningless)
    assert {a: pa.sha256, b: pb.sha256} == saved["prompt_hashes"]
    ts = cnb.reverse_intervention(llama, pa, pb, top_k=p["top_k"], site=p["site"], mode=p["mode"],
                                  measure=p["measure"], layers=p["layers"], n_tokens=p["n_tokens"],
                                  model_name=MODEL, progress=False)
    assert ts.tokenizer == saved["tokenizer"] and list(ts.domains) == saved["domains"]
    # the file rounds scores to 6 decimals; another CPU's float sums move the 6th
    assert np.allclose(ts.scores, saved["scores"], atol=1e-4)
    # same tokens in the same order, except where two saved scores are closer than that tolerance
    close = {i for i in range(len(ts.ids) - 1) if abs(saved["scores"][i] - saved["scores"][i + 1]) < 1e-4}
    for i, (got, want) in enumerate(zip(ts.ids, saved["ids"])):
        assert got == want or i in close or i - 1 in close, (i, ts.tokens[i], saved["tokens"][i])
    assert set(ts.ids) == set(saved["ids"]) or len(close) > 0
    assert ts.tokens == [llama.tokenizer.decode([i]) for i in ts.ids]
    # per-layer ranks of the top tokens: equal, up to ties among a 4096-token vocabulary
    diff = np.abs(np.asarray(ts.per_layer_ranks) - np.asarray(saved["per_layer_ranks"]))
    assert np.median(diff) == 0 and diff.max() <= 3, diff.max()
