"""``scanflow portsets``: derive the published port sets and the ranking they are cut from."""

from __future__ import annotations

from pathlib import Path

import click

from scanflow.cli import CliContext, pass_ctx


@click.group("portsets")
def portsets() -> None:
    """Derive the port sets the scheduler publishes (standard, silent, unknown) and the response
    ranking they are cut from (the adaptive policy's light set comes from it)."""


@portsets.command("derive")
@click.option("--lake", "lake_dir", default=None, type=click.Path(file_okay=False),
              help="Derive from the responses recorded in this lake (a full-port or standard scan).")
@click.option("--source-policy", default=None,
              help="With --lake: only the responses of this policy's scans (e.g. STANDARD).")
@click.option("--synthetic", is_flag=True,
              help="Derive from the synthetic full-port survey (the sim world's; no data needed).")
@click.option("--survey-ips", type=click.IntRange(min=1000), default=100_000, show_default=True,
              help="With --synthetic: addresses of the survey.")
@click.option("--survey-seed", type=int, default=0, show_default=True, help="With --synthetic: its seed.")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Version of the named sets (a published version never changes: raise it for new sets).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for standard.json, silent.json, unknown.json and ranking.json.")
@pass_ctx
def derive(obj: CliContext, lake_dir, source_policy, synthetic, survey_ips, survey_seed, version, out_dir) -> None:
    """Derive the standard, silent and unknown-device sets and the response ranking with its device
    detection curve (ranking.json) into --out; point pipeline.standard_set, silent_set and unknown_set
    at the sets (the scheduler reads ranking.json beside standard_set)."""
    from scanflow.knowledge import load_knowledge
    from scanflow.portsets import write_derivation

    if bool(lake_dir) == bool(synthetic):
        raise click.UsageError("give one source: --lake DIR (a recorded scan) or --synthetic (the sim survey)")
    policy = obj.settings.policy
    kb = load_knowledge(policy.kb_paths(), builtin=policy.builtin_kb)
    if synthetic:
        import dataclasses

        from scanflow.evaluation import EvaluationConfig, derive_policy_sets

        cfg = EvaluationConfig(survey_ips=survey_ips, survey_seed=survey_seed)
        derivation, _ = derive_policy_sets(cfg, kb)
        if version != 1:
            derivation = dataclasses.replace(derivation, **{
                role: dataclasses.replace(getattr(derivation, role), version=version)
                for role in ("standard", "silent", "unknown")})
    else:
        from connectors.duckdb_catalog import Catalog

        with Catalog(Path(lake_dir)) as cat:
            derivation = cat.derive_port_sets(policy=source_policy, device_ports=kb.device_ports(),
                                              malware_ports=kb.malware_ports(), kb_version=kb.version,
                                              version=version)
    if not derivation.ranking:
        raise click.ClickException("no responses to derive from: the source has no open port")
    out = Path(out_dir).resolve()
    write_derivation(derivation, out)
    click.echo(f"derived from {derivation.responsive_ips:,} responsive addresses: standard "
               f"{len(derivation.standard):,}, silent {len(derivation.silent):,}, unknown "
               f"{len(derivation.unknown):,} ports; ranking of {len(derivation.ranking):,} ports in {out}")
    click.echo("use them with:")
    for role in ("standard", "silent", "unknown"):
        click.echo(f"  --set pipeline.{role}_set={out / f'{role}.json'}")


COMMANDS = [portsets]
