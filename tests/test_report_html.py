"""write_report end to end on fabricated folders: files, figures, the self-contained HTML."""

import base64
import re

import pytest

from selfcorrect.report import derived, write_report
from test_report_folders import make_comparison, write_run

EXPECTED_FIGURES = {"transitions.png", "edit-ratio.png", "accuracy-by-attempt.png", "scaling.png",
                    "training-score.png", "training-star.png", "training-pair_sft.png", "training-single_turn.png"}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    root = make_comparison(tmp_path_factory.mktemp("report") / "cmp", quick=True)
    md, html = write_report(root)
    return root, md.read_text(), html.read_text()


def test_both_reports_and_every_figure_are_written(quick_report):
    root, md, html = quick_report
    written = {p.name for p in (root / "figures").glob("*.png")}
    assert written == EXPECTED_FIGURES  # base and the pending Self-Refine have no training curve
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == sorted(f"figures/{name}" for name in EXPECTED_FIGURES)
    for name in written:
        assert (root / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_embeds_one_image_per_figure_and_fetches_nothing(quick_report):
    _, _, html = quick_report
    images = re.findall(r"<img\b[^>]*>", html)
    assert len(images) == len(EXPECTED_FIGURES)
    for tag in images:
        data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert data, tag[:80]
        assert base64.b64decode(data.group(1))[:4] == b"\x89PNG"
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|url\(|@import|<link\b|<iframe\b", html, re.I)
    assert not re.search(r'\b(?:src|href)\s*=\s*"(?!data:)', html)  # every src is a data URI, no links out


def test_quick_banner_tables_and_pending_runs_in_both(quick_report):
    _, md, html = quick_report
    assert "WARNING: quick run" in md and '<div class="banner" role="alert">WARNING: quick run' in html
    for text in ("| SCoRe | 3 | 53.3 ± 1.2 | 59.3 ± 1.2 | +6.0 ± 2.0 | 8.0 ± 2.0 | 2.0 ± 2.0 |",
                 "- STaR (star): seed 0 training", "- Base (base): seeds 1, 2 not started",
                 "- Pair-SFT (pair_sft): seed 0 trained, not evaluated"):
        assert text in md
    assert "<td>53.3 ± 1.2</td>" in html and "<li>STaR (star): seed 0 training</li>" in html
    assert "single_turn/seed-0: metrics.json could not be read" in md  # the broken file is named


def test_no_banner_without_quick_and_text_is_escaped(tmp_path):
    root = tmp_path / "cmp"
    write_run(root, "score", 0, counts=(3, 1, 0, 1), label="SCoRe <b>&</b>")
    (root / "compare.yaml").write_text("title: 'A <script>alert(1)</script> title'\n")
    md, html = (p.read_text() for p in write_report(root))
    assert "WARNING" not in md and "banner" not in html.split("</style>")[1]
    assert "<script>alert" not in html and "A &lt;script&gt;alert(1)&lt;/script&gt; title" in html
    assert "SCoRe &lt;b&gt;&amp;&lt;/b&gt;" in html


def test_an_empty_comparison_still_gets_a_report(tmp_path):
    (tmp_path / "compare.yaml").write_text("methods: [base, score]\nseeds: 2\n")
    md, html = (p.read_text() for p in write_report(tmp_path))
    assert "<img" not in html and "- SCoRe (score): seeds 0, 1 not started" in md
    assert "0 of 0 runs finished" in md


def test_stale_figures_go_user_files_stay_and_edit_ratios_are_cached(tmp_path, monkeypatch):
    root = tmp_path / "cmp"
    write_run(root, "score", 0, counts=(3, 1, 1, 1))
    figures = root / "figures"
    figures.mkdir()
    (figures / "training-renamed_method.png").write_bytes(b"old")
    (figures / "my-notes.png").write_bytes(b"mine")
    write_report(root)
    assert not (figures / "training-renamed_method.png").exists() and (figures / "my-notes.png").exists()

    def must_not_recompute(outcomes):
        raise AssertionError("edit ratios recomputed for unchanged records")

    monkeypatch.setattr(derived, "edit_ratios", must_not_recompute)
    write_report(root)  # records unchanged: ratios come from the cache
    records = root / "score" / "seed-0" / "eval" / "records.jsonl"
    records.write_text(records.read_text() + "\n")  # a changed file is measured again
    with pytest.raises(AssertionError, match="recomputed"):
        write_report(root)
