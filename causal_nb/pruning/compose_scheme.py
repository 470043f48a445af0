"""Composable pruning, step 1: a family of pruning configurations and the scheme of distinct variants.

A *configuration* gives every prunable module of a decoder LM a pruning rate: each attention
module (head-wise, structured) and each MLP linear layer (weight-wise, unstructured). A family
of N configurations usually shares modules (the same layer pruned by the same criterion at the
same rate), so the *scheme* lists each distinct ``(module, criterion, rate)`` variant once with
the configurations that use it: each variant is then pruned and fine-tuned once (the
composability idea of Wootz, Guan et al., PLDI 2019). A rate of 0 leaves the module dense (no
variant). Both files are JSON; the configuration file may be edited by hand (per-module rates),
the scheme may not: it carries a fingerprint of its content and of the configuration file it
came from, and a scheme that does not match its fingerprint is refused with the command that
regenerates it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..core.io import atomic_write_text

__all__ = ["ComposeError", "CRITERIA", "config_fingerprint", "load_configurations", "load_scheme",
           "make_configurations", "make_scheme", "save_configurations", "save_scheme"]

CONF_KIND = "causal_nb.compose.configurations"
SCHEME_KIND = "causal_nb.compose.scheme"
#: Pruning criteria: ``l1`` (weight magnitude: L1-unstructured for linears, head-wise L1 of the
#: Q/K/V rows for attention) and ``causal`` (heads ranked by the kit's ``score``, attention only).
CRITERIA = ("l1", "causal")
KINDS = ("attention", "linear")


class ComposeError(ValueError):
    """A configuration, scheme or stage of the composable-pruning pipeline that cannot be used;
    the message names the fix."""


def check_rate(rate, where: str) -> float:
    """A pruning rate in [0, 1) (a float; bools and strings refused)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= float(rate) < 1:
        raise ComposeError(f"{where}: rate {rate!r} must be a number in [0, 1) (0 leaves the module dense)")
    return float(rate)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def make_configurations(model: str, modules: dict[str, list[str]], attention: list, linear: list,
                        n: int | None = None, criterion: str = "l1", base_fingerprint: str = "") -> dict:
    """N configurations: configuration i prunes every attention module at ``attention[i]`` and
    every MLP linear at ``linear[i]``.

    Args:
        model: the base model's name or folder (as ``load_model`` takes it).
        modules: ``{"attention": [names], "linear": [names]}`` of the base model
            (``compose_modules.prunable_modules``).
        attention, linear: rates in [0, 1), lists of equal length N.
        n: the number of configurations (checked against the lists' length when given).
        criterion: attention's criterion, one of ``CRITERIA``; linears are always ``l1``.
        base_fingerprint: the base model's weight digest (``compose_modules.weights_fingerprint``).
    """
    attention, linear = list(attention), list(linear)
    if len(attention) != len(linear):
        raise ComposeError(f"--attention has {len(attention)} rates and --linear {len(linear)}: give one of each per "
                           "configuration (lists of equal length)")
    if n is not None and n != len(attention):
        raise ComposeError(f"-n {n} but the rate lists give {len(attention)} configurations; make them agree")
    if not attention:
        raise ComposeError("no configurations: give at least one rate to --attention and to --linear")
    if criterion not in CRITERIA:
        raise ComposeError(f"criterion {criterion!r} is not one of {CRITERIA}")
    confs = []
    for i, (ra, rl) in enumerate(zip(attention, linear), start=1):
        ra, rl = check_rate(ra, f"configuration {i} attention"), check_rate(rl, f"configuration {i} linear")
        mods = {m: {"kind": "attention", "criterion": criterion, "rate": ra} for m in modules["attention"]}
        mods.update({m: {"kind": "linear", "criterion": "l1", "rate": rl} for m in modules["linear"]})
        confs.append({"id": i, "attention": ra, "linear": rl, "modules": mods})
    return {"kind": CONF_KIND, "model": str(model), "base_fingerprint": base_fingerprint,
            "modules": {k: list(v) for k, v in modules.items()}, "configurations": confs}


def check_configurations(conf: dict, where: str = "configuration file") -> dict:
    """A configuration dict (possibly edited by hand) checked: kinds, criteria, rates, module names."""
    if not isinstance(conf, dict) or conf.get("kind") != CONF_KIND:
        raise ComposeError(f"{where} is not a compose configuration file (write one with `python -m causal_nb compose "
                           "config -m MODEL --attention ... --linear ... -o conf.json`)")
    known = {m: k for k, ms in conf["modules"].items() for m in ms}
    for c in conf["configurations"]:
        for m, spec in c["modules"].items():
            if m not in known:
                raise ComposeError(f"{where}, configuration {c['id']}: module {m!r} is not a prunable module of "
                                   f"{conf['model']} (its modules: {sorted(known)[:6]}...)")
            if spec.get("kind") != known[m]:
                raise ComposeError(f"{where}, configuration {c['id']}: {m} is an {known[m]} module, not "
                                   f"{spec.get('kind')!r}")
            crit = spec.get("criterion")
            if crit not in CRITERIA or (known[m] == "linear" and crit != "l1"):
                raise ComposeError(f"{where}, configuration {c['id']}, {m}: criterion {crit!r} is not usable here "
                                   f"(attention: {CRITERIA}; linear: 'l1')")
            check_rate(spec.get("rate"), f"{where}, configuration {c['id']}, {m}")
    ids = [c["id"] for c in conf["configurations"]]
    if ids != list(range(1, len(ids) + 1)):
        raise ComposeError(f"{where}: configuration ids {ids} must be 1..{len(ids)} in order")
    return conf


def config_fingerprint(conf: dict) -> str:
    """Digest of a configuration file's content (key order and formatting do not matter)."""
    return _digest(conf)


def variant_key(module: str, criterion: str, rate: float) -> str:
    """A variant's file stem: ``<module>__<criterion>__<rate>``."""
    return f"{module}__{criterion}__{rate:.4f}"


def make_scheme(conf: dict) -> dict:
    """The distinct ``(module, criterion, rate)`` variants of a family, with the configurations using each.

    Returns:
        ``{"variants": [{"key", "module", "kind", "criterion", "rate", "configurations"}],
        "configurations": {id: {module: key}}, ...}``, fingerprinted (``load_scheme`` checks it).
        Modules at rate 0 stay dense and have no variant.
    """
    conf = check_configurations(conf)
    variants: dict[str, dict] = {}
    uses: dict[str, dict[str, str]] = {}
    for c in conf["configurations"]:
        uses[str(c["id"])] = {}
        for m, spec in c["modules"].items():
            rate = float(spec["rate"])
            if rate == 0:
                continue
            key = variant_key(m, spec["criterion"], rate)
            v = variants.setdefault(key, {"key": key, "module": m, "kind": spec["kind"], "criterion": spec["criterion"],
                                          "rate": rate, "configurations": []})
            v["configurations"].append(c["id"])
            uses[str(c["id"])][m] = key
    scheme = {"kind": SCHEME_KIND, "model": conf["model"], "base_fingerprint": conf["base_fingerprint"],
              "config_fingerprint": config_fingerprint(conf), "variants": sorted(variants.values(), key=lambda v: v["key"]),
              "configurations": uses}
    scheme["fingerprint"] = _digest(scheme)
    return scheme


def save_configurations(conf: dict, path) -> Path:
    return atomic_write_text(path, json.dumps(conf, indent=1) + "\n")


def load_configurations(path) -> dict:
    try:
        conf = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ComposeError(f"cannot read the configuration file {path}: {e}") from None
    return check_configurations(conf, str(path))


def save_scheme(scheme: dict, path) -> Path:
    return atomic_write_text(path, json.dumps(scheme, indent=1) + "\n")


def load_scheme(path, conf: dict | None = None) -> dict:
    """A scheme file, refused unless its content matches its fingerprint (and, given ``conf``,
    unless it was made from that configuration file)."""
    try:
        scheme = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ComposeError(f"cannot read the scheme {path}: {e}") from None
    fix = f"regenerate it with `python -m causal_nb compose scheme -i conf.json -o {path}`"
    if not isinstance(scheme, dict) or scheme.get("kind") != SCHEME_KIND:
        raise ComposeError(f"{path} is not a compose scheme; {fix}")
    body = {k: v for k, v in scheme.items() if k != "fingerprint"}
    if scheme.get("fingerprint") != _digest(body):
        raise ComposeError(f"{path} does not match its fingerprint: it was edited by hand (edit the configuration "
                           f"file instead and {fix})")
    if conf is not None and scheme["config_fingerprint"] != config_fingerprint(conf):
        raise ComposeError(f"{path} was made from another configuration file; {fix}")
    return scheme
