"""causal_nb: causal analysis and structural pruning of transformer language models.

The package does the work; the notebooks in ``notebooks/`` tell the story and call it.
Layers, imports pointing one way: data (zoo, loading, prompts, io) <- engine (units,
metrics, engine) <- analysis (patching, attribution, reverse, scoring, pruning, evaluation,
sweep, stats) <- face (plotting, runner, CLI).
"""

from . import plotting, stats, views, widgets
from .acdc import acdc, acdc_sweep
from .env import progress_enabled, setup
from .evaluation import domain_losses, evaluate, prompt_losses, token_set_mass
from .io import load_json, save_json
from .loading import ModelNotAvailableError, list_models, load_model, model_card
from .metrics import METRICS, ScoredBatch, logit_diff, logprob_mass
from .patching import ablate, patch
from .prompts import PromptSet, PromptSetError, TokenBatch, available_domains, load_prompts, prompt_set_summary
from .pruning import prune, prune_units, save_pruned
from .reverse import TokenSet, TokenSetError, reverse_intervention, token_set_path
from .scoring import METHODS, score
from .sweep import SweepConfig, sweep

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "METRICS",
    "ModelNotAvailableError",
    "PromptSet",
    "PromptSetError",
    "ScoredBatch",
    "SweepConfig",
    "TokenBatch",
    "TokenSet",
    "TokenSetError",
    "ablate",
    "acdc",
    "acdc_sweep",
    "available_domains",
    "domain_losses",
    "evaluate",
    "list_models",
    "load_json",
    "load_model",
    "load_prompts",
    "logit_diff",
    "logprob_mass",
    "model_card",
    "patch",
    "plotting",
    "progress_enabled",
    "prompt_losses",
    "prompt_set_summary",
    "prune",
    "prune_units",
    "reverse_intervention",
    "save_json",
    "save_pruned",
    "score",
    "setup",
    "stats",
    "sweep",
    "token_set_mass",
    "token_set_path",
    "views",
    "widgets",
]
