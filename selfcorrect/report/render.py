"""Turn a comparison folder into report.md and a self-contained report.html.

Safe to run at any time, also while the comparison is still running: unfinished runs are
listed as pending, figures of finished runs are redrawn, and both files are replaced atomically
so a reader never opens a half-written report.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_text_atomic
from .collect import Comparison, collect
from .derived import EditRatioCache
from .document import Bullets, Document, Figure, Paragraph, Section, to_html, to_markdown
from .figures import FIGURE_PREFIXES, draw_all
from .tables import budget_table, seed_table, summary_table

FIGURES_DIR = "figures"
CACHE_NAME = ".edit-ratio-cache.json"
QUICK_BANNER = ("quick run (compare.yaml has quick: true). The budgets are tiny, so every number and curve "
                "below is meaningless; this report only shows that the pipeline runs end to end.")


def write_report(compare_dir: str | Path) -> tuple[Path, Path]:
    """Write <compare_dir>/report.md, report.html and figures/*.png; return (md path, html path)."""
    comparison = collect(compare_dir)
    figures_dir = comparison.folder / FIGURES_DIR
    cache = EditRatioCache(figures_dir / CACHE_NAME)
    figures = draw_all(comparison, figures_dir, cache)
    cache.save()
    _remove_stale_figures(figures_dir, {f.path.name for f in figures})
    doc = build_document(comparison, figures)
    md_path, html_path = comparison.folder / "report.md", comparison.folder / "report.html"
    write_text_atomic(md_path, to_markdown(doc, comparison.folder))
    write_text_atomic(html_path, to_html(doc))
    return md_path, html_path


def build_document(comparison: Comparison, figures: list[Figure]) -> Document:
    """The report's sections, in reading order, from collected runs and the figures drawn for them."""
    sections = [Section("Overview", [Paragraph(_overview(comparison))])]
    sections.append(Section("Results", [
        Paragraph("Percent of all test problems (greedy decoding). With several seeds a cell is mean ± sample "
                  "standard deviation over seeds; with one seed it is that seed's value and 95% bootstrap interval "
                  "over problems. Δ(t1,t2) = Acc@t2 − Acc@t1 = Δi→c − Δc→i."),
        summary_table(comparison),
    ]))
    sections.append(Section("Budget actually used", [
        Paragraph("What each run spent (mean per run over finished seeds; the range in brackets when seeds differ). "
                  "The paper's protocol gives every method the same budget of samples and gradient updates."),
        budget_table(comparison),
    ]))
    per_seed = seed_table(comparison)
    if per_seed.rows:
        sections.append(Section("Per seed", [
            Paragraph("Every finished run, each metric with its 95% bootstrap interval over test problems."), per_seed]))
    sections.append(Section("Pending runs", [_pending_block(comparison)]))
    not_applicable = [f"{m.label} ({m.name}): {m.not_applicable}" for m in comparison.methods if m.not_applicable]
    if not_applicable:
        sections.append(Section("Not applicable", [Bullets(not_applicable)]))
    behaviour = _named(figures, "transitions") + _named(figures, "edit-ratio")
    if behaviour:
        sections.append(Section("Self-correction behaviour", behaviour))
    more = _named(figures, "accuracy-by-attempt") + _named(figures, "scaling")
    if more:
        sections.append(Section("More attempts and inference-time scaling", more))
    sections.append(Section("Training curves", _named(figures, "training-") + _untrained_note(comparison)))
    notes = _notes(comparison)
    if notes:
        sections.append(Section("Files that could not be read", [Bullets(notes)]))
    return Document(comparison.title, QUICK_BANNER if comparison.quick else None, sections)


def _named(figures: list[Figure], prefix: str) -> list[Figure]:
    return [f for f in figures if f.path.name.startswith(prefix)]


def _overview(comparison: Comparison) -> str:
    runs = [run for m in comparison.methods if not m.not_applicable for run in m.runs]
    finished = sum(run.finished for run in runs)
    pending = comparison.pending()
    text = (f"Comparison folder {comparison.folder.name}: {len(comparison.methods)} methods, "
            f"{finished} of {len(runs)} runs finished")
    if pending:
        text += f"; {len(pending)} pending (listed below, not counted in the tables)"
    return text + "."


def _pending_block(comparison: Comparison):
    """One line per method and status, e.g. 'STaR (star): seeds 1, 2 not started'."""
    pending = comparison.pending()
    if not pending:
        return Paragraph("None: every run is finished and evaluated.")
    grouped: dict[tuple[str, str, str], list] = {}
    for p in pending:
        grouped.setdefault((p.label, p.method, p.status), []).append(p.seed)
    lines = []
    for (label, method, status), seeds in grouped.items():
        known = [s for s in seeds if s is not None]
        which = "" if not known else f" seed{'s' if len(known) > 1 else ''} {', '.join(map(str, known))}"
        lines.append(f"{label} ({method}):{which} {status}")
    return Bullets(lines)


def _untrained_note(comparison: Comparison) -> list:
    untrained = [m.label for m in comparison.methods if m.runs and not any(run.curve for run in m.runs)]
    if not untrained:
        return []
    return [Paragraph("No training curve (no metrics.jsonl, e.g. prompting-only methods or runs not started): "
                      + ", ".join(untrained) + ".")]


def _notes(comparison: Comparison) -> list[str]:
    notes = list(comparison.notes)
    for run in comparison.runs:
        notes += [f"{run.method}/seed-{run.seed}: {note}" for note in run.notes]
    return notes


def _remove_stale_figures(figures_dir: Path, keep: set[str]) -> None:
    """Remove figures a previous report wrote that this one did not (e.g. a method since renamed);
    only files with this module's names are touched."""
    for path in figures_dir.glob("*.png"):
        if path.name not in keep and path.name.startswith(FIGURE_PREFIXES):
            path.unlink(missing_ok=True)
