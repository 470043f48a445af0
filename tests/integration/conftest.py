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
