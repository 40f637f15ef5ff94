"""One self-contained HTML report: images are inlined as data URIs, styles are inline,
and there is no script, so the file can be mailed or opened offline."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape

import pandas as pd

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
"""


@dataclass
class MethodSection:
    method: str
    confusion_png: bytes
    prediction_grid_png: bytes
    most_confused: pd.DataFrame
    training_curves_png: bytes | None = None


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


def dataset_section_html(section: DatasetSection) -> str:
    """The part of the report for one dataset; usable on its own as an HTML fragment."""
    name = escape(section.dataset)
    parts = [f'<section id="dataset-{name}"><h2>{name}</h2>']
    for m in section.methods:
        method = escape(m.method)
        parts.append(f"<h3>{method}</h3><div class='figures'>")
        parts.append(_figure(m.confusion_png, f"{section.dataset} / {m.method}: confusion matrix, "
                                              "row-normalised"))
        parts.append(_figure(m.prediction_grid_png, f"{section.dataset} / {m.method}: sample "
                                                    "predictions, errors in red"))
        if m.training_curves_png is not None:
            parts.append(_figure(m.training_curves_png, f"{section.dataset} / {m.method}: "
                                                        "training curves"))
        parts.append("</div>")
        if len(m.most_confused):
            parts.append(f"<details><summary>Most-confused class pairs ({method})</summary>"
                         f"{_table(m.most_confused)}</details>")
    parts.append(f"<details><summary>Per-class F1, every method</summary>"
                 f"{_table(section.per_class_f1)}</details></section>")
    return "\n".join(parts)


def report_html(
    comparison: pd.DataFrame,
    accuracy_chart_png: bytes,
    dataset_sections: Mapping[str, str],
    run_info: Mapping[str, object],
    title: str = "CLIP adaptation report",
) -> str:
    """The whole report: comparison table and chart, then each dataset's section."""
    info = " · ".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in run_info.items())
    nav = "".join(f'<a href="#dataset-{escape(d)}">{escape(d)}</a>' for d in dataset_sections)
    body = "\n".join(dataset_sections.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{escape(title)}</h1>
<p class="meta">{info}</p>
<nav>{nav}</nav>
<h2 id="comparison-table">Comparison</h2>
<p class="meta">Test-split results. Zero-shot trains nothing; an empty cell (—) was not measured
for that method. Peak memory is CUDA max allocated on GPU, the process's peak RSS during
training on CPU.</p>
{comparison_html(comparison)}
{_figure(accuracy_chart_png, "Top-1 accuracy per method and dataset")}
{body}
</body></html>
"""
