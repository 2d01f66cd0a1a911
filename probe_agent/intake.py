"""Command intake: a record of the commands topic becomes a command to execute, or does not.

Decoding (a malformed record is a dead letter), the shard filter, duplicates (command ids already
executed, or running now), refusals (a dead letter and a REFUSED ScanDone per target), expiry, and
the dead letter of a command that failed; a command left to the next agent (:class:`NotStarted`)
keeps its offset uncommitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from connectors.avro_codec import CodecError
from connectors.kafka_io import DeliveryError
from probe_agent.job import Prepared, TargetTally
from probe_agent.offsets import OffsetTracker, partition_of
from probe_agent.safety import Refusal
from probe_agent.targets import Target

log = logging.getLogger("scanflow.agent")

#: Command ids remembered as executed (redeliveries of these are skipped).
DONE_IDS_KEPT = 100_000


class NotStarted(Exception):
    """The agent is stopping and this command had not started: leave it to the next agent
    (its offset is not committed, nothing was published for it)."""


class CommandIntake:
    """Vets records of the commands topic into commands for ``execute``; refuses and dead-letters.

    ``refusal_us(command)`` is the time a refused command's ScanDones carry; ``on_fatal(exc)`` is
    told when not even a dead letter could be sent (the agent stops; the command runs again).
    """

    def __init__(self, settings, metrics, publisher, codec, tracker: OffsetTracker,
                 execute: Callable[..., Awaitable[list[TargetTally]]],
                 refusal_us: Callable[[dict], int], on_fatal: Callable[[BaseException], None]) -> None:
        self.settings, self.metrics, self.publisher, self.codec = settings, metrics, publisher, codec
        self.tracker = tracker
        self._execute, self._refusal_us, self._on_fatal = execute, refusal_us, on_fatal
        self._done_ids: OrderedDict[str, None] = OrderedDict()
        self._inflight_ids: dict[str, asyncio.Task] = {}

    # -- records of the commands topic -------------------------------------------------------------

    async def handle(self, rec) -> None:
        """Run one command record; mark its offset finished unless cancelled, not started or
        fatally failed."""
        try:
            await self._handle_record(rec)
        except NotStarted:
            self.metrics.commands["left-for-next-agent"] += 1
            return
        except (DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - errors are data: dead-letter, keep going
            log.exception("command at %s/%d@%d failed", rec.topic, rec.partition, rec.offset)
            self.metrics.errors["command-failed"] += 1
            try:
                self.dead_letter(rec.key, rec.value, "AgentError", f"{type(exc).__name__}: {exc}", rec)
            except Exception as inner:  # noqa: BLE001 - cannot even report it: stop, re-run later
                self._on_fatal(inner)
                return
        self.tracker.finish(partition_of(rec), rec.offset)

    async def _handle_record(self, rec) -> None:
        try:
            command = self.codec.decode_as("ScanCommand", rec.value)
        except CodecError as exc:
            self.metrics.commands["malformed"] += 1
            self.dead_letter(rec.key, rec.value, exc.error_class, str(exc), rec)
            return
        cid = command["command_id"]
        hint = command.get("shard_hint")
        if self.settings.shards > 1 and hint is not None and hint != self.settings.shard:
            self.metrics.commands["other-shard"] += 1
            return
        if cid in self._done_ids:
            self.metrics.commands["duplicate"] += 1
            return
        running = self._inflight_ids.get(cid)
        if running is not None:
            await asyncio.shield(running)
            self.metrics.commands["duplicate"] += 1
            return
        self._inflight_ids[cid] = asyncio.current_task()
        try:
            await self._execute(command, source=rec)
        finally:
            self._inflight_ids.pop(cid, None)

    def remember(self, command_id: str) -> None:
        """``command_id`` was executed (or refused): a redelivery of it is skipped."""
        if command_id:
            self._done_ids[command_id] = None
            while len(self._done_ids) > DONE_IDS_KEPT:
                self._done_ids.popitem(last=False)

    # -- refusals and dead letters -----------------------------------------------------------------

    def refuse(self, command: dict, refusal: Refusal, source: Any) -> list[TargetTally]:
        """Refuse a whole command: dead letter + a REFUSED ScanDone per target that parses."""
        log.warning("command %s refused: %s", command.get("command_id"), refusal.message,
                    extra={"command_id": command.get("command_id"), "refusal": refusal.error_class})
        self.metrics.commands["refused"] += 1
        value = source.value if source is not None else self._encode_refused(command)
        key = source.key if source is not None else None
        self.dead_letter(key, value, refusal.error_class, refusal.message, source)
        tallies = []
        now = self._refusal_us(command)
        for text in command.get("targets") or ():
            try:
                target = Target.parse(text)
            except ValueError:
                continue
            tally = TargetTally(f"{command.get('command_id')}/{target.text}", target, command,
                                command.get("policy") or "UNKNOWN", started_us=now, ended_us=now,
                                status="REFUSED", detail=refusal.message[:500])
            self.publisher.done(tally)
            self.metrics.dones_published += 1
            tallies.append(tally)
        self.remember(command.get("command_id") or "")
        return tallies

    def _encode_refused(self, command: dict) -> bytes | None:
        """The bytes a refused command without a source record is dead-lettered with: validated when
        it can be, else as written (a malformed target is the reason it is refused, and must not
        stop the refusal), else none (the headers still say why)."""
        from connectors.avro_codec import AvroCodec

        try:
            return self.codec.encode("ScanCommand", command)
        except (CodecError, ValueError, TypeError, KeyError):
            pass
        try:
            return AvroCodec(validate=False).encode("ScanCommand", command)
        except Exception:  # noqa: BLE001 - a record that cannot be written at all: headers only
            return None

    def refuse_targets(self, prepared: Prepared, detail: str, now: int) -> list[TargetTally]:
        """Answer every target of a vetted command REFUSED (an expired command: no dead letter)."""
        tallies = []
        for target in prepared.targets:
            tally = TargetTally(f"{prepared.command_id}/{target.text}", target, prepared.command,
                                prepared.policy, started_us=now, ended_us=now, status="REFUSED", detail=detail)
            self.publisher.done(tally)
            self.metrics.dones_published += 1
            tallies.append(tally)
        self.metrics.commands["expired"] += 1
        self.remember(prepared.command_id)
        return tallies

    def dead_letter(self, key, value, error_class: str, message: str, source: Any) -> None:
        """The record (original bytes) to the dead-letter topic, with where it came from."""
        kwargs = {}
        if source is not None:
            kwargs = dict(topic=source.topic, partition=source.partition, offset=source.offset,
                          timestamp_ms=source.timestamp, headers=list(source.headers or []))
        self.publisher.dead_letter(key, value, error_class, message, **kwargs)
        self.metrics.dead_letters += 1
