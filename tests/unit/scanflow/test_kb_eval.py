"""The knowledge base measured on the labelled corpus (tests/data/corpus), and the host-record
input of ``scanflow estimate --host`` and ``scanflow kb eval``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scanflow.cli import main
from scanflow.estimate import Estimator
from scanflow.kb_eval import CorpusError, evaluate, model_matches, parse_records, read_records
from scanflow.knowledge import load_knowledge

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"


@pytest.fixture(scope="module")
def est():
    return Estimator(load_knowledge())


@pytest.mark.parametrize("name", ["dev.jsonl", "heldout.jsonl"])
def test_the_corpus_meets_the_targets(est, name):
    records = read_records(CORPUS / name)
    tally = evaluate(est, records)
    r = tally.rates()
    assert r["records"] == len(records) >= 60
    assert r["with_vendor"] >= 0.7 * r["records"] and r["with_model"] >= 25
    assert r["vendor_recall"] >= 0.90, tally.misses
    assert r["model_recall"] >= 0.70, tally.misses
    assert r["wrong_vendor"] <= 0.02, tally.misses


def test_the_corpus_is_several_hundred_records_with_a_quarter_held_out():
    dev = read_records(CORPUS / "dev.jsonl")
    held = read_records(CORPUS / "heldout.jsonl")
    assert len(dev) + len(held) >= 250
    assert 0.2 <= len(held) / (len(dev) + len(held)) <= 0.3
    assert not {r.ip for r in dev} & {r.ip for r in held}
    assert all(r.ip.startswith(("198.18.", "192.0.2.")) for r in dev + held)


@pytest.mark.parametrize("ports, banners, vendor, model, category", [
    ([80], {80: b'HTTP/1.1 401 Unauthorized\r\nServer: Boa/0.94.14rc21\r\n'
                b'WWW-Authenticate: Basic realm="DCS-932L"\r\n\r\n'}, "D-Link", "DCS-932L", "camera"),
    ([23], {23: b"\xff\xfb\x01\xff\xfb\x03BusyBox v1.19.4 built-in shell\r\n(none) login: "},
     "various", None, "embedded"),
    ([554, 37777], {554: b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: Dahua Rtsp Server\r\n\r\n"}, "Dahua", None, None),
    ([443, 37777], {443: b"TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256\nsubject: CN=IPC-HFW1320S, O=Dahua\n"
                         b"issuer: CN=IPC-HFW1320S, O=Dahua\nsan: DNS:ipc.local, IP:192.168.1.108\n\n"
                         b"HTTP/1.1 200 OK\r\nServer: Webs\r\n\r\n"}, "Dahua", "IPC-HFW1320S", "camera"),
    ([554], {554: b"RTSP/1.0 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"}, "Hikvision", None, "camera"),
])
def test_what_a_person_would_say(est, ports, banners, vendor, model, category):
    e = est.estimate(ports, banners)
    assert e.estimated and e.vendor == vendor and e.stated_model == model
    assert category is None or e.category == category
    assert any(ev.kind == "rule" for ev in e.evidence)


def test_a_vendor_product_wins_over_the_generic_platform_it_runs_on(est):
    boa_only = est.estimate([80], {80: b"HTTP/1.1 200 OK\r\nServer: Boa/0.94.14rc21\r\n\r\n"})
    assert boa_only.model == "boa-embedded" and boa_only.category == "embedded"
    dlink = est.estimate([80], {80: b'HTTP/1.1 401 Unauthorized\r\nServer: Boa/0.94.14rc21\r\n'
                                    b'WWW-Authenticate: Basic realm="DCS-930L"\r\n\r\n'})
    assert dlink.model == "dlink-camera"
    # servers that also run ordinary sites are too weak alone
    assert not est.estimate([80], {80: b"HTTP/1.1 200 OK\r\nServer: lighttpd/1.4.45\r\n\r\n"}).estimated


def test_model_matching_ignores_case_punctuation_and_prefixes():
    assert model_matches("TL-WR841N", "WR841N") and model_matches("DS-2CD2032-I", "ds-2cd2032-i")
    assert not model_matches("DCS-932L", "DCS-930L") and not model_matches("DCS-932L", None)


def test_bad_host_records_name_the_fix(tmp_path):
    for text, fix in (('{"ports": "80"}', "ports must be a list"),
                      ('{"banners": {"http": "x"}}', "PORT"),
                      ("{not json", "not valid JSON"),
                      ('{"ip": "192.0.2.1"}', "nothing to estimate"),
                      ("", "no host records")):
        with pytest.raises(CorpusError, match=fix):
            parse_records(text, "x")


def _cli(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_estimate_reads_a_whole_host_record_from_stdin_or_a_file(tmp_path):
    rec = {"ip": "192.0.2.7", "ports": [443, 37777],
           "tls": {"443": "TLS TLSv1.2 X\nsubject: CN=IPC-HDW1230S, O=Dahua\nissuer: CN=IPC-HDW1230S\n"}}
    r = _cli("estimate", "--host", "-", "--json", input=json.dumps(rec))
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["vendor"] == "Dahua" and out["stated_model"] == "IPC-HDW1230S" and out["model"] == "dahua-ipc"
    assert {m["id"] for m in out["malware"]} >= {"mirai"} and 23 in out["scan_ports"]
    path = tmp_path / "host.json"
    path.write_text(json.dumps(rec))
    r = _cli("estimate", "--host", str(path))
    assert r.exit_code == 0 and "states      model IPC-HDW1230S" in r.output and "malware     mirai" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"ports": [0]}')
    r = _cli("estimate", "--host", str(bad))
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "1..65535" in errors[0]


def test_kb_prints_coverage_and_kb_eval_prints_the_figures():
    r = _cli("kb")
    assert r.exit_code == 0 and "banner rules" in r.output and "ports scanned next per family" in r.output
    r = _cli("kb", "eval", str(CORPUS / "dev.jsonl"), "--json")
    assert r.exit_code == 0, r.output
    figures = json.loads(r.output)["corpora"][str(CORPUS / "dev.jsonl")]
    assert figures["vendor_recall"] >= 0.9
    r = _cli("kb", "eval", "/nonexistent/corpus.jsonl")
    assert r.exit_code == 2 and "cannot read it" in r.output


def test_the_simulated_devices_say_what_the_estimator_reads(est):
    """The simulator draws a known device's banners from the same knowledge: rendered as the world
    renders them, nearly every entry it can draw is estimated as its own vendor."""
    from scanflow.world import banners as B

    kb = est.kb
    tried = named = 0
    for d in kb.devices:
        for pick, kw in enumerate(d.world_keywords):
            for token in (1 << 8, 2 << 8, 0):  # a 200 page with a title, and a 401 with a realm
                banners = {}
                for port in sorted(d.ports):
                    data = B.render(int(B.PORT_PROTOCOL[port]), B.KEYWORD, keyword=kw, token=token + pick,
                                    seed=1, ip=7, port=port, t=3600, firmware=2)
                    if data:
                        banners[port] = data
                e = est.estimate(d.ports, banners)
                tried += 1
                named += e.estimated and kb.device(e.model).vendor == d.vendor and \
                    (d.vendor != "various" or e.model == d.id)
    assert tried >= 500 and named / tried >= 0.97, (named, tried)


def test_estimate_reads_the_newest_host_record_of_an_ip_from_the_lake(tmp_path):
    from tests.unit.connectors.test_catalog_queries import build_lake

    lake = str(build_lake(tmp_path / "lake"))
    r = _cli("estimate", "--ip", "192.0.2.1", "--lake", lake, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["model"] is None and out["scan_ports"] is None  # ports 80 and 443, a hostile banner
    r = _cli("estimate", "--ip", "192.0.2.1", "--lake", lake)
    assert r.exit_code == 0 and "banner 80" in r.output and "\x1b" not in r.output
    for args, fix in ((["--ip", "192.0.2.99", "--lake", lake], "no open port"),
                      (["--ip", "nope", "--lake", lake], "not an IP address"),
                      (["--ip", "192.0.2.1", "--ports", "80"], "one of --host")):
        r = _cli("estimate", *args)
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert r.exit_code == 2 and len(errors) == 1 and fix in errors[0], r.output
