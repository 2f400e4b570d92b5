"""The report's HTML page and Markdown table. Every piece of text from a file goes through ``escape``:
generations are model output and may hold anything, markup included."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from palu.data.qa import QAItem, Span
from palu.eval.metrics import METRICS
from palu.eval.muse import PROPERTIES
from palu.io import read_json
from palu.report.discover import BEFORE, RETAIN, UNLEARNED, Run
from palu.report.svg import line_chart, scatter
from palu.runs import CURVE

HEADLINE = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio",
            "exact_memorization", "extraction_strength", "retain_Q_A_Prob", "retain_Q_A_ROUGE", "privleak")
ARROWS = {True: "↑", False: "↓", None: "↕"}
LEGEND = "↑ higher is better, ↓ lower is better, ↕ best in between (see the metric's description)"
ROUGE = "forget_Q_A_ROUGE"
TRACKED = ("forget_quality", "model_utility")  # the trade-off: first in the charts, compared across runs
NOT_PLOTTED = ("epoch", "lr")
ROLE_COLORS = {BEFORE: "#e15759", RETAIN: "#59a14f", UNLEARNED: "#4e79a7"}
OPEN_QUESTIONS = 3  # generations shown unfolded; the rest are one click away

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } .wide { overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666; font-size: 0.92em; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } svg { max-width: 100%; height: auto; }
mark.span { background: #ffe08a; } mark.leak { background: #f7a8a8; }
details { margin: 0.4em 0; } summary { cursor: pointer; }
"""


def arrow(metric: str) -> str:
    spec = METRICS.get(metric)
    return ARROWS[spec.higher_is_better] if spec else ""


def number(value) -> float | None:
    """A metric value as a number; None for unavailable (null, NaN) or anything that is not a number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def fmt(value) -> str:
    value = number(value)
    if value is None:
        return "n/a"
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def headline_columns(runs: list[Run]) -> list[str]:
    return [m for m in HEADLINE if any(number(r.summary.get(m)) is not None for r in runs)]


MARK = "<!-- written by palu report -->"  # what lets a later report replace this one without --overwrite


def markdown(runs: list[Run]) -> str:
    """One row per run, the headline metrics with their directions."""
    columns = headline_columns(runs)
    cell = lambda text: str(text).replace("|", "\\|")
    lines = ["| run | role | " + " | ".join(f"{m} {arrow(m)}" for m in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    lines += [f"| {cell(r.name)} | {r.role} | " + " | ".join(fmt(r.summary.get(m)) for m in columns) + " |"
              for r in runs]
    return "\n".join(lines + ["", LEGEND, "", MARK]) + "\n"


def html_page(runs: list[Run], items: dict[str, QAItem], sources: list[Path]) -> str:
    parts = [f"<h1>palu report</h1><p class=\"muted\">from {', '.join(escape(str(s)) for s in sources)}</p>",
             _summary_section(runs), _curve_section(sources), _scatter_section(runs), _training_section(runs),
             _generations_section(runs, items)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">" + MARK +
            f"<title>palu report</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _metric_header(metric: str) -> str:
    spec = METRICS.get(metric)
    title = f' title="{escape(spec.description)}"' if spec else ""
    return f"<th{title}>{escape(metric).replace('_', '_<wbr>')} {arrow(metric)}</th>"


def _table(runs: list[Run], columns: list[str]) -> str:
    head = "<tr><th>run</th><th>role</th>" + "".join(_metric_header(m) for m in columns) + "</tr>"
    rows = "".join(f"<tr><td>{escape(r.name)}</td><td>{r.role}</td>"
                   + "".join(f'<td class="num">{fmt(r.summary.get(m))}</td>' for m in columns) + "</tr>"
                   for r in runs)
    return f'<div class="wide"><table>{head}{rows}</table></div>'


def _summary_section(runs: list[Run]) -> str:
    every = list(dict.fromkeys(m for r in runs for m in r.summary))
    glossary = "".join(f"<li><b>{escape(m)}</b> {arrow(m)}: {escape(METRICS[m].description)}</li>"
                       for m in every if m in METRICS)
    return (f"<h2>Summary</h2>{_table(runs, headline_columns(runs))}<p class=\"muted\">{LEGEND}. The before model "
            "is the one unlearning started from; the retain model was never trained on the forget set.</p>"
            f"<details><summary>all metrics</summary>{_table(runs, every)}<ul>{glossary}</ul></details>")


def _curve_section(sources: list[Path]) -> str:
    """MUSE's C5 or C6 curve of each ``palu curve`` folder among the sources: C1-C4 against the
    documents forgotten so far."""
    parts = []
    for source in sources:
        if not (source / CURVE).is_file():
            continue
        curve = read_json(source / CURVE)
        rows = curve.get("rows", []) if isinstance(curve, dict) else []
        title = "C5 scalability" if curve.get("property") == "scalability" else "C6 sustainability"

        def series(name: str):
            return [(r.get("forget_documents", 0), number(r.get(name))) for r in rows]

        rouge = [(f"{name} {PROPERTIES[name][1]}", series(name)) for name in ("C1", "C2", "C4")]
        parts += [f"<h3>{escape(title)}: {escape(str(source))}</h3>",
                  line_chart(f"{title}: C1, C2 (lower is better), C4 (higher)", rouge, x_label="forget documents"),
                  line_chart(f"{title}: C3 privleak (0 is ideal)", [("C3", series("C3"))], x_label="forget documents")]
    return "<h2>MUSE properties</h2>" + "".join(parts) if parts else ""


def _scatter_section(runs: list[Run]) -> str:
    utility = "model_utility" if any(number(r.summary.get("model_utility")) is not None for r in runs) \
        else "retain_Q_A_Prob"
    values = [(r, number(r.summary.get("forget_quality")), number(r.summary.get(utility))) for r in runs]
    points = [(r.name, fq, u, ROLE_COLORS[r.role]) for r, fq, u in values if fq and fq > 0 and u is not None]
    left_out = [r.name for r in runs if r.name not in {p[0] for p in points}]
    notes = []
    if utility != "model_utility":
        notes.append("No evaluation has model utility (it needs the retain, real-authors and world-facts sets), "
                     "so retain Prob stands in for it.")
    if left_out:
        notes.append(f"Left out for want of both values: {escape(', '.join(left_out))}.")
    chart = scatter(f"forget quality vs {utility}", points, "forget quality (log scale) → better",
                    f"{utility} ↑ better") if points else "<p>No run has both values to plot.</p>"
    colors = ", ".join(f'<span style="color:{c}">●</span> {role}' for role, c in ROLE_COLORS.items())
    return (f"<h2>Forget quality vs {escape(utility)}</h2><p class=\"muted\">Final values, from each run's "
            f"evaluation; top right is best. {colors}. {' '.join(notes)}</p>{chart}")


def _series(history: list[dict], key: str) -> list[tuple[float, float | None]]:
    return [(rec["epoch"], number(rec[key])) for rec in history if key in rec and "epoch" in rec]


def _history_keys(history: list[dict]) -> tuple[list[str], list[str]]:
    """(loss terms, metrics) with a value in ``history``: metrics are the registry's names, the rest are terms."""
    keys = list(dict.fromkeys(k for rec in history for k, v in rec.items()
                              if k not in NOT_PLOTTED and number(v) is not None))
    terms = [k for k in keys if k not in METRICS]
    terms.sort(key=lambda k: k != "loss")  # the total first
    metrics = [m for m in keys if m in METRICS]  # in the order the evaluation reports them: split by split
    return terms, [*(m for m in TRACKED if m in metrics), *(m for m in metrics if m not in TRACKED)]


def _metric_chart(title: str, series: list, metric: str) -> str:
    return line_chart(f"{title} {arrow(metric)}", series, log_y=metric == "forget_quality")


def _training_section(runs: list[Run]) -> str:
    trained = [r for r in runs if r.history]
    if not trained:
        return "<h2>Training</h2><p>No run history given (name unlearning run folders to see it).</p>"
    out = ["<h2>Training</h2><p class=\"muted\">Per epoch: the loss terms the method logged, and the metrics when "
           "the run was evaluated during training (epoch 0: the starting model).</p>"]
    overlays = [m for m in TRACKED
                if sum(m in _history_keys(r.history)[1] for r in trained) > 1]
    if overlays:
        out.append('<div class="charts">' + "".join(
            _metric_chart(f"{m}, all runs", [(r.name, _series(r.history, m)) for r in trained], m) for m in overlays)
            + "</div>")
    for run in trained:
        terms, metrics = _history_keys(run.history)
        losses = "".join(line_chart(term, [(term, _series(run.history, term))]) for term in terms)
        scores = "".join(_metric_chart(m, [(m, _series(run.history, m))], m) for m in metrics)
        out.append(f"<h3>{escape(run.name)}</h3><p class=\"muted\">{escape(str(run.run_dir))}</p>"
                   f"<div class=\"charts\">{losses}</div><div class=\"charts\">{scores}</div>")
    return "\n".join(out)


def _merge(ranges: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted((max(0, s), min(length, e)) for s, e in ranges):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def highlight(text: str, ranges: list[tuple[int, int]], cls: str) -> str:
    """``text`` escaped, with the character ranges wrapped in ``<mark class=cls>``."""
    out, pos = [], 0
    for start, end in _merge(ranges, len(text)):
        out += [escape(text[pos:start]), f'<mark class="{cls}">{escape(text[start:end])}</mark>']
        pos = end
    return "".join(out) + escape(text[pos:])


def occurrences(text: str, needles: list[str]) -> list[tuple[int, int]]:
    """Where each sensitive string reappears verbatim in a generation."""
    found = []
    for needle in filter(None, (n.strip() for n in needles)):
        start = text.find(needle)
        while start >= 0:
            found.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    return found


def _spans(values: list[dict], item: QAItem | None) -> list[Span]:
    """The ground truth's own spans when a result gives them, else the forget item's."""
    given = next((v["spans"] for v in values if v.get("spans")), None)
    if given:
        return [Span(**s) if isinstance(s, dict) else Span(*s) for s in given]
    return list(item.spans) if item else []


def _generation_rows(runs: list[Run]) -> tuple[list[Run], dict[tuple[str, int], dict]]:
    """Rows keyed by (ground truth, its occurrence): each run's ROUGE per-item value for that answer."""
    before = [r for r in runs if r.role == BEFORE and ROUGE in r.results][:1]
    shown = before + [r for r in runs if r.role == UNLEARNED and ROUGE in r.results]
    rows: dict[tuple[str, int], dict] = {}
    for run in shown:
        seen: dict[str, int] = {}
        per_item = run.results[ROUGE].get("value_by_index") or {}
        for index in sorted(per_item, key=int):
            value = per_item[index]
            if not isinstance(value, dict) or "generation" not in value:
                continue
            truth = str(value.get("ground_truth", ""))
            seen[truth] = seen.get(truth, 0) + 1
            rows.setdefault((truth, seen[truth]), {"index": index, "values": {}})["values"][run.name] = value
    return shown, rows


def _generations_section(runs: list[Run], items: dict[str, QAItem]) -> str:
    shown, rows = _generation_rows(runs)
    if not rows:
        return "<h2>Generations</h2><p>No evaluation with forget generations (forget_Q_A_ROUGE) was given.</p>"
    out = ["<h2>Generations on the forget questions</h2><p class=\"muted\">Greedy answers before unlearning and "
           "after, with ROUGE-L recall against the answer. <mark class=\"span\">Marked</mark> in the answer: its "
           "sensitive spans; <mark class=\"leak\">marked</mark> in a generation: a span reproduced verbatim.</p>"]
    for n, ((truth, _), row) in enumerate(rows.items()):
        item = items.get(truth)
        spans = _spans(list(row["values"].values()), item)
        needles = [s.text(truth) for s in spans if s.end <= len(truth)]
        leaking = [r.name for r in shown if r.role == UNLEARNED and r.name in row["values"]
                   and occurrences(str(row["values"][r.name]["generation"]), needles)]
        question = item.question if item else f"forget item {row['index']}"
        status = (f"spans reproduced by {escape(', '.join(leaking))}" if leaking
                  else "no unlearned model reproduces a span" if needles else "no spans annotated")
        cells = [f'<tr><th>answer</th><td>{highlight(truth, [(s.start, s.end) for s in spans], "span")}</td>'
                 "<td></td></tr>"]
        for run in shown:
            value = row["values"].get(run.name)
            if value is None:
                continue
            generation = str(value["generation"])
            label = f"{escape(run.name)} ({run.role})" if run.role == BEFORE else escape(run.name)
            cells.append(f"<tr><th>{label}</th><td>{highlight(generation, occurrences(generation, needles), 'leak')}"
                         f'</td><td class="num">{fmt(value.get("rougeL_recall"))}</td></tr>')
        out.append(f"<details{' open' if n < OPEN_QUESTIONS else ''}><summary><b>{escape(question)}</b> "
                   f"<span class=\"muted\">({status})</span></summary><table><tr><th>model</th><th>text</th>"
                   f"<th>ROUGE-L</th></tr>{''.join(cells)}</table></details>")
    return "\n".join(out)
