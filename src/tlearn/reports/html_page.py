"""One self-contained HTML page (the run report, the audit, the leaderboard): the shell and the
style they share; each page adds its own rules after these."""
from __future__ import annotations

import html

BASE_CSS = """body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; } th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; }
"""


def html_page(title: str, body: str, css: str = "") -> str:
    """The page: `title` (escaped here) as its title and heading, `body` as given, no script, no request."""
    title = html.escape(title)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
            f"<style>\n{BASE_CSS}{css}</style></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n")
