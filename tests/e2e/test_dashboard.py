"""What a run found, end to end: a real short ``scanflow run`` (sim backend, real broker, Prism,
scheduler and agents) makes a lake once per session; a hostile banner is then added to it as one
more round of one more address. On that lake:

- the report tells the truth (compressed clock, no standard baseline, no inf/NaN, ip_state archived);
- ``scanflow hosts`` and ``scanflow exposure`` answer, and agree with the dashboard;
- the dashboard (``scanflow serve``) is driven in real headless Chromium (Playwright with Debian's
  chromium): every page loads and shows no inf/NaN, search finds a known device, the exposure counts
  equal a DuckDB query of the same definition on the same lake, the hostile banner is shown as text
  and no script runs. Screenshots go to docs/img/dashboard_*.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from scanflow.config import REPO_ROOT
from tests.conftest import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOT_A_NUMBER = re.compile(r"\b(inf|nan)\b|inf%|nan%", re.IGNORECASE)
HOSTILE_IP = "10.0.11.250"
HOSTILE = b"<script>alert(1)</script><img src=x onerror=\"document.title='pwned'\">"
RESPONSIVE = ("RESPONSIVE_ESTIMATED", "RESPONSIVE_UNESTIMATED")
PAGES = {"overview": "/", "inventory": "/hosts", "changes": "/changes", "exposure": "/exposure",
         "efficiency": "/efficiency"}


def _env(kafka) -> dict:
    return {**os.environ, "SCANFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}


def _add_hostile_round(lake: Path) -> None:
    """One more round, of an address the run never saw, whose banner is a script."""
    from connectors.parquet_lake import write_table

    from connectors.duckdb_catalog import Catalog

    with Catalog(lake) as cat:
        last = cat.sql("SELECT max(ended_at) AS t FROM observations").to_pylist()[0]["t"]
        assert not cat.sql("SELECT ip FROM observations WHERE ip = ?", [HOSTILE_IP]).num_rows
    us = int(last.timestamp() * 1e6)
    write_table(lake, "observations", [{
        "ip": HOSTILE_IP, "scan_id": f"hostile/{HOSTILE_IP}", "agent_id": "test", "command_id": None,
        "policy": "EFFICIENT", "started_at": us, "ended_at": us, "port_set_name": "light", "port_set_version": 1,
        "port_set_ports": [80], "ports_probed": 1,
        "responses": [{"port": 80, "transport": "TCP", "banner": HOSTILE, "banner_protocol": "http", "ttl": None,
                       "window": None}],
        "status": "COMPLETE", "fingerprint": "hostile", "device": None}])


@pytest.fixture(scope="session")
def run_lake(kafka, prism_binary, tmp_path_factory) -> Path:
    """A lake made by a real short run (3,000 addresses, 3 virtual days of 10 s), plus the hostile round."""
    base = tmp_path_factory.mktemp("dashboard-run")
    lake = base / "lake"
    out = subprocess.run([sys.executable, "-m", "scanflow", "run", "--ips", "3000", "--days", "3",
                          "--day-seconds", "10", "--agents", "2", "--skip-kafka-up", "--no-dashboard", "--no-report",
                          "--run-dir", str(base / "run"), "--lake", str(lake)],
                         cwd=REPO_ROOT, env=_env(kafka), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _add_hostile_round(lake)
    return lake


@pytest.fixture(scope="session")
def dashboard(run_lake, kafka):
    """``scanflow serve`` on the run's lake; its base URL."""
    port = free_port()
    log = open(run_lake.parent / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "scanflow", "serve", "--lake", str(run_lake), "--port", str(port)],
                            cwd=REPO_ROOT, env=_env(kafka), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/hosts", timeout=10) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"scanflow serve did not come up: {(run_lake.parent / 'serve.log').read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    # module scope: Playwright's sync API runs an event loop on this thread while it is open, and the
    # tests after this module call asyncio.run()
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (infra/system-deps.sh chromium, or apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


def _hosts_json(lake: Path, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "scanflow", "hosts", "--lake", str(lake), "--json", *args],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# -- the lake and the report --------------------------------------------------------------------


def test_the_run_archives_ip_state_and_describes_its_clock(run_lake):
    from connectors.duckdb_catalog import Catalog
    from connectors.lake_meta import read_run_meta

    meta = read_run_meta(run_lake)
    assert meta is not None and meta.status == "done" and meta.day_seconds == 10
    assert meta.progress["virtual_days"] == pytest.approx(3, abs=0.01)
    # the run's health as the dashboard shows it: each agent's own Prometheus figures, dead letters
    agents = meta.progress["agents"]
    assert set(agents) == {"agent-0", "agent-1"}
    assert all(a["answering"] == 1 and a["probes_total"] > 0 and a["exclusions_healthy"] == 1 for a in agents.values())
    assert meta.progress["dead_letters"] >= 0
    with Catalog(run_lake) as cat:
        assert cat.clock.compressed
        tracked = cat.sql("SELECT count(DISTINCT ip) AS n FROM decisions WHERE status IN "
                          "('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED')").to_pylist()[0]["n"]
        states = cat.sql("SELECT count(DISTINCT ip) AS n FROM ip_state").to_pylist()[0]["n"]
    assert tracked > 0 and states == tracked


def test_the_report_of_a_live_run_tells_the_truth(run_lake, tmp_path):
    from connectors.report import build_report
    from tests.unit.connectors.test_report_truth import page_text

    result = build_report(run_lake, tmp_path / "report")
    text = page_text(result.index.read_text(encoding="utf-8"))
    assert "No standard baseline in this lake" in text
    assert "compressed" in text and "virtual" in text
    assert "Not derived: this lake has no standard (exhaustive) scan" in text
    assert not NOT_A_NUMBER.search(text), NOT_A_NUMBER.search(text)
    # Figure 6 in virtual days: the 12 h rung of the ladder shows as 0.5, not 0
    figure6 = text[text.index("Figure 6"):text.index("Figure 7")]
    assert re.search(r"\b0\.5\b", figure6), figure6[:800]
    # 3 virtual days: the daily figures have their days, so they are plotted
    assert (tmp_path / "report" / "figure7_attempts.png").exists()
    lake_section = text[text.index("Lake"):text.index("What the scan found")]
    assert re.search(r"ip_state\s+\d+\s+[1-9]", lake_section), lake_section
    # what was found: the same inventory as scanflow hosts
    hosts = _hosts_json(run_lake)
    found = re.search(r"exposed to known malware\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", text)
    assert found, text[text.index("What the scan found"):][:600]
    up = [h for h in hosts if h["state"] == "up"]
    assert [int(x) for x in found.groups()] == [len(hosts), len(up), len(hosts) - len(up),
                                                sum(1 for h in up if h["device"]), sum(1 for h in up if h["threats"])]


# -- the CLI ------------------------------------------------------------------------------------


def test_scanflow_hosts_filters_and_agrees_with_the_lake(run_lake):
    from connectors.duckdb_catalog import Catalog

    hosts = _hosts_json(run_lake)
    with Catalog(run_lake) as cat:
        answered = {r["ip"] for r in cat.sql(
            "SELECT DISTINCT ip FROM observations WHERE len(responses) > 0").to_pylist()}
    assert {h["ip"] for h in hosts} == answered
    hostile = next(h for h in hosts if h["ip"] == HOSTILE_IP)
    assert "\\x" not in hostile["banners"]["80"] and hostile["banners"]["80"].startswith("<script>")
    estimated = [h for h in hosts if h["device"]]
    assert estimated, "the run estimated no device"
    d = estimated[0]
    by_port = _hosts_json(run_lake, "--port", str(d["open_ports"][0]))
    assert d["ip"] in {h["ip"] for h in by_port} and all(d["open_ports"][0] in h["open_ports"] for h in by_port)
    by_prefix = _hosts_json(run_lake, "--prefix", d["ip"].rsplit(".", 1)[0] + ".0/24")
    assert by_prefix and all(h["ip"].startswith(d["ip"].rsplit(".", 1)[0] + ".") for h in by_prefix)
    if d["category"]:
        assert all(h["category"] == d["category"] for h in _hosts_json(run_lake, "--category", d["category"]))


# -- the dashboard in Chromium ------------------------------------------------------------------


def test_every_page_loads_without_inf_or_nan(dashboard, page):
    img = REPO_ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    for name, path in PAGES.items():
        response = page.goto(dashboard + path)
        assert response.status == 200, path
        text = page.inner_text("body")
        assert not NOT_A_NUMBER.search(text), (path, NOT_A_NUMBER.search(text))
        assert "Internal Server Error" not in text
        page.screenshot(path=str(img / f"dashboard_{name}.png"), full_page=name != "inventory")
    assert "No standard baseline in this lake" in page.inner_text("body")     # the efficiency page, last


def test_search_finds_a_known_device(dashboard, page, run_lake):
    from connectors.duckdb_catalog import Catalog

    with Catalog(run_lake) as cat:
        known = cat.sql("SELECT ip, device FROM ip_state_latest WHERE device IS NOT NULL ORDER BY ip LIMIT 1").to_pylist()
    assert known, "the run estimated no device"
    ip, device = known[0]["ip"], known[0]["device"]
    page.goto(dashboard + "/hosts")
    page.fill("#search", device)
    page.click("button[type=submit]")
    page.wait_for_selector("#hosts")
    assert ip in page.inner_text("#hosts")
    page.click(f"a[href='/host/{ip}']")
    page.wait_for_selector("#banners")
    assert ip in page.inner_text("h1")
    page.screenshot(path=str(REPO_ROOT / "docs" / "img" / "dashboard_host.png"), full_page=True)


def _exposed_by_sql(cat, models: list[str], ports: list[int]) -> int:
    """The exposure definition (connectors/exposure.py) as one DuckDB query: devices up whose model
    the family infects with one of its ports open (the scheduler's state where the lake has it,
    else the latest round)."""
    if not models:
        return 0
    return cat.sql("""
        WITH resp AS (SELECT ip, arg_max(device, ended_at) AS device,
                             arg_max(list_transform(responses, lambda r: r.port), ended_at) AS ports
                      FROM observations_dedup WHERE len(responses) > 0 GROUP BY ip),
             last AS (SELECT ip, arg_max(len(responses) > 0, ended_at) AS up FROM observations_dedup GROUP BY ip),
             st AS (SELECT ip, arg_max(status, updated_at) AS status, arg_max(device, updated_at) AS device,
                           arg_max(open_ports, updated_at) AS ports FROM ip_state_dedup GROUP BY ip),
             dec AS (SELECT ip, arg_max(status, decided_at) AS status FROM decisions_dedup GROUP BY ip),
             h AS (SELECT r.ip, coalesce(st.device, r.device) AS device,
                          CASE WHEN len(st.ports) > 0 THEN st.ports ELSE r.ports END AS ports,
                          coalesce(st.status, dec.status) AS status, last.up
                   FROM resp r JOIN last USING (ip) LEFT JOIN st USING (ip) LEFT JOIN dec USING (ip))
        SELECT count(*) AS n FROM h
        WHERE (CASE WHEN status IS NULL THEN up ELSE status IN ('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED') END)
          AND list_contains(?, device) AND list_has_any(ports, ?)""", [models, ports]).to_pylist()[0]["n"]


def test_exposure_counts_equal_a_duckdb_query(dashboard, page, run_lake):
    from connectors.duckdb_catalog import Catalog
    from scanflow.knowledge import load_knowledge

    kb = load_knowledge()
    page.goto(dashboard + "/exposure")
    shown = {row.get_attribute("data-family"): int(row.query_selector(".devices").inner_text())
             for row in page.query_selector_all("#exposure-malware tr[data-family]")}
    with Catalog(run_lake) as cat:
        expected = {}
        for m in kb.malware:
            # a family's ports on each model it attacks (Malware.attack_on), one query per model
            expected[m.id] = sum(_exposed_by_sql(cat, [d.id], sorted(hit[0]))
                                 for d in kb.devices if (hit := m.attack_on(d)) is not None)
    assert shown == {k: v for k, v in expected.items() if v}
    assert sum(shown.values()) > 0, "no exposure in the run's lake: the check would be empty"


def test_a_hostile_banner_is_text_and_no_script_runs(dashboard, page):
    for path in (f"/host/{HOSTILE_IP}", "/hosts?q=alert"):
        page.goto(dashboard + path)
        assert "<script>alert(1)</script>" in page.inner_text("body"), path
        assert page.evaluate("document.querySelectorAll('script, img').length") == 0, path
        assert page.title() != "pwned" and page.dialogs == [], path
    page.goto(dashboard + f"/host/{HOSTILE_IP}")
    assert page.inner_text("#banners .banner").startswith("<script>alert(1)</script>")
    page.screenshot(path=str(REPO_ROOT / "docs" / "img" / "dashboard_hostile_banner.png"), full_page=True)


def test_the_dashboard_and_scanflow_hosts_agree(dashboard, page, run_lake):
    cli = _hosts_json(run_lake)
    with urllib.request.urlopen(dashboard + "/api/hosts", timeout=30) as r:
        api = json.loads(r.read())
    assert [h["ip"] for h in api] == [h["ip"] for h in cli]
    assert [(h["device"], h["open_ports"], h["threats"]) for h in api] == \
           [(h["device"], h["open_ports"], h["threats"]) for h in cli]
    page.goto(dashboard + "/hosts")
    assert page.inner_text("#host-count").startswith(f"{len(cli)} host")
    page.goto(dashboard + "/")
    assert page.inner_text("#hosts-up").split()[0] == str(sum(1 for h in cli if h["state"] == "up"))


def test_nothing_but_get_is_served(dashboard):
    for method in ("POST", "PUT", "DELETE"):
        req = urllib.request.Request(dashboard + "/hosts", method=method, data=b"")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 405
