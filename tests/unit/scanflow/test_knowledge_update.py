"""What a knowledge update changes (scanflow.knowledge_update) and `scanflow kb update`."""

from __future__ import annotations

from click.testing import CliRunner

from connectors.avro_codec import AvroCodec, InvalidPort, InvalidRecord
from scanflow.cli import main
from scanflow.knowledge import build_knowledge, load_knowledge, parse_knowledge
from scanflow.knowledge_update import compare, summary, update_record

import pytest

NEW_MALWARE = """
[kb]
schema = 1

[[malware]]
id = "camworm-test"
name = "Camworm (test)"
infects = ["nas"]
targets = ["hikvision-ipc"]
target_ports = [37777, 23]
listen_ports = [31337]

[[device]]
id = "brand-new-cam"
vendor = "Nobody"
name = "New camera"
category = "camera"
ports = [80, 9999]
keywords = ["brandnewcam"]
"""


def _plus(text: str):
    base = load_knowledge()
    devices, malware = parse_knowledge(__import__("tomllib").loads(text), source="new.toml")
    return base, build_knowledge([*base.devices, *devices], [*base.malware, *malware])


def test_models_gain_the_ports_of_a_new_malware_family_that_infects_them():
    before, after = _plus(NEW_MALWARE)
    gain = compare(before, after)
    nas = {d.id for d in before.devices if d.category == "nas"}
    assert set(gain.gained) == nas | {"hikvision-ipc"}            # by category and by naming the model
    for model, ports in gain.gained.items():
        assert ports == after.scan_ports(model) - before.scan_ports(model)
    # Hikvision already had 23 (Mirai); only what is new counts
    assert gain.gained["hikvision-ipc"] == {37777, 31337}
    assert gain.new_models == ("brand-new-cam",) and gain.added_malware == ("camworm-test",)
    assert "brand-new-cam" not in gain.gained                      # no address is estimated as it yet
    line = summary(gain)
    assert "\n" not in line and "camworm-test" in line and f"{len(gain.gained)} models gain" in line


def test_nothing_gained_says_so():
    kb = load_knowledge()
    gain = compare(kb, kb)
    assert gain.gained == {} and "no model known before gains a scan port" in summary(gain)


def test_the_update_record_keeps_the_contract():
    before, after = _plus(NEW_MALWARE)
    record = update_record(compare(before, after), 1_714_564_800_000_000, ("new.toml",))
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("KnowledgeUpdate", record), expect={"KnowledgeUpdate"}).record
    assert decoded["changes"] == record["changes"] and decoded["kb_version_before"] == before.version
    assert record["update_id"].startswith("kbu-") and decoded["sources"] == ["new.toml"]
    assert update_record(compare(before, after), 1_714_564_800_000_001)["update_id"] != record["update_id"]


@pytest.mark.parametrize("change, error", [
    ({"changes": [{"model": "", "new_ports": [1]}]}, InvalidRecord),
    ({"changes": [{"model": "a", "new_ports": []}]}, InvalidRecord),
    ({"changes": [{"model": "a", "new_ports": [1]}, {"model": "a", "new_ports": [2]}]}, InvalidRecord),
    ({"changes": [{"model": "a", "new_ports": [70000]}]}, InvalidPort),
    ({"update_id": ""}, InvalidRecord),
])
def test_records_that_break_the_contract_are_refused(change, error):
    record = {"update_id": "kbu-1", "issued_at": 1, "kb_version_before": "a", "kb_version_after": "b",
              "changes": [{"model": "m", "new_ports": [80]}], "added_malware": [], "sources": [],
              "summary": "", **change}
    with pytest.raises(error):
        AvroCodec().encode("KnowledgeUpdate", record)


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_kb_update_prints_one_line_and_the_models_and_publishes_nothing_on_a_dry_run(tmp_path):
    f = tmp_path / "new.toml"
    f.write_text(NEW_MALWARE)
    r = _cli("kb", "update", "--dry-run", str(f))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "models gain ports" in lines[0] and "  hikvision-ipc: +31337, 37777" in lines
    assert lines[-1] == "dry run: nothing published"


def test_kb_update_without_gain_publishes_nothing(tmp_path):
    f = tmp_path / "empty.toml"
    f.write_text("[kb]\nschema = 1\n")
    r = _cli("kb", "update", str(f))       # no broker needed: nothing is sent
    assert r.exit_code == 0 and "nothing to rescan" in r.output and "--force" in r.output


def test_kb_update_bad_input_is_one_line_naming_the_fix(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[kb]\nschema = 99\n")
    for args, fix in (([str(tmp_path / "missing.toml")], "no such file"), ([str(bad)], "schema = 2"), ([], "FILES")):
        r = CliRunner().invoke(main, ["kb", "update", *args])
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert r.exit_code == 2 and len(errors) == 1 and fix in errors[0], r.output


def test_kb_without_a_subcommand_still_validates():
    r = _cli("kb")
    assert r.exit_code == 0 and "device models" in r.output
