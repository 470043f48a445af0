import pytest

import causal_nb as cnb
from causal_nb.zoo import SPECS

BUNDLED = list(SPECS)


@pytest.fixture(scope="session", params=BUNDLED)
def bundled(request):
    """Each bundled model, loaded once per session (read-only: tests add no persistent hooks)."""
    if request.param not in cnb.list_models():
        pytest.fail(f"bundled model {request.param} is missing from causal_nb/zoo/models")
    return request.param, cnb.load_model(request.param, device="cpu")


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M (converted once into the kit's cache), loaded once per session, read-only."""
    from causal_nb.zoo.pretrained import available_pretrained, pretrained_card  # noqa: PLC0415

    if "smollm2-135m" not in available_pretrained():
        pytest.fail(f"{pretrained_card('smollm2-135m')['install']} is part of the set-up (requirements-models.txt)")
    return cnb.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from its pip package (used in place), loaded once per session, read-only."""
    from causal_nb.zoo.pretrained import available_pretrained, pretrained_card  # noqa: PLC0415

    if "all-minilm-l6-v2" not in available_pretrained():
        pytest.fail(f"{pretrained_card('all-minilm-l6-v2')['install']} is part of the set-up (requirements-models.txt)")
    return cnb.load_model("all-minilm-l6-v2", device="cpu")
