"""Device estimation: right models from realistic banners, explainable confidence, safe on any bytes."""

from __future__ import annotations

import pickle
import re

import pytest
from hypothesis import given, settings, strategies as st

from scanflow.estimate import COVERAGE, KEYWORD, SIGNATURE_PORT, Estimator, safe_text
from scanflow.knowledge import DeviceModel, Malware, build_knowledge, keyword_words, load_knowledge


@pytest.fixture(scope="module")
def kb():
    return load_knowledge()


@pytest.fixture(scope="module")
def est(kb):
    return Estimator(kb)


@pytest.mark.parametrize("ports, banners, model", [
    ([80, 554], {80: b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"}, "hikvision-ipc"),
    ([80, 554, 8000], {80: b"HTTP/1.1 401\r\nServer: DVRDVS-Webs\r\n"}, "hikvision-nvr"),
    ([21, 8291], {21: b"220 MikroTik FTP server (MikroTik 6.48.6) ready\r\n"}, "mikrotik-routeros"),
    ([5000, 5001], {5000: b"HTTP/1.1 200 OK\r\n\r\n<title>Synology DiskStation</title>"}, "synology-dsm"),
    ([80, 37215], {80: b"<title>HG532e</title>"}, "huawei-hg532"),
    ([5555], {5555: b"CNXN\x00\x00\x00\x01device::ro.product.name=p212;ro.product.model=X96"}, "android-adb-box"),
    ([34567, 80], {}, "xiongmai-dvr"),
    ([1883], {1883: b"mosquitto version 2.0.15"}, "mosquitto-broker"),
    ([10001], {10001: b"\x01I20100\nIN-TANK INVENTORY\n"}, "veeder-root-atg"),
])
def test_known_devices_are_estimated(est, kb, ports, banners, model):
    e = est.estimate(ports, banners)
    assert e.model == model, (e.candidate, e.confidence, e.evidence)
    assert e.category == kb.device(model).category
    assert 0.5 <= e.confidence <= 1.0
    assert e.ports is not None and e.ports.ports == kb.scan_ports(model)
    assert e.ports.is_inline and len(e.ports) <= 64


def test_nothing_known_gives_no_estimate(est):
    e = est.estimate([80, 443], {80: b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\n"})
    assert e.model is None and e.candidate is None and e.ports is None and e.confidence == 0.0
    assert not e.estimated


def test_evidence_explains_the_score(est):
    e = est.estimate([80, 554, 8000], {80: b"Server: DVRDVS-Webs"})
    kinds = {(ev.kind, ev.value, ev.port) for ev in e.evidence}
    assert (KEYWORD, "dvrdvs webs", 80) in kinds
    assert (SIGNATURE_PORT, "8000", 8000) in kinds
    assert (COVERAGE, "3/3", None) in kinds
    # hikvision-ipc shares the keyword and the signature port, but it is the same vendor: the
    # runner-up that lowers the confidence is the best entry of another vendor
    assert e.model == "hikvision-nvr" and e.vendor == "Hikvision"
    assert e.runner_up is None or not e.runner_up.startswith("hikvision")


def _tiny_kb(*devices: DeviceModel, malware=()):
    return build_knowledge(list(devices), list(malware))


def _dev(id, ports, keywords, sig=(), category="camera", vendor=None):
    return DeviceModel(id, vendor or f"vendor of {id}", id, category, frozenset(ports), tuple(keywords),
                       frozenset(sig))


def test_confidence_formula_for_a_unique_keyword_and_full_coverage():
    est = Estimator(_tiny_kb(_dev("a-cam", [80, 554], ["alpha cam"]), _dev("b-cam", [80], ["bravo"])))
    e = est.estimate([80, 554], {80: b"Alpha Cam v2"})
    # score = 1 (unique keyword) + 0.25 * 2/2; confidence = 1.25 / 1.75, no runner-up
    assert e.model == "a-cam" and e.confidence == pytest.approx(1.25 / 1.75, abs=1e-4)


def test_a_tie_is_not_an_estimate_but_keeps_the_candidate():
    est = Estimator(_tiny_kb(_dev("a-cam", [80], ["shared word"]), _dev("b-cam", [80], ["shared word", "bravo"])))
    tie = est.estimate([80], {80: b"shared word"})
    # both score 0.5 + 0.25: confidence = 0.75/1.25 * (1 - 0.5) = 0.3
    assert tie.model is None and tie.candidate in ("a-cam", "b-cam")
    assert tie.confidence == pytest.approx(0.3, abs=1e-4)
    assert est.estimate([80], {80: b"shared word bravo"}).model == "b-cam"


def test_a_tie_between_two_families_of_one_vendor_still_names_the_vendor():
    est = Estimator(_tiny_kb(_dev("a-cam", [80], ["shared word"], vendor="Acme"),
                             _dev("a-nvr", [80], ["shared word"], vendor="Acme", category="dvr")))
    e = est.estimate([80], {80: b"shared word"})
    assert e.model in ("a-cam", "a-nvr") and e.vendor == "Acme"
    assert e.confidence == pytest.approx(0.75 / 1.25, abs=1e-4)


def test_malware_ports_join_the_scan_ports():
    kb = _tiny_kb(_dev("a-cam", [80], ["alpha cam"]), _dev("r", [7547], ["routerx"], category="router"),
                  malware=[Malware("m", "M", frozenset({"camera"}), frozenset({23}), frozenset({31337}),
                                   frozenset({48101}))])
    e = Estimator(kb).estimate([80], {80: b"alpha cam"})
    assert e.ports.ports == {80, 23, 31337}


def test_matching_is_case_insensitive_on_whole_words(est):
    assert "hikvision" in est.keywords_in(b"SERVER: HIKVISION")
    assert "hikvision" not in est.keywords_in(b"xhikvisionx")
    assert "hg 532" in est.keywords_in(b"model=HG532e")
    assert est.keywords_in("Server: Hikvision-Webs") == est.keywords_in(bytearray(b"Server: Hikvision-Webs"))


def test_work_is_bounded_by_banner_size_and_count(kb):
    est = Estimator(kb, max_banner_bytes=64, max_banners=2)
    late = b"x" * 100 + b" hikvision"
    assert est.estimate([80], {80: late}).model is None
    banners = [(p, b"nothing") for p in (1, 2)] + [(3, b"Hikvision-Webs")]
    assert est.estimate([80], banners).candidate is None


def test_min_confidence_is_the_threshold(kb):
    strict = Estimator(kb, min_confidence=0.9)
    e = strict.estimate([34567, 80], {})
    assert e.model is None and e.candidate == "xiongmai-dvr"
    with pytest.raises(ValueError):
        Estimator(kb, min_confidence=0)


def test_estimator_pickles_and_estimates_the_same(est):
    again = pickle.loads(pickle.dumps(est))
    args = ([80, 554, 8000], {80: b"Server: DVRDVS-Webs"})
    assert again.estimate(*args) == est.estimate(*args)


def test_memo_does_not_change_results(kb):
    est = Estimator(kb, cache_size=2)
    banners = [b"Server: Hikvision-Webs", b"mosquitto", b"220 MikroTik", b"nginx"] * 3
    first = [est.keywords_in(b) for b in banners]
    assert first == [Estimator(kb).keywords_in(b) for b in banners]


def test_safe_text_never_lets_control_bytes_through():
    text = safe_text(b"ok\x1b[31mred\x00\xff\r\n\xe3\x81\x82", 100)
    assert "\x1b" not in text and "\x00" not in text and text.isprintable()
    assert "\\x1b" in text and "\\r\\n" in text and "\u3042" in text
    assert len(safe_text(b"a" * 1000, 20)) == 20


ports_st = st.frozensets(st.integers(min_value=-5, max_value=70000), max_size=40)
banner_st = st.one_of(st.binary(max_size=600),
                      st.sampled_from([b"Hikvision-Webs", b"DVRDVS-Webs", b"MikroTik", b"HG532", b"\xff" * 10]),
                      st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))


@settings(max_examples=500, deadline=None)
@given(ports_st, st.lists(st.tuples(st.integers(0, 70000), banner_st), max_size=8))
def test_any_input_gives_a_valid_estimate(est, kb, ports, banners):
    e = est.estimate(ports, banners)
    assert 0.0 <= e.confidence <= 1.0
    if e.model is not None:
        assert e.confidence >= est.min_confidence
        assert kb.device(e.model).ports <= e.ports.ports
    else:
        assert e.ports is None
    for ev in e.evidence:
        assert ev.weight >= 0 and isinstance(ev.value, str)


# --- the command line ---------------------------------------------------------------------------

def _cli(*args):
    from click.testing import CliRunner

    from scanflow.cli import main

    return CliRunner().invoke(main, list(args))


def test_estimate_command_shows_model_evidence_and_scan_ports(kb):
    r = _cli("estimate", "--ports", "80,554,8000", "--banner", r"80=HTTP/1.1 200 OK\r\nServer: DVRDVS-Webs\r\n")
    assert r.exit_code == 0, r.output
    assert "hikvision-nvr" in r.output and "keyword 'dvrdvs webs' in the banner of port 80" in r.output
    assert f"scan next   {len(kb.scan_ports('hikvision-nvr'))} ports" in r.output
    assert "\\r\\n" in r.output  # the banner is shown escaped, not raw


def test_estimate_command_json_and_user_kb(tmp_path):
    kb_file = tmp_path / "mine.toml"
    kb_file.write_text('[kb]\nschema = 1\n\n[[device]]\nid = "acme-cam"\nvendor = "Acme"\nname = "Acme"\n'
                       'category = "camera"\nports = [80, 6001]\nkeywords = ["acme camserver"]\n')
    r = _cli("estimate", "--ports", "80", "--banner", "80=Acme CamServer 1.0", "--kb", str(kb_file), "--json")
    assert r.exit_code == 0, r.output
    import json

    data = json.loads(r.output)
    assert data["model"] == "acme-cam" and 6001 in data["scan_ports"] and 23 in data["scan_ports"]


def test_estimate_command_reads_raw_banner_files(tmp_path):
    f = tmp_path / "b.bin"
    f.write_bytes(b"\xff\xfe\x00 220 MikroTik FTP server ready\r\n")
    r = _cli("estimate", "--banner-file", f"21={f}")
    assert r.exit_code == 0 and "mikrotik-routeros" in r.output


def test_kb_command_validates_and_counts():
    r = _cli("kb")
    assert r.exit_code == 0 and "device models" in r.output and "malware families" in r.output


def test_estimate_command_rejects_bad_input_with_one_line(tmp_path):
    bad_kb = tmp_path / "bad.toml"
    bad_kb.write_text("[kb]\nschema = 99\n")
    for args, hint in ((["--ports", "80,abc"], "--ports"), (["--ports", "0"], "--ports"),
                       (["--banner", "http=x"], "--banner"), (["--banner-file", "80=/nonexistent/x"], "--banner-file"),
                       (["--ports", "80", "--kb", str(bad_kb)], "--kb"), ([], "nothing to estimate")):
        r = _cli("estimate", *args)
        assert r.exit_code == 2, (args, r.output)
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and hint in errors[0], (args, r.output)


def _reference_keywords(kb, data: bytes) -> set[str]:
    """The definition, slowly: a keyword matches when its words occur consecutively among the banner's."""
    words = re.findall(rb"[a-z]+|[0-9]+", data.lower())
    text = b" " + b" ".join(words) + b" "
    out = set()
    for d in kb.devices:
        for kw in d.keywords:
            kw_words = keyword_words(kw)
            if b" " + b" ".join(kw_words) + b" " in text:
                out.add(" ".join(w.decode() for w in kw_words))
    return out


DIGIT_KB = build_knowledge([_dev("digits", [80], ["3com switch", "2wire gateway"]),
                            _dev("letters", [80], ["hg532", "acme box"])], [])
fragments = st.sampled_from([b"3com", b"Switch", b"2WIRE", b"gateway", b"HG", b"532", b"e", b"acme", b"box",
                             b" ", b"-", b"/", b"\xff", b"\xc3\xa9", b"\r\n", b"0", b"x"])


@settings(max_examples=500, deadline=None)
@given(st.lists(fragments, max_size=20).map(b"".join))
def test_fast_matching_equals_the_word_definition(data):
    assert set(Estimator(DIGIT_KB).keywords_in(data)) == _reference_keywords(DIGIT_KB, data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fast_matching_equals_the_word_definition_on_the_builtin_kb(kb, est, data):
    banner = data + b" Hikvision-Webs DVRDVS-Webs HG532e " + data
    assert set(est.keywords_in(banner)) == _reference_keywords(kb, banner)


# -- Telnet greetings: matched and shown without their option negotiation ---------------------------

TELNET_NEGOTIATION = bytes([255, 251, 1, 255, 251, 3, 255, 253, 24, 255, 253, 31])


def test_safe_text_shows_a_telnet_greeting_without_its_negotiation():
    banner = TELNET_NEGOTIATION + b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n(none) login: "
    text = safe_text(banner, 200)
    assert text.startswith("\\r\\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)")
    assert text.endswith("(none) login: ") and "\\xff" not in text
    assert safe_text(b"\xff\xfe", 10) == "\\xff\\xfe"              # not a Telnet command: escaped as ever
    assert safe_text(b"\xff\xfd\x01\x1b[31m", 20) == "\\x1b[31m"   # the rest is still escaped


def test_keywords_after_a_telnet_negotiation_are_found():
    """Any byte can be an option code; one that is a letter ran into the greeting's first word."""
    est = Estimator(_tiny_kb(_dev("acme-cam", [23, 80], ["acme camserver"])))
    text = b"Acme CamServer 2.1 login: "
    assert est.keywords_in(text) == ("acme camserver",)
    for negotiation in (TELNET_NEGOTIATION, b"\xff\xfdZ", b"\xff\xfb\x01\xff\xfa\x18\x01\xff\xf0\xff\xfdQ"):
        assert est.keywords_in(negotiation + text) == ("acme camserver",), negotiation
        assert est.estimate([23], {23: negotiation + text}).model == "acme-cam"
