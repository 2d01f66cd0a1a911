"""The budget calculator reproduces the paper's Table 5 exactly and answers what-ifs."""

from __future__ import annotations

from fractions import Fraction

import pytest
from click.testing import CliRunner

from scanflow.budget import BudgetParams, cadence_budget, compute_budget, fmt_number, format_budget
from scanflow.cli import main


def test_table5_golden_figures():
    b = compute_budget()
    rows = [(r.label, r.ports_per_ip, r.ips, r.ports) for r in (b.standard, *b.efficient)]
    assert rows == [
        ("standard", 11_000, 100_000, 1_100_000_000),
        ("responsive, estimated", Fraction("2.2"), 90, 198),
        ("responsive, not estimated", 5_100, 2_910, 14_841_000),
        ("non-responsive", 500, 97_000, 48_500_000),
    ]
    assert b.efficient_total == 63_341_198
    assert f"{float(b.share) * 100:.1f}" == "5.8"


def test_the_command_prints_table5_exactly():
    result = CliRunner().invoke(main, ["budget"])
    assert result.exit_code == 0, result.output
    out = result.output
    for line in ("standard                     11,000 x 100,000 = 1,100,000,000",
                 "responsive, estimated           2.2 x      90 =           198",
                 "responsive, not estimated     5,100 x   2,910 =    14,841,000",
                 "non-responsive                  500 x  97,000 =    48,500,000"):
        assert line in out
    assert "63,341,198  (5.8 % of standard)" in out
    assert "paper Table 5" in out


def test_what_ifs_change_the_figures_consistently():
    result = CliRunner().invoke(main, ["budget", "--ips", "1000000", "--responsive-share", "2.3%",
                                       "--unknown-ports", "3000"])
    assert result.exit_code == 0, result.output
    assert "what-if" in result.output
    b = compute_budget(BudgetParams(ips=1_000_000, responsive_share="0.023", unknown_ports=3000))
    assert b.efficient[2].ips == 977_000 and b.efficient[0].ips == 690 and b.efficient[1].ips == 22_310
    assert fmt_number(b.efficient_total) in result.output
    assert b.efficient_total == Fraction("2.2") * 690 + 3000 * 22_310 + 500 * 977_000


def test_cadence_view_counts_rounds_per_class():
    rows = cadence_budget(compute_budget(), 14)
    by_label = {r.label: r for r in rows}
    assert by_label["standard"].rounds_per_ip == 28
    assert by_label["non-responsive"].rounds_per_ip == 4  # 0, 3.5, 7, 10.5 days
    assert by_label["responsive, not estimated"].rounds_per_ip == 6  # 0, 0.5, 1.5, 3.5, 6.5, 11.5 days
    assert by_label["standard"].bytes == 100_000 * 11_000 * 28 * 54
    result = CliRunner().invoke(main, ["budget", "--days", "14"])
    assert result.exit_code == 0 and "30,800,000,000" in result.output


@pytest.mark.parametrize("args, hint", [
    (["--responsive-share", "1.5"], "--responsive-share"),
    (["--estimable-share", "abc"], "--estimable-share"),
    (["--unknown-ports", "-3"], "--unknown-ports"),
    (["--ips", "-1"], "--ips"),
    (["--days", "0"], "--days"),
])
def test_bad_input_is_one_line_naming_the_option(args, hint):
    result = CliRunner().invoke(main, ["budget", *args])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and hint in errors[0]


def test_format_budget_handles_zero_standard():
    b = compute_budget(BudgetParams(ips=0))
    assert "0.0 %" in format_budget(b)
