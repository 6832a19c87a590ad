"""credit.html: samples of one step with every token shaded by its credit weight (DESIGN §9).

What it does: renders up to `MAX_SAMPLES` samples (wrong ones first) as rows of
character-level tokens; a token's background darkens with its weight w_t (w = 1 is
white, the row's maximum is darkest), a wrong answer's first wrong token (where the
verifier names it) gets a red outline. Plain HTML, no scripts, escaped text.

What it does not do: no interactivity, no history (the file is rewritten each time).
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

MAX_SAMPLES = 24


def write_credit_html(path: Path, title: str, pieces: list[list[str]], w: torch.Tensor, rewards: list[float],
                      first_wrong: list[int], prompts: list[str]) -> None:
    """pieces[i][t]: text of token t of sample i; w [N, T] weights; first_wrong[i] = token index or -1."""
    order = sorted(range(len(pieces)), key=lambda i: (rewards[i] >= 1.0, i))[:MAX_SAMPLES]
    rows = []
    for i in order:
        n = len(pieces[i])
        top = max(float(w[i, :n].max()), 1.0 + 1e-6) if n else 1.0
        spans = []
        for t, piece in enumerate(pieces[i]):
            wt = float(w[i, t])
            shade = max(0.0, (wt - 1.0) / (top - 1.0)) if wt > 1.0 else 0.0
            dim = max(0.0, 1.0 - wt) * 0.5  # below-average weight: grey
            style = f"background: rgba(255,140,0,{shade:.2f}); color: rgba(0,0,0,{1 - dim:.2f})"
            if t == first_wrong[i]:
                style += "; outline: 2px solid red"
            spans.append(f'<span title="w={wt:.3f}" style="{style}">{html.escape(piece or "⏎")}</span>')
        verdict = "correct" if rewards[i] >= 1.0 else "wrong"
        rows.append(f"<tr><td>{html.escape(prompts[i])}</td><td>{verdict}</td><td class=t>{''.join(spans)}</td></tr>")
    Path(path).write_text(
        "<!doctype html><meta charset=utf-8><title>scca credit</title>"
        "<style>body{font-family:sans-serif} td{padding:2px 8px} .t{font-family:monospace;white-space:pre}</style>"
        f"<h1>{html.escape(title)}</h1><p>Orange: weight above 1 (darkest = the row's maximum); grey text: below 1; "
        "red outline: first wrong character named by the verifier.</p>"
        f"<table><tr><th>prompt</th><th>verdict</th><th>completion (tokens shaded by weight)</th></tr>{''.join(rows)}</table>"
    )
