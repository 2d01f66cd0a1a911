"""The report says only what its lake can back: an evaluation-style lake (the real simulator's standard
scan written as Parquet by ``scanflow lake record-sim``; a hand-made lake holding both policies) gets
its figures, and what a lake cannot back (no efficient scan, too few addresses to derive port sets,
a single day to plot) is said in words, never as ``inf``, ``NaN`` or a zero-baseline ratio.
The live-run lake's report is checked in ``tests/e2e/test_dashboard.py``."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from connectors.report import build_report
from scanflow.cli import main
from tests.unit.connectors.test_metrics_lake import events_lake

NOT_A_NUMBER = re.compile(r"\b(inf|nan)\b|inf%|nan%", re.IGNORECASE)


def page_text(html_page: str) -> str:
    """What a reader sees: the page without tags and styles."""
    import html

    text = re.sub(r"<style>.*?</style>", "", html_page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


@pytest.fixture(scope="module")
def simulated_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "lake"
    out = CliRunner().invoke(main, ["lake", "record-sim", "--lake", str(root), "--ips", "5000", "--weeks", "0.5",
                                    "--survey-ips", "5000"])
    assert out.exit_code == 0, out.output
    return root


def test_a_standard_only_lake_says_there_is_nothing_to_compare(simulated_lake, tmp_path):
    result = build_report(simulated_lake, tmp_path / "out", plots=False)
    text = page_text(result.index.read_text(encoding="utf-8"))
    assert "No efficient scan in this lake" in text
    assert not NOT_A_NUMBER.search(text), NOT_A_NUMBER.search(text)
    # 5,000 addresses: about a hundred answer, far too few to rank ten thousand ports
    m = re.search(r"Not derived: the standard scan in this lake found ([\d,]+) responsive IPs", text)
    assert m and 0 < int(m.group(1).replace(",", "")) < 1000
    assert "Times are real (no clock compression)" in text


def test_an_evaluation_lake_gets_its_table4_figures(tmp_path):
    root = events_lake(tmp_path / "lake")
    result = build_report(root, tmp_path / "out", plots=False)
    text = page_text(result.index.read_text(encoding="utf-8"))
    assert "No standard baseline" not in text and "No efficient scan" not in text
    table4 = text[text.index("Table 4"):text.index("Responsive and change rates")]
    assert re.search(r"\d+\.\d\d%", table4)            # ratios, PDR, DDR as percentages
    assert not NOT_A_NUMBER.search(text)


def test_a_single_day_becomes_a_table_not_a_plot(simulated_lake, tmp_path):
    pytest.importorskip("matplotlib")
    result = build_report(simulated_lake, tmp_path / "out", end="2019-12-03T00:00:00Z")
    page = result.index.read_text(encoding="utf-8")
    assert "responsive.png" not in page and "figure7_attempts.png" not in page
    assert "No plot: the rates cover 1 day" in page_text(page)
    assert not (tmp_path / "out" / "responsive.png").exists()
