"""The knowledge base: the built-in files validate and meet the counts; bad files are refused with
a message naming the fix; user files extend the built-in knowledge."""

from __future__ import annotations

import textwrap

import pytest

from scanflow.knowledge import (CATEGORIES, KnowledgeError, build_knowledge, builtin_files, keyword_words,
                                load_knowledge)


@pytest.fixture(scope="module")
def kb():
    return load_knowledge()


def test_builtin_knowledge_meets_the_counts(kb):
    counts = kb.counts()
    assert counts["devices"] >= 60
    assert counts["malware"] >= 15
    for category in ("camera", "dvr", "router", "nas", "printer", "voip", "building", "ics", "media", "mqtt"):
        assert counts[category] >= 2, category
    names = {m.id for m in kb.malware}
    assert {"mirai", "hajime", "satori", "mozi", "moobot", "adb-miner", "gafgyt", "tsunami",
            "hide-n-seek", "vpnfilter", "reaper", "okiru", "masuta", "muhstik", "echobot",
            "dark-nexus", "botenago"} <= names


def test_every_entry_has_ports_and_specific_keywords(kb):
    assert len({d.id for d in kb.devices}) == len(kb.devices)
    for d in kb.devices:
        assert d.ports and (d.keywords or d.rules) and d.category in CATEGORIES
        assert d.signature_ports <= d.ports
        for kw in d.keywords:
            assert sum(len(w) for w in keyword_words(kw)) >= 4, (d.id, kw)


def test_well_known_facts_are_present(kb):
    malware = {m.id: m for m in kb.malware}
    assert {37215, 52869} <= malware["satori"].target_ports
    assert malware["adb-miner"].target_ports == {5555}
    assert malware["adb-miner"].reason(kb.device("android-adb-box"))
    assert {23, 2323} <= malware["mirai"].target_ports
    assert 7547 in kb.device("tr069-cpe").ports
    assert 8291 in kb.device("mikrotik-routeros").ports
    assert "dvrdvs-webs" in kb.device("hikvision-nvr").keywords


def test_scan_ports_are_model_ports_and_the_ports_malware_attacks_them_on_but_never_c2(kb):
    cam = kb.device("hikvision-ipc")
    expected = set(cam.ports)
    for m in kb.malware:
        hit = m.attack_on(cam)
        if hit is not None:
            expected |= hit[0]
    assert kb.scan_ports(cam.id) == expected
    # Mirai brute-forces telnet on Hikvision's kind; Moobot uses the Hikvision web injection; 2323
    # is probed only where devices are known to run telnet there
    assert 23 in kb.scan_ports(cam.id) and 2323 not in kb.scan_ports(cam.id)
    assert {23, 2323} <= kb.scan_ports("huawei-echolife-ont")
    assert {m.id for m in kb.malware_for(cam)} >= {"mirai", "moobot"}
    # only the attacks that name the device count: Satori's 37215 is for the Huawei HG532
    assert 37215 not in kb.scan_ports(cam.id) and 37215 in kb.scan_ports("huawei-hg532")
    assert 52869 in kb.scan_ports("realtek-sdk-router")
    assert 48101 not in kb.scan_ports(cam.id)  # Mirai's report port lives on its servers
    printer = kb.device("hp-printer")
    assert kb.scan_ports(printer.id) == printer.ports  # no malware in the base infects printers
    # a malware naming a model infects it even outside its categories
    assert 5678 in kb.scan_ports("mikrotik-routeros")


def test_keyword_words_split_letters_from_digits_and_drop_punctuation():
    assert keyword_words("DVRDVS-Webs") == (b"dvrdvs", b"webs")
    assert keyword_words("HG532e") == (b"hg", b"532", b"e")
    assert keyword_words(b"FRITZ!Box 7590") == (b"fritz", b"box", b"7590")


def test_version_does_not_depend_on_entry_order(kb):
    reordered = build_knowledge(list(reversed(kb.devices)), list(reversed(kb.malware)))
    assert reordered.version == kb.version
    assert len(kb.version) == 16


def _write(tmp_path, body: str, name: str = "extra.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


GOOD_DEVICE = """
    [kb]
    schema = 1

    [[device]]
    id = "acme-cam"
    vendor = "Acme"
    name = "Acme test camera"
    category = "camera"
    ports = [80, 6001]
    signature_ports = [6001]
    keywords = ["acme camserver"]
"""


def test_user_files_extend_the_builtin_knowledge(tmp_path, kb):
    extended = load_knowledge([_write(tmp_path, GOOD_DEVICE)])
    assert len(extended.devices) == len(kb.devices) + 1
    assert extended.device("acme-cam").ports == {80, 6001}
    assert extended.version != kb.version
    # camera malware applies to the user's camera too
    assert {23, 2323} <= extended.scan_ports("acme-cam")
    only = load_knowledge([_write(tmp_path, GOOD_DEVICE)], builtin=False)
    assert [d.id for d in only.devices] == ["acme-cam"] and only.malware == ()


@pytest.mark.parametrize("change, message", [
    (("schema = 1", "schema = 9"), "schema"),
    (('category = "camera"', 'category = "toaster"'), "category 'toaster'"),
    (("ports = [80, 6001]", "ports = [80, 70000]"), "1..65535"),
    (("ports = [80, 6001]", "ports = [80, 80, 6001]"), "twice"),
    (("ports = [80, 6001]", "ports = []"), "empty"),
    (('keywords = ["acme camserver"]', 'keywords = ["ac"]'), "at least 4"),
    (('keywords = ["acme camserver"]', 'keywords = []'), "keywords is empty"),
    (("signature_ports = [6001]", "signature_ports = [7000]"), "not in ports"),
    (('vendor = "Acme"', 'vendor = "Acme"\n    colour = "red"'), "unknown key 'colour'"),
    (('vendor = "Acme"\n', ''), "missing required key 'vendor'"),
    (('id = "acme-cam"', 'id = "Acme Cam"'), "id 'Acme Cam'"),
    (("ports = [80, 6001]", 'ports = "80"'), "ports must be a list"),
])
def test_invalid_device_entries_are_refused_with_the_fix(tmp_path, change, message):
    body = GOOD_DEVICE.replace(*change)
    with pytest.raises(KnowledgeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_knowledge([_write(tmp_path, body)], builtin=False)


def test_duplicate_ids_across_files_are_refused(tmp_path):
    a = _write(tmp_path, GOOD_DEVICE, "a.toml")
    b = _write(tmp_path, GOOD_DEVICE, "b.toml")
    with pytest.raises(KnowledgeError, match="already defined in a.toml"):
        load_knowledge([a, b], builtin=False)


def test_a_builtin_id_cannot_be_redefined(tmp_path):
    body = GOOD_DEVICE.replace('id = "acme-cam"', 'id = "hikvision-ipc"')
    with pytest.raises(KnowledgeError, match="hikvision-ipc"):
        load_knowledge([_write(tmp_path, body)])


def test_malware_must_infect_known_categories_and_target_known_models(tmp_path):
    base = """
        [kb]
        schema = 1

        [[malware]]
        id = "testbot"
        name = "Testbot"
        infects = ["camera"]
        target_ports = [23]
    """
    assert load_knowledge([_write(tmp_path, base)], builtin=False).malware[0].scan_ports == {23}
    with pytest.raises(KnowledgeError, match="unknown: \\['fridge'\\]"):
        load_knowledge([_write(tmp_path, base.replace('["camera"]', '["fridge"]'))], builtin=False)
    with pytest.raises(KnowledgeError, match="unknown device ids"):
        load_knowledge([_write(tmp_path, base + '        targets = ["nope"]\n')], builtin=False)


def test_unreadable_or_missing_files_are_refused(tmp_path):
    with pytest.raises(KnowledgeError, match="not found"):
        load_knowledge([tmp_path / "missing.toml"], builtin=False)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[kb\nschema = 1")
    with pytest.raises(KnowledgeError, match="not valid"):
        load_knowledge([bad], builtin=False)


def test_builtin_files_are_packaged_toml():
    files = builtin_files()
    assert len(files) >= 5 and all(f.suffix == ".toml" for f in files)


def test_schema_2_rules_must_match_their_example_and_name_known_fields(tmp_path):
    base = """
        [kb]
        schema = 2

        [[device]]
        id = "acme-cam"
        vendor = "Acme"
        name = "Acme camera"
        category = "camera"
        ports = [80]
        rules = [{ on = "http.realm", match = '^(?P<model>AC-\\d{3})', example = "AC-100" }]
    """
    kb = load_knowledge([_write(tmp_path, base)], builtin=False)
    assert kb.device("acme-cam").rules[0].example == "AC-100"
    with pytest.raises(KnowledgeError, match="does not match its own example"):
        load_knowledge([_write(tmp_path, base.replace('"AC-100"', '"XY-100"'))], builtin=False)
    with pytest.raises(KnowledgeError, match="is not a banner field"):
        load_knowledge([_write(tmp_path, base.replace('"http.realm"', '"http.cookie"'))], builtin=False)
    with pytest.raises(KnowledgeError, match="not a valid regular expression"):
        load_knowledge([_write(tmp_path, base.replace("'^(?P<model>AC-\\d{3})'", "'(AC'"))], builtin=False)
    with pytest.raises(KnowledgeError, match="only named group"):
        load_knowledge([_write(tmp_path, base.replace("?P<model>", "?P<x>"))], builtin=False)


def test_schema_2_malware_attacks_name_what_and_where(tmp_path):
    text = """
        [kb]
        schema = 2

        [[device]]
        id = "acme-router"
        vendor = "Acme"
        name = "Acme router"
        category = "router"
        ports = [80]
        traits = ["busybox"]
        keywords = ["acmerouter"]

        [[device]]
        id = "acme-printer"
        vendor = "Acme"
        name = "Acme printer"
        category = "printer"
        ports = [9100]
        keywords = ["acmeprinter"]

        [[malware]]
        id = "testbot"
        name = "Testbot"
        target_ports = [23, 2323]
        attacks = [{ trait = "busybox", ports = [23], why = "telnet" }]
    """
    kb = load_knowledge([_write(tmp_path, text)], builtin=False)
    assert kb.scan_ports("acme-router") == {80, 23}
    assert kb.scan_ports("acme-printer") == {9100}
    assert "busybox" in kb.malware[0].reason(kb.device("acme-router"))
    with pytest.raises(KnowledgeError, match="exactly one of trait, vendor or device"):
        load_knowledge([_write(tmp_path, text.replace('trait = "busybox"', 'trait = "busybox", vendor = "Acme"'))],
                       builtin=False)
    with pytest.raises(KnowledgeError, match="unknown device ids"):
        load_knowledge([_write(tmp_path, text.replace('trait = "busybox"', 'device = "nope"'))], builtin=False)


def test_an_attack_uses_only_ports_the_malware_lists(tmp_path):
    text = """
        [kb]
        schema = 2

        [[malware]]
        id = "testbot"
        name = "Testbot"
        target_ports = [23]
        attacks = [{ trait = "busybox", ports = [23, 80] }]
    """
    with pytest.raises(KnowledgeError, match=r"ports \[80\] are not in target_ports"):
        load_knowledge([_write(tmp_path, text)], builtin=False)
