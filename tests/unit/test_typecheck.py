"""The jaxtyping shape annotations are checked (beartype) on a representative call path.

The whole suite runs under the same import hook with CAUSAL_NB_TYPECHECK=1 (tests/conftest.py).
Here a fresh interpreter installs the hook before importing causal_nb, runs patching, ablation,
attribution, EAP-IG and reverse intervention on a tiny model, and proves the hook is active: a
metric helper called with mismatched shapes must raise jaxtyping's TypeCheckError.
"""

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys
from jaxtyping import install_import_hook
install_import_hook("causal_nb", "beartype.beartype")
import torch, jaxtyping
import causal_nb as cnb
from causal_nb.engine.metrics import masked_mean
from causal_nb.zoo.tiny import make_tiny_model

try:
    masked_mean(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))  # 'scored' is 3 and 4
except jaxtyping.TypeCheckError as e:
    print("REJECTED", type(e).__name__)
else:
    sys.exit("the import hook is not active: a mis-shaped call passed")
C = ["def add(a, b): return a + b and more", "class Point: def __init__(self)"]
X = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)"]
for arch in ("gpt2", "llama"):
    m = cnb.load_model(make_tiny_model(sys.argv[1] + "/" + arch, arch, n_kv_heads=2), device="cpu")
    cnb.patch(m, C, X, unit="head", n_tokens=8, progress=False)
    cnb.patch(m, C, X, unit="neuron", layers=[1], n_tokens=8, batch_size=4, progress=False)
    cnb.ablate(m, C, unit="mlp", kind="mean", n_tokens=8, progress=False)
    cnb.patch(m, C, X, unit="head", method="attribution", n_tokens=8, progress=False)
    cnb.score(m, C, "eap-ig", unit="head", corrupted=X, steps=2, n_tokens=8)
    cnb.score(m, C, "activation", unit="neuron", n_tokens=8)
    cnb.reverse_intervention(m, C, X, top_k=3, n_tokens=8, progress=False)
    cnb.evaluate(m, C, full_model=m, n_tokens=8, latency_batches=())
print("PATH OK")
"""


def test_annotations_hold_on_a_representative_path_and_the_hook_is_active(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=900,
                         cwd=Path(__file__).resolve().parents[2], env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin",
                                                                      "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    assert "REJECTED TypeCheckError" in out.stdout and "PATH OK" in out.stdout
