"""audit.html: one self-contained page (thumbnails inline as base64 PNG, no outside requests)."""
from __future__ import annotations

import html
from pathlib import Path

from ..files import atomic_write
from ..reports import thumbnail_png
from ..reports.html_page import html_page

MAX_PAIRS = 60  # pairs and issues shown with thumbnails; the CSV files hold them all
MAX_ISSUES = 48
MAX_ODD = 60


def write_audit_page(path: Path, audit, load_image) -> Path:
    """Write `audit` (run.AuditResult) as HTML; `load_image(index)` gives a sample's PIL image."""
    def image(index: int) -> str:
        name = html.escape(audit.paths[index])
        return f"<img alt='{name}' title='{name}' src='data:image/png;base64,{thumbnail_png(load_image(index))}'>"

    sections = [_summary(audit), _balance(audit), _pairs(audit, image), _issues(audit, image), _odd(audit, image)]
    atomic_write(path, html_page(f"tlearn audit: {audit.description}", "\n".join(sections), _CSS))
    return path


def _summary(audit) -> str:
    rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in audit.summary().items())
    return f"<section><h2>Summary</h2><table class='kv'>{rows}</table></section>"


def _balance(audit) -> str:
    splits = list(audit.balance)
    head = "".join(f"<th>{html.escape(split)}</th>" for split in splits)
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{audit.balance[s][c]}</td>" for s in splits)
                   + "</tr>" for c, name in enumerate(audit.class_names))
    ratios = ("<tr><td><i>imbalance ratio</i></td>"
              + "".join(f"<td>{audit.imbalance(s):.2f}</td>" for s in splits) + "</tr>")
    return f"<section><h2>Class balance</h2><table><tr><th>class</th>{head}</tr>{rows}{ratios}</table></section>"


def _pairs(audit, image) -> str:
    if not audit.duplicates:
        return "<section><h2>Duplicates</h2><p>No duplicate pairs found.</p></section>"
    cards = []
    leaks_first = sorted(zip(audit.duplicates, audit.cross_split), key=lambda item: not item[1])  # stable
    for pair, cross in leaks_first[:MAX_PAIRS]:
        flag = " <b class='bad'>train/val leak</b>" if cross else ""
        cards.append(f"<figure class='pair'>{image(pair.first)}{image(pair.second)}<figcaption>{pair.kind}, "
                     f"cosine {pair.similarity:.3f}, pHash distance {pair.phash_distance}{flag}<br>"
                     f"{html.escape(audit.paths[pair.first])}<br>{html.escape(audit.paths[pair.second])}"
                     "</figcaption></figure>")
    more = f"<p>First {MAX_PAIRS} of {len(audit.duplicates)}, train/val leaks first: see duplicates.csv.</p>" \
        if len(audit.duplicates) > MAX_PAIRS else ""
    return f"<section><h2>Duplicates</h2>{more}<div class='grid'>{''.join(cards)}</div></section>"


def _issues(audit, image) -> str:
    if audit.label_issues is None:
        return f"<section><h2>Label issues</h2><p>{html.escape(audit.label_note)}</p></section>"
    if not audit.label_issues:
        return ("<section><h2>Label issues</h2><p>No image's out-of-fold prediction disagrees with its label.</p>"
                "</section>")
    names = audit.class_names
    cards = [f"<figure>{image(issue.index)}<figcaption>given <b>{html.escape(names[issue.given])}</b><br>"
             f"suggested <b>{html.escape(names[issue.suggested])}</b><br>score {issue.score:.3f}<br>"
             f"<small>{html.escape(audit.paths[issue.index])}</small></figcaption></figure>"
             for issue in audit.label_issues[:MAX_ISSUES]]
    return ("<section><h2>Most likely label errors</h2><p>Score: the out-of-fold probability of the given label "
            f"(lowest first); {len(audit.label_issues)} in label_issues.csv.</p>"
            f"<div class='grid'>{''.join(cards)}</div></section>")


def _odd(audit, image) -> str:
    if not audit.odd:
        return "<section><h2>Odd images</h2><p>None.</p></section>"
    rows = "".join(f"<tr><td>{image(odd.index) if odd.index is not None else ''}</td>"
                   f"<td>{html.escape(odd.path)}</td><td>{html.escape(odd.reason)}</td></tr>"
                   for odd in audit.odd[:MAX_ODD])
    return f"<section><h2>Odd images</h2><table><tr><th></th><th>file</th><th>why</th></tr>{rows}</table></section>"


_CSS = """.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 150px; font-size: 12px; overflow-wrap: anywhere; }
figure.pair { width: 280px; } figure.pair img { margin-right: 6px; }
td img { max-height: 64px; } .bad { color: #b00; }
"""
