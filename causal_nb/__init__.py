"""causal_nb: causal analysis and structural pruning of transformer language models.

The package does the work; the notebooks in ``notebooks/`` tell the story and call it.
Layers, imports pointing one way: data (zoo, loading, prompts) <- engine <- analysis <- face.
"""

__version__ = "0.1.0"

from . import (
    plotting,  # noqa: E402
    stats,  # noqa: E402
)
from .env import progress_enabled, setup  # noqa: E402
from .evaluation import domain_losses, evaluate, prompt_losses, token_set_mass  # noqa: E402
from .io import load_json, save_json  # noqa: E402
from .loading import ModelNotAvailableError, list_models, load_model, model_card  # noqa: E402
from .metrics import METRICS, ScoredBatch, logit_diff, logprob_mass  # noqa: E402
from .patching import ablate, patch  # noqa: E402
from .prompts import (  # noqa: E402
    PromptSet,
    PromptSetError,
    TokenBatch,
    available_domains,
    load_prompts,
    prompt_set_summary,
)
from .pruning import prune, save_pruned  # noqa: E402
from .sweep import SweepConfig, sweep  # noqa: E402
from .reverse import TokenSet, TokenSetError, reverse_intervention, token_set_path  # noqa: E402
from .scoring import METHODS, score  # noqa: E402

__all__ = [
    "METRICS",
    "ScoredBatch",
    "TokenSet",
    "TokenSetError",
    "ablate",
    "logit_diff",
    "logprob_mass",
    "patch",
    "reverse_intervention",
    "score",
    "prune",
    "save_pruned",
    "sweep",
    "SweepConfig",
    "stats",
    "METHODS",
    "token_set_path",
    "ModelNotAvailableError",
    "PromptSet",
    "PromptSetError",
    "TokenBatch",
    "__version__",
    "available_domains",
    "domain_losses",
    "evaluate",
    "load_json",
    "list_models",
    "load_model",
    "load_prompts",
    "model_card",
    "prompt_losses",
    "prompt_set_summary",
    "save_json",
    "progress_enabled",
    "plotting",
    "setup",
    "token_set_mass",
]
