"""``scanflow budget``, ``scanflow estimate`` and ``scanflow kb``: the policy core from the shell."""

from __future__ import annotations

import codecs
import json
import sys
from fractions import Fraction

import click

from scanflow.cli import CliContext, pass_ctx


class _Share(click.ParamType):
    """A share as a fraction (0.03) or a percentage (3%)."""

    name = "share"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        try:
            share = Fraction(text[:-1].strip()) / 100 if text.endswith("%") else Fraction(text)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a share; write e.g. 0.03 or 3%", param, ctx)
        if not 0 <= share <= 1:
            self.fail(f"{value!r} is outside 0..1 (0%..100%)", param, ctx)
        return share


class _Count(click.ParamType):
    """A non-negative number of ports per IP, decimals allowed (2.2)."""

    name = "number"

    def convert(self, value, param, ctx):
        try:
            number = Fraction(str(value).replace(",", "").replace("_", ""))
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number; write e.g. 5100 or 2.2", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative; give 0 or more", param, ctx)
        return number


@click.command("budget")
@click.option("--ips", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="IPs scanned.")
@click.option("--responsive-share", type=_Share(), default="0.03", show_default=True,
              help="Share of IPs that answer (0.03 or 3%).")
@click.option("--estimable-share", type=_Share(), default="0.03", show_default=True,
              help="Share of responsive IPs whose device can be estimated.")
@click.option("--standard-ports", type=_Count(), default="11000", show_default=True,
              help="Ports of the standard set.")
@click.option("--estimated-ports", type=_Count(), default="2.2", show_default=True,
              help="Mean ports probed on an estimated device.")
@click.option("--unknown-ports", type=_Count(), default="5100", show_default=True,
              help="Ports of the unknown-device set.")
@click.option("--silent-ports", type=_Count(), default="500", show_default=True,
              help="Ports of the silent (non-responsive) set.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Also show probes and bytes over this many days with the scan frequencies.")
def budget(ips, responsive_share, estimable_share, standard_ports, estimated_ports, unknown_ports,
           silent_ports, days) -> None:
    """Port budget of the standard and efficient scans: the paper's Table 5 by default, a what-if
    with any option changed."""
    from scanflow.budget import BudgetParams, cadence_budget, compute_budget, format_budget, format_cadence

    params = BudgetParams(ips, responsive_share, estimable_share, standard_ports, estimated_ports,
                          unknown_ports, silent_ports)
    paper = params == BudgetParams(responsive_share=Fraction("0.03"), estimable_share=Fraction("0.03"),
                                   standard_ports=Fraction(11000), estimated_ports=Fraction("2.2"),
                                   unknown_ports=Fraction(5100), silent_ports=Fraction(500))
    b = compute_budget(params)
    title = ("Port budget, one scan of each IP (paper Table 5)" if paper else
             "Port budget, one scan of each IP (what-if)")
    click.echo(format_budget(b, title))
    if days is not None:
        click.echo()
        click.echo(format_cadence(cadence_budget(b, days), days))


def _parse_ports(text: str) -> list[int]:
    ports = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise click.BadParameter(f"{part!r} is not a port or range; write e.g. 80,443,8000-8010",
                                     param_hint="--ports")
        first, last = int(lo), int(hi) if sep else int(lo)
        if not 1 <= first <= last <= 65535 or last - first > 65535:
            raise click.BadParameter(f"{part!r} is outside 1..65535", param_hint="--ports")
        ports.extend(range(first, last + 1))
    return ports


def _parse_banner(item: str, hint: str) -> tuple[int, str]:
    port, sep, value = item.partition("=")
    if not sep or not port.strip().isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"{item[:40]!r}: write PORT=TEXT, e.g. 80='Server: Hikvision-Webs'",
                                 param_hint=hint)
    return int(port), value


def _load_kb(kb_files, no_builtin):
    from scanflow.knowledge import KnowledgeError, load_knowledge

    configured = click.get_current_context().find_object(CliContext)
    if configured is not None:  # [policy] kb_files / builtin_kb from the configuration come first
        kb_files = (*configured.settings.policy.kb_paths(), *kb_files)
        no_builtin = no_builtin or not configured.settings.policy.builtin_kb
    try:
        return load_knowledge(kb_files, builtin=not no_builtin)
    except KnowledgeError as exc:
        raise click.BadParameter(str(exc), param_hint="--kb") from None


_kb_option = click.option("--kb", "kb_files", multiple=True, type=click.Path(dir_okay=False),
                          help="Extra knowledge-base TOML file (repeatable); see docs/POLICY.md.")
_no_builtin_option = click.option("--no-builtin-kb", "no_builtin", is_flag=True,
                                  help="Use only the --kb files, not the built-in knowledge.")


@click.command("estimate")
@click.option("--ports", "ports_text", default="", help="Open ports, e.g. 80,554,8000.")
@click.option("--banner", "banners", multiple=True, metavar="PORT=TEXT",
              help=r"Banner seen on PORT; \r \n \xNN escapes are decoded (repeatable).")
@click.option("--banner-file", "banner_files", multiple=True, metavar="PORT=PATH",
              help="Banner of PORT read from a file, as raw bytes (repeatable).")
@click.option("--host", "host_file", metavar="FILE",
              help="A whole host record (JSON: ports, banners, tls; JSON lines for several), '-' for stdin.")
@click.option("--ip", "ip", metavar="IP", help="Estimate the newest host record of IP in the lake.")
@click.option("--lake", default=None, help="Lake for --ip (default: the [lake] root setting).")
@click.option("--min-confidence", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@_kb_option
@_no_builtin_option
@pass_ctx
def estimate(obj: CliContext, ports_text, banners, banner_files, host_file, ip, lake, min_confidence, as_json,
             kb_files, no_builtin) -> None:
    """Estimate the device behind a host from its open ports and banners (or a whole host record
    with --host), with the evidence and the ports the efficient policy would scan next."""
    from scanflow.estimate import Estimator

    if host_file is not None or ip is not None:
        if ports_text or banners or banner_files or (host_file is not None and ip is not None):
            raise click.UsageError("give one of --host FILE, --ip IP or --ports/--banner")
        records = _read_host_records(host_file) if host_file is not None else [_lake_host_record(obj, ip, lake)]
        kb = _load_kb(kb_files, no_builtin)
        estimator = Estimator(kb, min_confidence=min_confidence)
        for i, rec in enumerate(records):
            if i:
                click.echo("")
            if len(records) > 1 and not as_json:
                click.echo(f"host        {rec.ip or i + 1}")
            est = estimator.estimate(rec.ports, rec.banners)
            _show_estimate(kb, est, rec.banners, min_confidence, as_json)
        return
    ports = _parse_ports(ports_text)
    grabbed: dict[int, bytes] = {}
    for item in banners:
        port, text = _parse_banner(item, "--banner")
        try:
            grabbed[port] = codecs.escape_decode(text.encode("utf-8"))[0]
        except ValueError as exc:
            raise click.BadParameter(f"{item[:40]!r}: bad escape ({exc}); write \\\\ for a backslash",
                                     param_hint="--banner") from None
    for item in banner_files:
        port, path = _parse_banner(item, "--banner-file")
        try:
            with open(path, "rb") as fh:
                grabbed[port] = fh.read(1 << 16)
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror}; give a readable file",
                                     param_hint="--banner-file") from None
    if not ports and not grabbed:
        raise click.UsageError("nothing to estimate: give --ports and/or --banner PORT=TEXT")
    kb = _load_kb(kb_files, no_builtin)
    est = Estimator(kb, min_confidence=min_confidence).estimate(set(ports) | set(grabbed), grabbed)
    _show_estimate(kb, est, grabbed, min_confidence, as_json)


def _lake_host_record(obj: CliContext, ip: str, lake: str | None):
    """The newest scan round of ``ip`` in the lake (its open ports and banners) as a host record."""
    import ipaddress

    from scanflow.kb_eval import HostRecord

    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise click.BadParameter(f"{ip[:40]!r} is not an IP address; write e.g. 192.0.2.1", param_hint="--ip") from None
    from connectors.duckdb_catalog import Catalog
    from connectors.lake_settings import lake_settings

    import duckdb

    root = lake or lake_settings(obj.settings).root_path()
    try:
        with Catalog(root) as cat:
            rows = cat.sql("""
                WITH newest AS (SELECT scan_id FROM responses WHERE ip = ? ORDER BY ts DESC, scan_id DESC LIMIT 1)
                SELECT port, banner FROM responses WHERE ip = ? AND scan_id IN (SELECT scan_id FROM newest)
                ORDER BY port""", [ip, ip]).to_pylist()
    except (duckdb.Error, OSError, RuntimeError, ValueError) as exc:
        raise click.BadParameter(f"cannot read the lake at {root} ({str(exc).splitlines()[0][:120]}); "
                                 "give --lake DIR", param_hint="--lake") from None
    if not rows:
        raise click.BadParameter(f"{ip} has no open port in the lake at {root}; check the address or --lake",
                                 param_hint="--ip")
    banners: dict[int, bytes] = {}
    for row in rows:
        if row["banner"] and int(row["port"]) not in banners:
            banners[int(row["port"])] = bytes(row["banner"])
    return HostRecord(ip, frozenset(int(r["port"]) for r in rows), banners)


def _read_host_records(path: str):
    from scanflow.kb_eval import CorpusError, parse_records, read_records

    try:
        if path == "-":
            return parse_records(sys.stdin.read(), "<stdin>")
        return read_records(path)
    except CorpusError as exc:
        raise click.BadParameter(str(exc), param_hint="--host") from None


def _show_estimate(kb, est, grabbed, min_confidence, as_json) -> None:
    from scanflow.estimate import safe_text

    malware = kb.malware_reasons(kb.device(est.model)) if est.model else ()
    if as_json:
        click.echo(json.dumps({
            "model": est.model, "category": est.category, "confidence": est.confidence,
            "vendor": est.vendor, "family": est.family, "stated_model": est.stated_model,
            "candidate": est.candidate, "runner_up": est.runner_up, "kb_version": kb.version,
            "evidence": [{"kind": e.kind, "value": e.value, "port": e.port, "weight": round(e.weight, 4)}
                         for e in est.evidence],
            "malware": [{"id": m.id, "why": why} for m, why in malware],
            "scan_ports": list(est.ports.sorted) if est.ports else None}, indent=1))
        return
    if est.model:
        device = kb.device(est.model)
        click.echo(f"model       {device.id}  ({device.vendor}: {device.name}; category {device.category})")
        if est.stated_model:
            click.echo(f"states      model {est.stated_model}")
    elif est.candidate:
        click.echo(f"model       none  (best candidate {est.candidate} below {min_confidence:g})")
    else:
        click.echo("model       none  (no rule, keyword or signature port matched)")
    click.echo(f"confidence  {est.confidence:.2f}" + (f"  (runner-up {est.runner_up})" if est.runner_up else ""))
    for i, e in enumerate(est.evidence):
        head = "evidence   " if i == 0 else "           "
        if e.kind == "keyword":
            what = f"keyword '{e.value}' in the banner of port {e.port}"
        elif e.kind == "rule":
            what = f"rule {e.value} on port {e.port}"
        elif e.kind == "signature-port":
            what = f"signature port {e.value} open"
        else:
            what = f"model uses {e.value} of the open ports"
        click.echo(f"{head} {what}  (+{e.weight:.2f})")
    for port, data in sorted(grabbed.items()):
        click.echo(f"banner {port:<5} {safe_text(data, 100)}")
    if est.ports is not None:
        device = kb.device(est.model)
        click.echo(f"scan next   {len(est.ports)} ports: {', '.join(map(str, est.ports.sorted))}")
        click.echo(f"            (model ports {', '.join(map(str, sorted(device.ports)))})")
        for m, why in malware:
            click.echo(f"malware     {m.id}: {why}")
        if not malware:
            click.echo("malware     none targets it")
    else:
        click.echo("scan next   the unknown-device port set")


@click.group("kb", invoke_without_command=True)
@_kb_option
@_no_builtin_option
@click.pass_context
def kb_check(ctx: click.Context, kb_files, no_builtin) -> None:
    """Validate the knowledge base (built-in and --kb files) and print its counts; `kb update`
    publishes what new knowledge files change for the live scheduler."""
    if ctx.invoked_subcommand is not None:
        return
    kb = _load_kb(kb_files, no_builtin)
    counts = kb.counts()
    click.echo(f"knowledge base {kb.version}: {counts['devices']} device models, {counts['malware']} malware "
               f"families, from {len(kb.sources)} files")
    click.echo("  " + ", ".join(f"{c} {n}" for c, n in counts.items() if c not in ("devices", "malware")))
    click.echo(f"  device ports {len(kb.device_ports())}, malware ports {len(kb.malware_ports())}, "
               f"together {len(kb.device_ports() | kb.malware_ports())}")
    for line in kb_coverage(kb):
        click.echo("  " + line)


def kb_coverage(kb) -> list[str]:
    """Coverage lines of ``scanflow kb``: vendors, product families, rules, what the rules can name,
    and the ports an estimated device is scanned on next."""
    vendors = {d.vendor for d in kb.devices if d.vendor != "various"}
    rules = [r for d in kb.devices for r in d.rules]
    capturing = [r for r in rules if "(?P<model>" in r.match]
    families_naming = {d.id for d in kb.devices if any("(?P<model>" in r.match for r in d.rules)}
    by_field: dict[str, int] = {}
    for r in rules:
        by_field[r.on] = by_field.get(r.on, 0) + 1
    sizes = sorted(len(kb.scan_ports(d.id)) for d in kb.devices)
    traits = {t for d in kb.devices for t in d.traits}
    attacked = sum(1 for d in kb.devices if kb.malware_for(d))
    return [
        f"vendors {len(vendors)}, product families {len(kb.devices)} "
        f"({sum(d.generic for d in kb.devices)} generic embedded platforms)",
        f"banner rules {len(rules)} ({len(capturing)} capture the model, in {len(families_naming)} families), "
        f"keywords {sum(len(d.keywords) for d in kb.devices)}",
        "rules by field: " + ", ".join(f"{f} {n}" for f, n in sorted(by_field.items(), key=lambda x: -x[1])),
        f"device traits {len(traits)}; families some malware targets {attacked}",
        f"ports scanned next per family: mean {sum(sizes) / len(sizes):.2f}, median {sizes[len(sizes) // 2]}, "
        f"max {sizes[-1]}",
    ]


@kb_check.command("eval")
@click.argument("corpora", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--misses", is_flag=True, help="List the records the estimate got wrong.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--min-confidence", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True)
@_kb_option
@_no_builtin_option
def kb_eval(corpora, misses, as_json, min_confidence, kb_files, no_builtin) -> None:
    """Measure how well the knowledge base names devices on labelled host records (JSON lines, see
    tests/data/corpus): vendor recall and precision, wrong vendors, model recall where the banners
    state the model, category."""
    from scanflow.estimate import Estimator
    from scanflow.kb_eval import CorpusError, evaluate, read_records

    kb = _load_kb(kb_files, no_builtin)
    estimator = Estimator(kb, min_confidence=min_confidence)
    out = {}
    for path in corpora:
        try:
            records = read_records(path)
        except CorpusError as exc:
            raise click.BadParameter(str(exc), param_hint="CORPORA") from None
        tally = evaluate(estimator, records)
        out[path] = tally.rates()
        if as_json:
            continue
        r = out[path]
        click.echo(f"{path}: {r['records']} labelled hosts; vendor recall {r['vendor_recall']:.1%} "
                   f"(of {r['with_vendor']}), precision {r['vendor_precision']:.1%}, wrong vendor "
                   f"{r['wrong_vendor']:.1%}; model recall {r['model_recall']:.1%} (of {r['with_model']} "
                   f"stating it); category {r['category']:.1%}")
        if misses:
            for line in tally.misses:
                click.echo(f"  miss {line}")
    if as_json:
        click.echo(json.dumps({"kb_version": kb.version, "corpora": out}, indent=1))


@kb_check.command("update")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Publish the update even when no model gains a port.")
@click.option("--dry-run", is_flag=True, help="Print what the update changes; publish nothing.")
@pass_ctx
def kb_update(obj: CliContext, files, force, dry_run) -> None:
    """Publish a knowledge update: the models whose scan ports FILES add to the knowledge the scheduler
    runs with (policy.kb_files) get every tracked address estimated as them rescanned at once on the
    new ports (one KnowledgeUpdate record to topics.kb_updates). Add FILES to policy.kb_files too, so
    the scheduler's next start probes the new ports on every full scan."""
    import time
    from pathlib import Path

    from scanflow.knowledge import KnowledgeError, load_knowledge
    from scanflow.knowledge_update import compare, update_record

    policy = obj.settings.policy
    configured = [Path(p) for p in policy.kb_paths()]
    given = [Path(f) for f in files]
    for path in given:
        if not path.is_file():
            raise click.BadParameter(f"{path}: no such file; give the knowledge TOML files to add",
                                     param_hint="FILES")
    # A file already in policy.kb_files counts as new: the knowledge before is without it.
    same = {p.resolve() for p in given}
    base = [p for p in configured if p.resolve() not in same]
    try:
        before = load_knowledge(base, builtin=policy.builtin_kb)
        after = load_knowledge(base + given, builtin=policy.builtin_kb)
    except KnowledgeError as exc:
        raise click.BadParameter(str(exc), param_hint="FILES") from None
    gain = compare(before, after)
    record = update_record(gain, int(time.time() * 1_000_000), tuple(p.name for p in given))
    click.echo(record["summary"])
    for model, ports in gain.gained.items():
        click.echo(f"  {model}: +{', '.join(map(str, sorted(ports)))}")
    if dry_run:
        click.echo("dry run: nothing published")
        return
    if not gain.gained and not force:
        click.echo("nothing to rescan: no update published (--force publishes it anyway)")
        return
    from connectors.kafka_admin import require_topics
    from connectors.kafka_io import AvroProducer

    topic = obj.settings.topics.kb_updates
    require_topics(obj.settings.kafka, {"topics.kb_updates": topic})
    with AvroProducer(obj.settings.kafka) as producer:
        producer.send(topic, "KnowledgeUpdate", record)
        producer.flush()
    click.echo(f"published {record['update_id']} to {topic}: {len(gain.gained)} models")


COMMANDS = [budget, estimate, kb_check]
