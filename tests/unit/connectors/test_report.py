"""The canned report and the query output formats: hostile banners never reach a page or a terminal
raw; the CLI commands work on a lake."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pytest
from click.testing import CliRunner

from connectors.report import build_report, cell_text, format_table
from scanflow.cli import main
from tests.unit.connectors.test_catalog_queries import HOSTILE, build_lake
from tests.unit.connectors.test_metrics_lake import events_lake, python_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _no_raw_controls(text: str) -> bool:
    return not any(ord(ch) < 32 and ch not in "\n\t" or 0x7f <= ord(ch) < 0xa0 for ch in text)


def test_cell_text_escapes_what_a_terminal_would_obey():
    assert cell_text(b"\x1b[2Jroot\x07") == "\\x1b[2Jroot\\x07"
    assert cell_text("caf\u00e9 \x9b31m") == "caf\u00e9 \\x9b31m"
    assert cell_text(b"\xff\xfe") == "\\xff\\xfe"
    assert cell_text(None) == "" and cell_text(0.5) == "0.5"


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_every_output_format_escapes_text_and_bytes(fmt):
    table = pa.table({"port": [80], "banner": pa.array([HOSTILE], pa.binary()), "note": ["a\x1b]0;x\x07b"]})
    out = format_table(table, fmt)
    assert _no_raw_controls(out)
    assert "\\x1b[2J" in out
    if fmt == "json":
        assert json.loads(out)[0]["port"] == 80
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(out)))
        assert rows[0] == ["port", "banner", "note"] and rows[1][0] == "80"


def test_the_report_escapes_every_banner_and_draws_its_plots(tmp_path):
    pytest.importorskip("matplotlib")
    result = build_report(build_lake(tmp_path / "lake"), tmp_path / "out")
    page = result.index.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert _no_raw_controls(page)
    assert "\\x1b[2J" in page
    for title in ("Table 1", "Table 4", "Figure 6", "Figure 7", "Responsive and change rates"):
        assert title in page
    pngs = [f for f in result.files if f.suffix == ".png"]
    assert {p.name for p in pngs} == {"responsive.png", "figure6_backoff.png", "figure7_attempts.png"}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    ranking = list(csv.reader((tmp_path / "out" / "table1_port_ranking.csv").open()))
    assert ranking[1][:3] == ["1", "80", "2"]


def test_the_report_of_an_empty_lake_says_so(tmp_path):
    result = build_report(tmp_path / "nothing", tmp_path / "out", plots=False)
    page = result.index.read_text(encoding="utf-8")
    assert page.count("No data in the lake for this section.") >= 4


@pytest.mark.parametrize("threshold", [None, 100, 0])
def test_table4_of_the_report_is_the_metrics_definition_and_names_its_exclusion(tmp_path, threshold):
    kwargs = {} if threshold is None else {"honeypot_min_ports": threshold}
    result = build_report(events_lake(tmp_path / "lake"), tmp_path / "out", plots=False, **kwargs)
    page = result.index.read_text(encoding="utf-8")
    want = python_figures(honeypot_min_ports=100 if threshold is None else threshold)
    assert f"<td>{want.pdr:.2%}</td><td>{want.ddr:.2%}</td>" in page
    if threshold == 0:
        assert "PDR and DDR count every IP" in page
    else:
        assert "PDR and DDR leave out 2 IPs the standard scan found with 100 or more open ports" in page


def test_scanflow_query_and_report_on_a_lake(tmp_path):
    lake = str(build_lake(tmp_path / "lake"))
    runner = CliRunner()
    out = runner.invoke(main, ["query", "SELECT port, count(DISTINCT ip) AS ips FROM events_dedup "
                               "GROUP BY port ORDER BY ips DESC, port", "--lake", lake, "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:2] == ["port,ips", "80,2"]
    shown = runner.invoke(main, ["query", "SELECT banner FROM events WHERE banner IS NOT NULL LIMIT 1", "--lake", lake])
    assert shown.exit_code == 0 and _no_raw_controls(shown.output) and "\\x1b" in shown.output
    bad = runner.invoke(main, ["query", "SELECT nope FROM events", "--lake", lake])
    assert bad.exit_code == 2 and "query failed" in bad.output
    report = runner.invoke(main, ["report", "--out", str(tmp_path / "rep"), "--lake", lake, "--no-plots"])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "rep" / "index.html").is_file()
    info = runner.invoke(main, ["lake", "info", "--lake", lake])
    assert info.exit_code == 0 and "events" in info.output
    compact = runner.invoke(main, ["lake", "compact", "--lake", lake, "--table", "events"])
    assert compact.exit_code == 0 and "events:" in compact.output
    again = runner.invoke(main, ["query", "SELECT count(*) AS n FROM events", "--lake", lake, "--format", "json"])
    assert json.loads(again.output) == [{"n": 30}]  # compaction dropped the resent duplicates
