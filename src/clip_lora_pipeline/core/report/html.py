"""One self-contained HTML report: images are inlined as data URIs, styles are inline,
and there is no script, so the file can be mailed or opened offline."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.report.methods import method_description
from clip_lora_pipeline.core.report.run_record import run_record_html
from clip_lora_pipeline.core.report.tables import formatted

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1f2328; padding: 0 1rem; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; font-size: .85rem; margin: .8rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: right; }
th { background: #f6f8fa; }
td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) { text-align: left; }
img { max-width: 100%; border: 1px solid #eaeef2; margin: .4rem 0; }
.meta { color: #59636e; font-size: .9rem; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.figures figure { margin: 0; flex: 1 1 480px; }
figcaption { font-size: .8rem; color: #59636e; }
details { margin: .5rem 0 1rem; }
nav a { margin-right: 1rem; }
table.run-record td, table.run-record th { text-align: left; vertical-align: top; }
table.run-record details { margin: .2rem 0; }
dl.methods dt { font-weight: 600; margin-top: .4rem; }
dl.methods dd { margin-left: 1.5rem; color: #59636e; }
"""

# Displayed names of the most-confused pairs' columns.
PAIR_HEADERS = {"true_class": "true class", "predicted_class": "predicted as",
                "fraction_of_true_class": "share of the true class", "count": "images"}


@dataclass
class MethodSection:
    """One method's figures. ``prediction_grid``: the HTML fragment of
    ``samples.prediction_grid_html``."""

    method: str
    confusion_png: bytes
    prediction_grid: str = ""
    most_confused: pd.DataFrame = field(default_factory=pd.DataFrame)
    training_curves_png: bytes | None = None
    description: str = ""


@dataclass
class DatasetSection:
    dataset: str
    per_class_f1: pd.DataFrame
    methods: list[MethodSection] = field(default_factory=list)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(frame: pd.DataFrame, table_id: str | None = None, float_format: str = "{:.4f}") -> str:
    html = frame.to_html(index=False, escape=True, na_rep="—", border=0,
                         float_format=float_format.format, table_id=table_id)
    return html.replace(' class="dataframe"', "")


def comparison_html(comparison: pd.DataFrame) -> str:
    return _table(formatted(comparison), table_id="comparison")


def _most_confused_html(pairs: pd.DataFrame, method: str) -> str:
    """Shown open: the pairs say what a method gets wrong, the point of the section."""
    if not len(pairs):
        return f"<p class='meta'>{escape(method)}: no test image was misclassified.</p>"
    shown = pairs[[c for c in PAIR_HEADERS if c in pairs]].rename(columns=PAIR_HEADERS)
    return (f"<h4>Most-confused class pairs ({escape(method)}), by share of the true class"
            f"</h4>{_table(shown)}")


def _grid_html(grid: str, caption: str) -> str:
    return grid  # already HTML, escaped where it was made; it carries its own caption


def dataset_section_html(section: DatasetSection) -> str:
    """The part of the report for one dataset; usable on its own as an HTML fragment."""
    name = escape(section.dataset)
    parts = [f'<section id="dataset-{name}"><h2>{name}</h2>']
    for m in section.methods:
        method = escape(m.method)
        parts.append(f"<h3>{method}</h3>")
        if m.description:
            parts.append(f"<p class='meta'>{escape(m.description)}</p>")
        parts.append("<div class='figures'>")
        parts.append(_figure(m.confusion_png, f"{section.dataset} / {m.method}: confusion matrix, "
                                              "row-normalised"))
        if m.training_curves_png is not None:
            parts.append(_figure(m.training_curves_png, f"{section.dataset} / {m.method}: "
                                                        "training curves"))
        parts.append("</div>")
        parts.append(_most_confused_html(m.most_confused, m.method))
        parts.append(_grid_html(m.prediction_grid, f"{section.dataset} / {m.method}: sample "
                                                   "predictions, errors in red"))
    parts.append(f"<details><summary>Per-class F1, every method</summary>"
                 f"{_table(section.per_class_f1)}</details></section>")
    return "\n".join(parts)


def methods_html(methods: list[str], settings: Mapping[str, Any]) -> str:
    """What each method of the comparison is, one line each."""
    items = "".join(f"<dt>{escape(m)}</dt><dd>{escape(method_description(m, settings.get(m)))}"
                    "</dd>" for m in methods)
    return f'<dl class="methods">{items}</dl>'


def report_html(
    comparison: pd.DataFrame,
    accuracy_chart_png: bytes,
    dataset_sections: Mapping[str, str],
    run_info: Mapping[str, object],
    title: str = "CLIP adaptation report",
    run_record: Mapping[str, Any] | None = None,
) -> str:
    """The whole report: comparison table, method descriptions and chart, then each
    dataset's section, then how the run was made (``run_record.run_record`` dict)."""
    info = " · ".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in run_info.items())
    settings = (run_record or {}).get("methods", {})
    methods = methods_html(list(dict.fromkeys(comparison["method"])), settings)
    record = run_record_html(run_record) if run_record is not None else ""
    nav = "".join(f'<a href="#dataset-{escape(d)}">{escape(d)}</a>' for d in dataset_sections)
    if record:
        nav = f'<a href="#run-record">how this run was made</a>{nav}'
    body = "\n".join(dataset_sections.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{escape(title)}</h1>
<p class="meta">{info}</p>
<nav>{nav}</nav>
<h2 id="comparison-table">Comparison</h2>
<p class="meta">Test-split results. Top-1 shows its 95% Wilson confidence interval, the
uncertainty from the number of test images ("test images"). All methods see the same test
images, so overlapping intervals do not prove a tie (a paired test is sharper). Zero-shot
trains nothing; an empty cell (—) was not measured for that method. Peak memory is CUDA
max allocated on GPU, the process's peak RSS during training on CPU.</p>
{comparison_html(comparison)}
{methods}
{_figure(accuracy_chart_png, "Top-1 accuracy per method and dataset, 95% intervals; dashed: "
                             "chance (1 / number of classes)")}
{record}
{body}
</body></html>
"""
