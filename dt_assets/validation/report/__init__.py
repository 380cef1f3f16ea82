"""The validation report: one self-contained HTML file, its figures as PNG bytes, and summary tables.

``write_html(result, path)`` (what :meth:`ValidationResult.to_html` calls) writes a single HTML file
with no external resources: styles are inline and every plot is a base64 PNG (``data:`` URI), so
the file can be mailed, attached to an MLflow run or opened offline. It holds, in order: the
verdict, summary, provenance and score; the global metrics with their confidence intervals and
MC-vs-MC baselines; the coverage heat map (energy x angle) and the per-cell table; the failed
checks; the worst value of every observable and metric over the cells; the mean profiles and key
distributions of every cell against the reference and the baseline, with ratio panels; the
configuration used; and a note on how to read it all. Observables the configuration left out are
skipped.

Its modules: :mod:`.figures` (the figure functions return PNG bytes: plain matplotlib ``Figure`` objects
with the Agg backend, no pyplot state, nothing left open between calls), :mod:`.page` (the HTML page,
rendered from the Jinja2 template ``templates/report.html.j2``) and :mod:`.summary` (``summary_rows`` and
``markdown_summary`` give the global numbers in the forms the Dagster layer shows: a table and Markdown).
"""

from .figures import DPI, coverage_map_png, distributions_png, key_cells, profiles_png
from .page import KEY_OBSERVABLES, PROFILE_OBSERVABLES, render_html, write_html
from .summary import markdown_summary, summary_rows

__all__ = [
    "DPI",
    "KEY_OBSERVABLES",
    "PROFILE_OBSERVABLES",
    "coverage_map_png",
    "distributions_png",
    "key_cells",
    "markdown_summary",
    "profiles_png",
    "render_html",
    "summary_rows",
    "write_html",
]
