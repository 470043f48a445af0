"""``python -m causal_nb compose ...``: the composable-pruning pipeline from the command line.

::

    compose config -m code-gpt2-2l --attention 0.25 0.5 --linear 0.3 0.3 -n 2 -o conf.json
    compose scheme -i conf.json -o conf_prune.json
    compose prune -s conf_prune.json                 # every distinct variant, once
    compose finetune-modules -s conf_prune.json      # module level, each variant once (resumable)
    compose build -s conf_prune.json -n 1 -o c1/     # configuration 1 from the fine-tuned modules
    compose finetune-model -s conf_prune.json -n 1   # model level
    compose finetune-baseline -s conf_prune.json -n 1  # the control: pruned directly, same budget

The work folder (``-d``) defaults to ``<scheme>_work`` beside the scheme file. The same commands run
on a T5 (``-m t5-tatoeba-en-de``: encoder self-, decoder self- and cross-attention, the FF
linears; translation pairs and the seq2seq loss, ``compose_t5``).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_compose_parser", "run_compose"]


def add_compose_parser(sub) -> None:
    """Add the ``compose`` command and its stages to an argparse subparsers object."""
    c = sub.add_parser("compose", help="composable pruning: prune and fine-tune each shared module once")
    st = c.add_subparsers(dest="stage", required=True)
    cf = st.add_parser("config", help="write N pruning configurations (rates editable per module in the JSON)")
    cf.add_argument("-m", "--model", required=True, help="bundled name or Hugging Face folder")
    cf.add_argument("--attention", type=float, nargs="+", required=True, help="attention rates, one per configuration")
    cf.add_argument("--linear", type=float, nargs="+", required=True,
                    help="MLP (T5: FF wi/wo) linear rates, one per configuration")
    cf.add_argument("-n", type=int, default=None, help="number of configurations (checked against the lists)")
    cf.add_argument("--criterion", default="l1", help="attention criterion: l1 (default) or causal (kit scores)")
    cf.add_argument("-o", "--out", required=True, help="configuration file to write")
    sc = st.add_parser("scheme", help="the distinct (module, criterion, rate) variants of a configuration file")
    sc.add_argument("-i", "--input", required=True, help="configuration file")
    sc.add_argument("-o", "--out", required=True, help="scheme file to write")
    for name, helptext in (("prune", "prune every variant of the scheme once"),
                           ("finetune-modules", "module-level fine-tuning of every variant (resumable)"),
                           ("build", "compose configuration K from the fine-tuned variants"),
                           ("finetune-model", "compose configuration K and fine-tune it end to end"),
                           ("finetune-baseline", "prune configuration K directly and fine-tune it end to end")):
        p = st.add_parser(name, help=helptext)
        p.add_argument("-s", "--scheme", required=True, help="scheme file (compose scheme)")
        p.add_argument("-i", "--config", default=None, help="configuration file to check the scheme against")
        p.add_argument("-d", "--dir", default=None, help="work folder (default <scheme>_work)")
        p.add_argument("--seed", type=int, default=0)
        if name != "prune":
            p.add_argument("--steps", type=int, default=100, help="training steps")
            p.add_argument("--lr", type=float, default=None, help="learning rate (module 1e-3, model 5e-5)")
        if name == "finetune-modules":
            p.add_argument("--windows", type=int, default=32, help="training windows whose inputs are captured")
            p.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess",
                           help="where the variants train: this process, or Ray workers (independent jobs)")
            p.add_argument("--workers", type=int, default=None, help="ray: variants in flight at once")
            p.add_argument("--address", default=None, help="ray: cluster address (default: a local cluster)")
        if name in ("build", "finetune-model", "finetune-baseline"):
            p.add_argument("-n", type=int, required=True, help="configuration number (1..N)")
            p.add_argument("-o", "--out", default=None, help="save the model as a Hugging Face folder")
        if name in ("finetune-model", "finetune-baseline"):
            p.add_argument("--batch", type=int, default=8, help="windows per step")
            p.add_argument("--kl", type=float, default=0.0, help="weight of the KL to the dense model (0: LM loss only)")
            p.add_argument("--eval-every", type=int, default=0, help="steps between held-out evaluations")
            p.add_argument("--target", type=float, default=None,
                           help="stop at the first evaluation with held-out loss at or below this (needs --eval-every)")


def run_compose(a) -> int:
    """Run a parsed ``compose`` command; prints what it wrote."""
    from ..core.executors import make_executor  # noqa: PLC0415
    from .compose_scheme import load_configurations, load_scheme, make_scheme, save_configurations, save_scheme  # noqa: PLC0415
    from .compose_stages import build, configure, finetune_configuration, finetune_variants, prune_variants  # noqa: PLC0415

    if a.stage == "config":
        conf = configure(a.model, a.attention, a.linear, a.n, a.criterion)
        print(f"{len(conf['configurations'])} configurations -> {save_configurations(conf, a.out)}")
        return 0
    if a.stage == "scheme":
        scheme = make_scheme(load_configurations(a.input))
        shared = sum(len(v["configurations"]) > 1 for v in scheme["variants"])
        print(f"{len(scheme['variants'])} distinct variants ({shared} shared) -> {save_scheme(scheme, a.out)}")
        return 0
    scheme = load_scheme(a.scheme, load_configurations(a.config) if a.config else None)
    work = Path(a.dir) if a.dir else Path(a.scheme).with_name(Path(a.scheme).stem + "_work")
    if a.stage == "prune":
        print(f"{len(prune_variants(scheme, work, a.seed))} variants in {work / 'pruned'}")
    elif a.stage == "finetune-modules":
        ray = {k: v for k, v in (("workers", a.workers), ("address", a.address)) if v is not None}
        if ray and a.executor != "ray":
            raise ValueError("--workers/--address are options of --executor ray")
        executor = make_executor("ray", **ray) if a.executor == "ray" else None
        done = finetune_variants(scheme, work, a.steps, a.lr or 1e-3, a.windows, a.seed, executor)
        skipped = sum(v["skipped"] for v in done.values())
        print(f"{len(done) - skipped} variants fine-tuned, {skipped} already done -> {work / 'finetuned'}")
    elif a.stage == "build":
        _, _, loss = build(scheme, work, a.n, a.out)
        print(f"configuration {a.n}: held-out loss {loss:.4f}" + (f" -> {a.out}" if a.out else ""))
    else:
        arm = "composed" if a.stage == "finetune-model" else "baseline"
        r = finetune_configuration(scheme, work, a.n, arm, a.steps, a.batch, a.lr or 5e-5, a.kl, a.seed,
                                   a.eval_every, a.out, a.target)
        print(json.dumps(r, indent=1))
    return 0
