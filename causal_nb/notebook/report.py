"""The run report: ``report.md`` and ``report.html`` in a run folder, findings first.

``write_report(run)`` (called by ``python -m causal_nb run`` after the series, or by hand on
any run folder) writes, in this order:

1. Findings: short statements with their numbers, each linked to the executed notebook it
   came from, with its figures beside it (the PNG inline, the interactive HTML linked and
   folded in an iframe). The built-in findings are computed from the files notebooks 00-03
   write (``causal_nb.evaluation.findings``); any notebook can add its own (below).
2. What is missing: notebooks of the series that did not finish (failed, interrupted, not
   run) and the findings they would have given; files that could not be read (malformed
   JSON, a findings file breaking the schema) are named with the reason, never fatal.
3. The notebooks run: name, seconds, parameters.
4. Every result table (``NN_*.json`` and ``NN_*.csv``), tables over ``FOLD_ROWS`` rows
   folded with their row count.

``report.html`` is a single self-contained file (embedded CSS, PNGs as data URIs, no
script); the interactive figures stay beside it in ``graphs/``.

Findings convention for notebooks: a notebook may write ``OUT_DIR/NN_findings.json`` (``NN``
its number), a JSON list of objects with the fields

- ``"title"``: str, required, non-empty: a heading.
- ``"text"``: str, required: the finding in plain words with its numbers (each line a paragraph).
- ``"table"``: optional list of records (objects of column -> JSON scalar), shown below the text.
- ``"figure"``: optional str, a path relative to the run folder (``"graphs/ioi.png"``):
  ``.png``/``.jpg``/``.gif``/``.svg`` shown inline (embedded), ``.html`` linked and iframed.
  Either way a same-named image and HTML page beside it are both used (``save_figure``
  writes ``<name>.html`` and, where it can, ``<name>.png``).

Write it with ``save_findings(findings, f"{OUT_DIR}/06_findings.json")``, which checks the
schema. The report shows these findings in notebook order among the built-in ones.
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
from pathlib import Path

import pandas as pd

from ..core.io import atomic_write_text, save_json
from ..evaluation import findings as fd
from .series import RunError, finished_notebooks, notebook_parameters

__all__ = ["FOLD_ROWS", "FindingsError", "collect", "html_table", "md_table", "save_findings", "validate_findings",
           "write_report"]

FOLD_ROWS = 12  # tables longer than this are folded in <details>
FIELDS = {"title", "text", "table", "figure"}
IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;max-width:72rem;margin:2rem auto;
padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2.2rem}h3{margin-bottom:.3rem}
.finding{border-left:4px solid #3b6fb6;background:#f6f8fb;padding:.6rem 1rem;margin:1rem 0}
.finding p{margin:.3rem 0}.src{font-size:.85rem;color:#5a6472}.warn{border-left-color:#c0562b;background:#fdf5f1}
.wrap{overflow:auto;max-height:36rem;margin:.5rem 0}
table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e3e7ec;text-align:left;white-space:nowrap}
th{background:#e9eef4;position:sticky;top:0}tbody tr:nth-child(even){background:#f3f5f8}
td.num,th.num{text-align:right}img{max-width:min(100%,52rem);height:auto;border:1px solid #e3e7ec}
iframe{width:100%;height:520px;border:1px solid #e3e7ec}details{margin:.5rem 0}summary{cursor:pointer;color:#3b6fb6}
code{font-size:.85rem;background:#eef1f5;padding:0 .2rem}
"""


class FindingsError(ValueError):
    """A findings list that breaks the schema of ``NN_findings.json`` (the bad field named)."""


def validate_findings(findings, source: str = "findings") -> list[dict]:
    """Check findings against the schema in this module's docstring and return them as plain
    JSON-ready dicts (a ``pandas.DataFrame`` table becomes its records).

    Raises:
        FindingsError: naming the finding (by index and title) and the field that is wrong.
    """
    if not isinstance(findings, (list, tuple)):
        raise FindingsError(f"{source}: findings must be a list of objects, got {type(findings).__name__}")
    out = []
    for i, f in enumerate(findings):
        where = f"{source}[{i}]"
        if not isinstance(f, dict):
            raise FindingsError(f"{where}: a finding must be an object (dict), got {type(f).__name__}")
        extra = sorted(set(f) - FIELDS)
        if extra:
            raise FindingsError(f"{where}: unknown field(s) {extra}; the fields are {sorted(FIELDS)}")
        if not isinstance(f.get("title"), str) or not f["title"].strip():
            raise FindingsError(f"{where}: field 'title' must be a non-empty string, got {f.get('title')!r}")
        where = f"{where} ({f['title']!r})"
        if not isinstance(f.get("text"), str):
            raise FindingsError(f"{where}: field 'text' must be a string, got {type(f.get('text')).__name__}")
        g = {"title": f["title"], "text": f["text"]}
        if f.get("table") is not None:
            t = f["table"]
            if isinstance(t, pd.DataFrame):
                t = json.loads(t.to_json(orient="records"))
            if not isinstance(t, list) or not all(isinstance(r, dict) for r in t):
                raise FindingsError(f"{where}: field 'table' must be a list of records (objects of column -> value), "
                                    f"got {type(t).__name__}")
            try:
                json.dumps(t)
            except TypeError as e:
                raise FindingsError(f"{where}: field 'table' holds a value JSON cannot store ({e}); "
                                    "convert numpy values with float()/int()") from None
            g["table"] = t
        if f.get("figure") is not None:
            p = f["figure"]
            if not isinstance(p, str) or not p or Path(p).is_absolute() or ".." in Path(p).parts:
                raise FindingsError(f"{where}: field 'figure' must be a path relative to the run folder "
                                    f"(e.g. 'graphs/x.png'), got {p!r}")
            if Path(p).suffix.lower() not in (".html", *IMAGES):
                raise FindingsError(f"{where}: field 'figure' must name a {', '.join(IMAGES)} or .html file, got {p!r}")
            g["figure"] = p
        out.append(g)
    return out


def save_findings(findings, path) -> Path:
    """Write a notebook's findings for the run report, after checking their schema.

    ``path`` is ``OUT_DIR/NN_findings.json`` with ``NN`` the notebook's number. ``findings``
    is a list of dicts with ``"title"`` (str, required), ``"text"`` (str, required: the
    finding in plain words with its numbers), ``"table"`` (optional: a list of records or a
    DataFrame) and ``"figure"`` (optional: a path relative to the run folder, e.g.
    ``"graphs/ioi.png"``; PNG/JPG/SVG shown inline, HTML iframed). Unknown fields are errors,
    so a misspelt one is not silently dropped.

    Example:
        >>> save_findings([{"title": "IOI circuit", "text": "Heads 9.6 and 9.9 carry 71% of the logit difference."}],
        ...               f"{OUT_DIR}/06_findings.json")  # doctest: +SKIP

    Raises:
        FindingsError: a field is missing or of the wrong type (the finding and field named).
    """
    path = Path(path)
    if not (path.name[:2].isdigit() and path.name.endswith("_findings.json")):
        raise FindingsError(f"{path.name}: name the file NN_findings.json (NN = the notebook's number) "
                            "so the report finds it and knows its notebook")
    return save_json(validate_findings(findings, path.name), path)


# ---------------------------------------------------------------- reading the run folder


def _read_json(path: Path, problems: list):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append((path.name, f"not readable as JSON ({e}); left out of this report"))
        return None


def _read_csv(path: Path, problems: list) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' parser errors are ValueErrors
        problems.append((path.name, f"not readable as CSV ({e}); left out of this report"))
        return None


def _notebooks(run: Path, meta: dict, expected) -> tuple[list[dict], list[str]]:
    """Finished notebooks (run.json, else the ``.done`` markers) and every expected notebook."""
    done = {n["notebook"]: n for n in meta.get("notebooks", []) if isinstance(n, dict) and "notebook" in n}
    done.update(finished_notebooks(run))
    names = set(expected or []) | set(done) | {p.name for p in run.glob("[0-9][0-9]_*.ipynb")}
    return [done[k] for k in sorted(done)], sorted(names)


def _notebook_link(run: Path, prefix: str) -> str | None:
    hits = sorted(run.glob(f"{prefix}_*.ipynb"))
    return hits[0].name if hits else None


def _param(run: Path, meta: dict, prefix: str, name: str):
    """A notebook's parameter: as run (run.json), else its default in the executed notebook."""
    for n in meta.get("notebooks", []):
        if str(n.get("notebook", "")).startswith(prefix) and name in n.get("parameters", {}):
            return n["parameters"][name]
    nb = _notebook_link(run, prefix)
    if nb:
        try:
            return notebook_parameters(run / nb).get(name)
        except (RunError, OSError, ValueError, SyntaxError, KeyError):
            return None
    return None


def collect(run, expected=None) -> dict:
    """Everything the report shows, read from a run folder (no file is written)."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist (python -m causal_nb run writes runs/<timestamp>/)")
    problems: list = []
    meta = (_read_json(run / "run.json", problems) if (run / "run.json").exists() else None) or {}
    if not isinstance(meta, dict):
        problems.append(("run.json", f"holds a {type(meta).__name__}, not the run's record (an object)"))
        meta = {}
    done, names = _notebooks(run, meta, expected)
    files = {p.name: p for p in run.iterdir() if p.is_file()}
    data = {n: _read_json(files[n], problems) for n in sorted(files) if n[:2].isdigit() and n.endswith(".json")}
    csvs = {n: _read_csv(files[n], problems) for n in sorted(files) if n[:2].isdigit() and n.endswith(".csv")}
    found: list[dict] = []

    def add(items, source):
        for f in items:
            found.append({**f, "source": source, "notebook": source[:2]})

    def guarded(source, derive, *args, **kw):  # a file of the right name but another shape is a problem, not a crash
        try:
            add(derive(*args, **kw), source)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            problems.append((source, f"has an unexpected layout ({type(e).__name__}: {e}); no finding derived"))

    if data.get("00_summary.json") is not None:
        guarded("00_summary.json", fd.derive_summary, data["00_summary.json"])
    if data.get("01_token_set_separation.json") is not None:
        guarded("01_token_set_separation.json", fd.derive_token_sets, data["01_token_set_separation.json"])
    hyp = data.get("03_hypotheses.json")
    ref = _param(run, meta, "03", "REFERENCE")
    if isinstance(hyp, dict) and hyp.get("h1"):
        guarded("03_hypotheses.json", fd.derive_h1, hyp["h1"], reference=f"the reference ({ref})" if ref else
                "the reference method")
    elif data.get("02_agreement_with_ablation.json") is not None:
        guarded("02_agreement_with_ablation.json", fd.derive_h1, data["02_agreement_with_ablation.json"])
    if isinstance(hyp, dict) and hyp.get("h2_at_max_sparsity"):
        res = csvs.get("03_results.csv")
        sp = fd.sparsities_from_results(res) if res is not None else {}
        dom = _param(run, meta, "03", "DOMAIN")
        guarded("03_hypotheses.json", fd.derive_h2, hyp["h2_at_max_sparsity"], reference=ref or "causal (reference)",
                sparsities=sp, quality="top-1 agreement with the full model" + (f" on held-out {dom} prompts" if dom else ""))
    if csvs.get("03_acdc.csv") is not None:
        guarded("03_acdc.csv", fd.derive_acdc, csvs["03_acdc.csv"])
    for n in sorted(data):
        if n.endswith("_findings.json") and data[n] is not None:
            try:
                add(validate_findings(data[n], n), n)
            except FindingsError as e:
                problems.append((n, f"breaks the findings schema: {e}"))
    found.sort(key=lambda f: f["notebook"])  # stable: built-in findings of a notebook before its own file's

    finished = {n["notebook"] for n in done}
    missing = []
    for name in names:
        if name in finished:
            continue
        state = "started, not finished (failed or interrupted)" if (run / name).exists() else "not run"
        gives = [v for k, v in fd.BUILTIN.items() if k[:2] == name[:2]]
        missing.append({"notebook": name, "state": state, "gives": gives})
    tables = []
    for n, d in data.items():
        if d is None or n.endswith("_findings.json"):
            continue
        parts = d.items() if isinstance(d, dict) and all(isinstance(v, list) for v in d.values()) else [("", d)]
        for key, rows in parts:
            if isinstance(rows, dict):
                rows = rows.get("losses", [rows])
            if isinstance(rows, list) and rows and isinstance(rows[0], dict):
                tables.append((f"{Path(n).stem}{' - ' + key if key else ''}", pd.DataFrame(rows), n))
    tables += [(Path(n).stem, df, n) for n, df in csvs.items() if df is not None]
    graphs = sorted({p.stem for p in (run / "graphs").glob("*") if p.suffix in (".html", *IMAGES)}) \
        if (run / "graphs").is_dir() else []
    return {"run": run, "meta": meta, "done": done, "missing": missing, "problems": problems, "findings": found,
            "tables": tables, "graphs": graphs}


# ---------------------------------------------------------------- rendering


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) < 1e-3:
            return f"{v:.2e}"
        return repr(round(v, 4))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _records(t) -> tuple[list[str], list[list]]:
    df = t if isinstance(t, pd.DataFrame) else pd.DataFrame(t)
    cols = [str(c) for c in df.columns]
    rows = [list(r) for r in df.astype(object).where(df.notna(), None).itertuples(index=False)]
    return cols, rows


def _numeric(rows, j) -> bool:
    vals = [r[j] for r in rows if r[j] is not None]
    return bool(vals) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals)


def html_table(t, title: str | None = None) -> str:
    """A styled HTML table (numbers right-aligned); over ``FOLD_ROWS`` rows, folded in
    ``<details>`` whose summary says how many rows."""
    cols, rows = _records(t)
    num = [_numeric(rows, j) for j in range(len(cols))]
    e = _html.escape
    head = "".join(f"<th{' class=num' if n else ''}>{e(c)}</th>" for c, n in zip(cols, num, strict=True))
    body = "".join("<tr>" + "".join(f"<td{' class=num' if n else ''}>{e(_fmt(x))}</td>" for x, n in zip(r, num, strict=True))
                   + "</tr>" for r in rows)
    table = f"<div class=wrap><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    if len(rows) > FOLD_ROWS:
        return f"<details><summary>{e(title or 'table')}: {len(rows)} rows</summary>{table}</details>"
    return table


def md_table(t, title: str | None = None) -> str:
    """The same table in Markdown (folded in ``<details>`` over ``FOLD_ROWS`` rows)."""
    cols, rows = _records(t)
    num = [_numeric(rows, j) for j in range(len(cols))]
    cell = lambda x: _fmt(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join("---:" if n else "---" for n in num) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    text = "\n".join(lines)
    if len(rows) > FOLD_ROWS:
        return f"<details><summary>{title or 'table'}: {len(rows)} rows</summary>\n\n{text}\n\n</details>"
    return text


def _figure_paths(f: dict, graphs: list[str]) -> list[str]:
    """A finding's figures as paths without suffix: notebook 04's that belong to it (where
    written) and its own ``figure``."""
    out = [f"graphs/{s}" for s in f.get("figures", []) if s in graphs]
    if f.get("figure"):
        out.append(Path(f["figure"]).with_suffix("").as_posix())
    return out


def _figure_html(run: Path, base: str) -> str:
    """A figure by its path without suffix: the image inline (data URI), the HTML iframed
    (folded when an image shows it already) and linked."""
    e = _html.escape
    img = next((run / f"{base}{s}" for s in IMAGES if (run / f"{base}{s}").exists()), None)
    page = run / f"{base}.html"
    name = Path(base).name
    parts = [f"<h4>{e(name)}</h4>"]
    if img is not None:
        data = base64.b64encode(img.read_bytes()).decode()
        parts.append(f"<img alt='{e(name)}' src='data:{IMAGES[img.suffix]};base64,{data}'>")
    if page.exists():
        frame = f"<iframe src='{e(base)}.html' loading='lazy' title='{e(name)}'></iframe>"
        parts.append(f"<p class=src><a href='{e(base)}.html'>interactive figure</a></p>")
        parts.append(f"<details><summary>interactive {e(name)}</summary>{frame}</details>" if img else frame)
    if img is None and not page.exists():
        parts.append(f"<p class=src>figure {e(base)} is missing from the run folder</p>")
    return "".join(parts)


def _figure_md(run: Path, base: str) -> list[str]:
    name = Path(base).name
    img = next((f"{base}{s}" for s in IMAGES if (run / f"{base}{s}").exists()), None)
    out = [f"- [{name}]({base}.html)" if (run / f"{base}.html").exists() else
           f"- {name}" + ("" if img else f" (figure {base} is missing from the run folder)")]
    return out + (["", f"  ![{name}]({img})"] if img else [])


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def write_report(run, expected=None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` in a run folder and return their paths.

    Args:
        run: the run folder (``runs/<timestamp>``).
        expected: names of the notebooks the run was asked for (``run_series`` passes them),
            so those that did not finish are reported missing; default: those started or
            finished in the folder.

    Unreadable result files are listed in the report with the reason instead of stopping it.
    """
    run = Path(run)
    c = collect(run, expected)
    meta, e = c["meta"], _html.escape
    used = set()
    md = [f"# causal_nb run `{run.name}`", "", f"Profile: `{meta.get('profile', '?')}`"
          + (f"; parameters: `{_params(meta['parameters'])}`" if meta.get("parameters") else ""), "", "## Findings", ""]
    body = [f"<h1>causal_nb run {e(run.name)}</h1>", f"<p>Profile <code>{e(str(meta.get('profile', '?')))}</code>"
            + (f"; parameters <code>{e(_params(meta['parameters']))}</code>" if meta.get("parameters") else "") + "</p>",
            "<h2>Findings</h2>"]
    if not c["findings"]:
        md += ["No findings: none of the result files the report reads is in this run folder.", ""]
        body.append("<p>No findings: none of the result files the report reads is in this run folder.</p>")
    for f in c["findings"]:
        src, nb = f["source"], _notebook_link(run, f["notebook"])
        link_md = f"[{nb}]({nb})" if nb else f"notebook {f['notebook']} (its executed notebook is not in this folder)"
        link_html = f"<a href='{e(nb)}'>{e(nb)}</a>" if nb else f"notebook {e(f['notebook'])}"
        paras = [t.strip() for t in f["text"].split("\n") if t.strip()]  # one paragraph per line of text
        md += [f"### {f['title']}", "", "\n\n".join(paras), "", f"*From {link_md} (`{src}`).*", ""]
        body += [f"<div class=finding><h3>{e(f['title'])}</h3>" + "".join(f"<p>{e(t)}</p>" for t in paras),
                 f"<p class=src>From {link_html} (<code>{e(src)}</code>)</p>"]
        if f.get("table"):
            md += [md_table(f["table"], f"{f['title']} table"), ""]
            body.append(html_table(f["table"], f"{f['title']} table"))
        for base in _figure_paths(f, c["graphs"]):
            if base in used:  # a figure several findings share is shown with the first
                continue
            used.add(base)
            md += _figure_md(run, base) + [""]
            body.append(_figure_html(run, base))
        body.append("</div>")
    other = [f"graphs/{s}" for s in c["graphs"] if f"graphs/{s}" not in used]
    if other:
        nb = _notebook_link(run, "04")
        md += ["## Figures", ""] + ([f"From [{nb}]({nb}).", ""] if nb else [])
        body.append("<h2>Figures</h2>" + (f"<p class=src>From <a href='{e(nb)}'>{e(nb)}</a></p>" if nb else ""))
        for base in other:
            md += _figure_md(run, base)
            body.append(_figure_html(run, base))
        md.append("")
    if c["missing"] or c["problems"]:
        md += ["## Missing from this run", ""]
        body.append("<h2>Missing from this run</h2><div class='finding warn'><ul>")
        for m in c["missing"]:
            gives = f": no {', no '.join(m['gives'])}" if m["gives"] else ""
            md.append(f"- {m['notebook']}: {m['state']}{gives}")
            body.append(f"<li>{e(m['notebook'])}: {e(m['state'])}{e(gives)}</li>")
        for name, why in c["problems"]:
            md.append(f"- `{name}` {why}")
            body.append(f"<li><code>{e(name)}</code> {e(why)}</li>")
        md.append("")
        body.append("</ul></div>")
    md += ["## Notebooks", "", "| notebook | seconds | parameters |", "|---|---:|---|"]
    md += [f"| [{n['notebook']}]({n['notebook']}) | {n.get('seconds', '')} | `{n.get('parameters', {})}` |"
           for n in c["done"]]
    rows = "".join(f"<tr><td><a href='{e(n['notebook'])}'>{e(n['notebook'])}</a></td><td class=num>"
                   f"{e(str(n.get('seconds', '')))}</td><td><code>{e(_params(n.get('parameters', {})))}</code></td></tr>"
                   for n in c["done"])
    body.append("<h2>Notebooks</h2><div class=wrap><table><thead><tr><th>notebook</th><th class=num>seconds</th>"
                f"<th>parameters</th></tr></thead><tbody>{rows}</tbody></table></div>")
    md += ["", "## Tables", ""]
    body.append("<h2>Tables</h2>")
    for title, df, _src in c["tables"]:
        md += [f"### {title}", "", md_table(df.round(4), title), ""]
        body += [f"<h3>{e(title)}</h3>", html_table(df.round(4), title)]
    atomic_write_text(run / "report.md", "\n".join(md) + "\n")
    atomic_write_text(run / "report.html", "<!doctype html><html lang=en><head><meta charset='utf-8'>"
                      f"<title>causal_nb run {e(run.name)}</title><style>{CSS}</style></head><body>"
                      + "\n".join(body) + "</body></html>\n")
    return run / "report.md", run / "report.html"
