"""causal_nb: causal analysis and structural pruning of transformer language models.

The package does the work; the notebooks in ``notebooks/`` tell the story and call it.
Subpackages by layer, imports pointing down only (``tests/unit/test_layout.py`` checks it):
``core`` (env, io, checks) < ``models``, ``data``, ``zoo`` (loading, the Hugging Face copy,
prompt sets, the shipped models) < ``engine`` (units, metrics, replay, patching, attribution)
< ``analyses`` (scoring, ACDC, reverse intervention, circuits) < ``pruning`` < ``evaluation``
(quality, stats, sweeps, findings) < ``notebook`` (plots, views, widgets, runner, report) < this
package's root and its command line.

API vocabulary (one meaning per name, everywhere):

- Tables: ``patch``/``ablate`` give ``value``, the mean raw metric over prompts (``patch``
  adds ``normalized``: 0 = corrupted run, 1 = clean run); ``score`` gives ``score``, the
  importance (higher = more important). ``attrs["method"]`` and ``attrs["unit"]`` say what
  made a table. Consumers of importance (``prune``, ``select_units``, ``stats`` rank
  agreement, ``widgets.SparsityExplorer``) take ``score`` tables of their unit kinds only and
  name the call that makes one when handed a patch/ablate/ACDC table or another model's scores.
- ``reference=``: the prompts a mean (or resample) ablation averages over (``ablate``,
  ``acdc``, ``prune``/``prune_units`` with ``fill="mean"``, ``widgets.HeadExplorer``). The
  unpruned model ``evaluate`` compares with is ``full_model=``. (In ``stats``, ``reference``
  is the name of the method the others are tested against: a string, never prompts.)
- ``progress=``: ``None`` follows ``progress_enabled()`` (``TQDM_DISABLE``); True/False force it.
- ``batch_size=``: a memory/speed knob that never changes results: interventions stacked per
  forward in ``patch``/``ablate``/``score``, prompts per forward in ``prompt_losses``.
- ``n_tokens``: tokens per prompt, BOS included (at least 2). ``positions``: token positions
  0..n_tokens-1 whose activations are edited; ``scored_positions``: 0..n_tokens-2, whose
  next-token predictions the metric reads; ``layers``: 0..n_layers-1.
- ``sparsity``: the share of units removed, in [0, 1) (not a percent).
- ``metric``: a name in ``METRICS`` or a callable ``(logits, ScoredBatch) -> Tensor[batch]``.
- ``task=`` (``patch``/``ablate``/``score``/``prune``/``evaluate``): what the inputs are and what the metric reads
  (``engine.tasks``). None is the decoder LM (``LMTask``); ``SentencePairTask(pairs)`` reads a
  sentence encoder's pooled embeddings and scores each pair's cosine (``"cosine"``), one value
  per pair where the LM has one per prompt; ``Seq2SeqTask(sources, targets)`` reads an
  encoder-decoder (T5) through its teacher-forced target log-probs (``"target_logprob"``,
  ``"kl"``, ``"top1"``), with units per stack (``"enc_head"``, ``"dec_head"``,
  ``"cross_head"``, ``"enc_neuron"``, ``"dec_neuron"``...; ``patch(t5, corrupted=sources,
  task=...)``; ``evaluate`` adds BLEU of greedy generations);
  ``ImageClassificationTask(images, labels)`` reads a ViT's
  class logits on the CLS token (``"label_logprob"``, ``"kl"``, ``"accuracy"``, ``"top1"``), one
  value per image (``patch`` too: ``patch(vit, corrupted=images, task=...)``).
- ``answers=`` (``patch``/``ablate``): per-prompt answer token ids (correct first); the metric
  then reads each prompt's last real token (``"answer_logit_diff"``: correct minus wrong).
- Keywords: a misspelled one is a ``TypeError`` naming the nearest valid one; an option the
  chosen method (or ablation kind) would ignore is a ``ValueError`` naming the methods that
  use it. ``n_tokens``, ``seed`` and ``progress`` are run settings every ``score`` method takes.
"""

from .analyses import induction, ioi
from .analyses.acdc import acdc
from .analyses.induction import induction_ablation, induction_losses, induction_scores, repeated_tokens
from .analyses.ioi import IOIPrompts, head_roles, ioi_head_patching, ioi_logit_diff, ioi_prompts, patching_summary
from .analyses.reverse import TokenSet, TokenSetError, reverse_intervention, token_set_path
from .analyses.scoring import METHODS, load_scores, save_scores, score, score_methods, scores_path
from .core.env import DeviceError, progress_enabled, resolve_device, setup
from .core.io import load_json, save_json
from .core.version import __version__ as __version__  # re-exported: the one place the version is written
from .data.images import FASHION_MNIST_CLASSES, ImageDataError, ImageSet, load_fashion_mnist
from .data.prompts import PromptSet, PromptSetError, TokenBatch, available_domains, load_prompts, prompt_set_summary
from .data.sentences import (
    SentenceDataError,
    balanced_pairs,
    load_jcola,
    load_jsts,
    load_marc_ja,
    load_sentence_labels,
    load_sentence_pairs,
)
from .data.translation import TranslationDataError, load_translation_pairs
from .engine.metrics import METRICS, ScoredBatch, answer_token_diff, logit_diff, logprob_mass
from .engine.patching import ablate, patch
from .engine.seq2seq import Seq2SeqTask
from .engine.tasks import LMTask, PairBatch, SentencePairTask
from .engine.vision import ImageClassificationTask
from .evaluation import findings, stats
from .evaluation.acdc_sweep import acdc_sweep
from .evaluation.duplication_prune import cluster_table, duplication_prune, layer_impact
from .evaluation.encoder_quality import encoder_sweep
from .evaluation.encoders import probe_eval, similarity_eval
from .evaluation.harness import HarnessTaskError, lm_eval, shipped_tasks
from .evaluation.harness_stats import harness_ci, harness_items, harness_paired_test
from .evaluation.quality import FullModelRun, domain_losses, evaluate, full_model_run, prompt_losses, token_set_mass
from .evaluation.sweep import SweepConfig, load_results, sweep
from .evaluation.vit_eval import (
    VitEvaluation,
    evaluate_vit_models,
    pareto_front,
    plot_vit_evaluation,
    recommend_model,
    vit_report,
    write_vit_evaluation,
)
from .evaluation.vit_pipeline import optimize_vit, optimized_name
from .evaluation.vit_run import run_vit_pipeline
from .models.embeddings import sentence_embeddings
from .models.loading import ModelNotAvailableError, list_models, load_model, model_card
from .notebook import views
from .notebook.report import save_findings
from .pruning.compose_measure import compare_arms as compose_compare
from .pruning.compose_measure import equal_quality
from .pruning.compose_scheme import (
    ComposeError,
    load_configurations,
    load_scheme,
    make_scheme,
    save_configurations,
    save_scheme,
)
from .pruning.compose_stages import build as compose_build
from .pruning.compose_stages import configure as compose_config
from .pruning.compose_stages import finetune_configuration, finetune_variants, prune_variants
from .pruning.duplication import DuplicationError
from .pruning.structure import prune, prune_units, save_pruned
from .zoo.train_vit import FinetuneConfig, finetune_vit

# The plots and widgets load on first use (PEP 562): they pull in plotly and ipywidgets, which a
# headless worker (a Ray or SLURM job, a GPU box without Jupyter) neither needs nor may have.
_LAZY = {"plotting": ("notebook.plotting", None), "widgets": ("notebook.widgets", None),
         **{name: ("notebook.pruning_plots", name) for name in (
             "head_distance_heatmap", "heads_removed_by_layer", "layer_impact_bars", "sparsity_curves")}}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    module, attr = _LAZY[name]
    value = importlib.import_module(f".{module}", __name__)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ComposeError",
    "DeviceError",
    "compose_build",
    "compose_compare",
    "compose_config",
    "equal_quality",
    "finetune_configuration",
    "finetune_variants",
    "load_configurations",
    "load_scheme",
    "make_scheme",
    "prune_variants",
    "save_configurations",
    "save_scheme",
    "FASHION_MNIST_CLASSES",
    "DuplicationError",
    "FinetuneConfig",
    "FullModelRun",
    "HarnessTaskError",
    "IOIPrompts",
    "ImageClassificationTask",
    "ImageDataError",
    "ImageSet",
    "LMTask",
    "METHODS",
    "METRICS",
    "ModelNotAvailableError",
    "PairBatch",
    "PromptSet",
    "PromptSetError",
    "ScoredBatch",
    "SentenceDataError",
    "TranslationDataError",
    "SentencePairTask",
    "Seq2SeqTask",
    "SweepConfig",
    "TokenBatch",
    "TokenSet",
    "TokenSetError",
    "VitEvaluation",
    "ablate",
    "acdc",
    "acdc_sweep",
    "answer_token_diff",
    "available_domains",
    "balanced_pairs",
    "cluster_table",
    "domain_losses",
    "duplication_prune",
    "harness_ci",
    "harness_items",
    "harness_paired_test",
    "head_distance_heatmap",
    "heads_removed_by_layer",
    "layer_impact",
    "layer_impact_bars",
    "encoder_sweep",
    "evaluate",
    "evaluate_vit_models",
    "finetune_vit",
    "full_model_run",
    "head_roles",
    "induction",
    "induction_ablation",
    "induction_losses",
    "induction_scores",
    "ioi",
    "ioi_head_patching",
    "ioi_logit_diff",
    "ioi_prompts",
    "list_models",
    "lm_eval",
    "load_fashion_mnist",
    "load_jcola",
    "load_json",
    "load_jsts",
    "load_marc_ja",
    "load_results",
    "load_scores",
    "load_model",
    "load_prompts",
    "load_sentence_labels",
    "load_sentence_pairs",
    "load_translation_pairs",
    "logit_diff",
    "logprob_mass",
    "model_card",
    "optimize_vit",
    "optimized_name",
    "pareto_front",
    "plot_vit_evaluation",
    "recommend_model",
    "patch",
    "patching_summary",
    "findings",
    "plotting",
    "progress_enabled",
    "prompt_losses",
    "prompt_set_summary",
    "prune",
    "probe_eval",
    "prune_units",
    "shipped_tasks",
    "repeated_tokens",
    "resolve_device",
    "reverse_intervention",
    "run_vit_pipeline",
    "save_findings",
    "save_json",
    "save_pruned",
    "save_scores",
    "score",
    "score_methods",
    "scores_path",
    "sentence_embeddings",
    "sparsity_curves",
    "setup",
    "similarity_eval",
    "stats",
    "sweep",
    "token_set_mass",
    "token_set_path",
    "views",
    "widgets",
    "vit_report",
    "write_vit_evaluation",
]
