"""Render sentences with per-token colours: red for evidence for the explained class, blue against.

Each token is a ``<span>`` whose background opacity is its score divided by the largest absolute
score of its sentence (so every sentence uses the full colour range); the exact value is in the
tooltip. Ground-truth tokens (e.g. TriggerText's trigger words) can be underlined.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import torch

__all__ = ["token_html", "tokens_row_html"]

_STYLE = (
    "<style>table.xai-tokens{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
    "table.xai-tokens td,table.xai-tokens th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}"
    "span.xai-tok{padding:1px 2px;margin:0 1px;border-radius:3px;line-height:1.9}"
    "span.xai-gt{text-decoration:underline;text-decoration-thickness:2px}</style>"
)


def tokens_row_html(tokens: Sequence[str], scores: torch.Tensor, relevant: Sequence[bool] | None = None) -> str:
    """One sentence as coloured spans; ``scores (T,)`` aligned with ``tokens``."""
    values = [float(v) for v in torch.as_tensor(scores).detach().double().cpu().reshape(-1)]
    if len(values) != len(tokens):
        raise ValueError(f"{len(values)} scores for {len(tokens)} tokens")
    finite = [abs(v) for v in values if not math.isnan(v)]
    scale = max(finite) if finite and max(finite) > 0 else 1.0
    spans = []
    for index, (token, value) in enumerate(zip(tokens, values)):
        strength = 0.0 if math.isnan(value) else min(abs(value) / scale, 1.0)
        rgb = "220,40,40" if value >= 0 else "40,90,220"
        classes = "xai-tok xai-gt" if relevant is not None and relevant[index] else "xai-tok"
        spans.append(
            f'<span class="{classes}" title="{value:+.4g}" style="background:rgba({rgb},{strength:.3f})">'
            f"{html.escape(token)}</span>"
        )
    return " ".join(spans)


def token_html(
    sentences: Sequence[Sequence[str]],
    scores: Mapping[str, Sequence[torch.Tensor]],
    captions: Sequence[str] | None = None,
    relevant: Sequence[Sequence[bool]] | None = None,
    title: str = "",
) -> str:
    """A self-contained HTML table: one row per sentence, one column per method (``scores`` name → per
    sentence ``(T_i,)`` scores), an optional caption column; ground-truth tokens underlined."""
    methods = list(scores)
    header = "".join(f"<th>{html.escape(name)}</th>" for name in (["example"] if captions else []) + methods)
    rows = []
    for i, tokens in enumerate(sentences):
        cells = [f"<td>{html.escape(captions[i])}</td>"] if captions else []
        marks = None if relevant is None else relevant[i]
        cells += [f"<td>{tokens_row_html(tokens, scores[name][i], marks)}</td>" for name in methods]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    heading = (
        f"<p><b>{html.escape(title)}</b> — red: evidence for the explained class, blue: against; "
        "underlined: ground-truth tokens</p>"
        if title
        else ""
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'>{_STYLE}</head><body>{heading}"
        f"<table class='xai-tokens'><tr>{header}</tr>{''.join(rows)}</table></body></html>"
    )
