"""The Kafka side of one ``scanflow run``: its own five topics (``<prefix>.run-<run id>.events`` ...,
created from the declarative topic list with the same partitions and configs, so a run never
resumes another run's state; deleted at the end), its two consumer groups (the agents' group
settling before the scheduler starts; the scheduler's group committing up to the events' end before
the scheduler is stopped), and the record counts shown in the progress line.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


class RunTopics:
    """The run's topics (:attr:`names`, keyed like ``settings.topics``) and consumer groups."""

    def __init__(self, settings, run_id: str):
        self.settings = settings
        prefix = settings.topics.events.rsplit(".", 1)[0] if "." in settings.topics.events else "scanflow"
        base = f"{prefix}.run-{run_id}"
        self.names = {"events": f"{base}.events", "commands": f"{base}.commands",
                      "ip_state": f"{base}.ip-state", "dead_letter": f"{base}.dead-letter",
                      "kb_updates": f"{base}.kb-updates"}
        #: The scheduler's consumer group, and the agents'.
        self.scheduler_group = f"scanflow-run-{run_id}"
        self.agents_group = f"scanflow-run-{run_id}-agents"
        self._consumer = None
        self._admin = None

    def set_args(self) -> list[str]:
        """``--set`` arguments that point a child ``scanflow`` at the run's topics."""
        return [f"--set=topics.{k}={v}" for k, v in self.names.items()]

    def create(self) -> None:
        """The run's five topics, with the partitions and configs of the declarative list."""
        from connectors.kafka_admin import admin_client, apply_topics, load_topic_specs

        names = dataclasses.replace(self.settings.topics, **self.names)
        admin = admin_client(self.settings.kafka)
        try:
            apply_topics(admin, load_topic_specs(names), report=lambda line: None)
        finally:
            admin.close()

    def delete(self, echo: Callable[[str], None]) -> None:
        """Delete the run's topics that exist; never raises (a failure is reported, the run's own
        outcome is what the caller reports)."""
        admin = None
        try:
            from connectors.kafka_admin import admin_client

            admin = admin_client(self.settings.kafka)
            existing = set(admin.list_topics())
            names = [t for t in self.names.values() if t in existing]
            if names:
                admin.delete_topics(names)
        except Exception as exc:  # noqa: BLE001 - leftover topics are harmless; say so and go on
            echo(f"run: could not delete the run's topics ({exc}); delete {self.names['events']} etc. by hand")
        finally:
            if admin is not None:
                admin.close()

    def wait_for_agents(self, agents: int, check_alive: Callable[[], None], echo: Callable[[str], None],
                        timeout_s: float = 60.0) -> None:
        """Return once the agents' consumer group is stable with every agent in it (or after
        ``timeout_s``, saying so: the run goes on, its first commands may then run twice).
        ``check_alive`` raises when a child died."""
        from connectors.kafka_admin import admin_client

        group = self.agents_group
        deadline = time.monotonic() + timeout_s
        admin = admin_client(self.settings.kafka)
        try:
            while time.monotonic() < deadline:
                check_alive()
                try:
                    info = admin.describe_groups([group]).get(group) or {}
                except Exception:  # noqa: BLE001 - the group may not exist yet
                    info = {}
                state = info.get("group_state") or info.get("state")
                if state == "Stable" and len(info.get("members") or []) >= agents:
                    return
                time.sleep(0.5)
        finally:
            admin.close()
        echo(f"run: the agents' group {group} did not settle within {timeout_s:.0f} s; going on")

    def drain_scheduler(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until the scheduler's group has committed up to the events' end."""
        from kafka import KafkaAdminClient

        from connectors.kafka_io import make_consumer, topic_partitions

        consumer = make_consumer(self.settings.kafka)
        admin = KafkaAdminClient(**self.settings.kafka.client_options())
        try:
            tps = topic_partitions(consumer, [self.names["events"]])
            ends = consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                committed = admin.list_consumer_group_offsets(self.scheduler_group)
                if all((committed.get(tp).offset if committed.get(tp) else 0) >= end for tp, end in ends.items()):
                    return
                time.sleep(0.5)
        finally:
            consumer.close()
            admin.close()

    # ---- progress ---------------------------------------------------------------------------
    def records(self, topic: str) -> int:
        """Records in ``topic`` (sum of its partitions' end offsets)."""
        from connectors.kafka_io import make_consumer, topic_partitions

        if self._consumer is None:
            self._consumer = make_consumer(self.settings.kafka)
        tps = topic_partitions(self._consumer, [topic])
        return sum(self._consumer.end_offsets(tps).values())

    def health(self) -> dict[str, int | None]:
        """For the dashboard: dead letters so far, and the scheduler's consumer lag on the events
        topic (records not yet committed; None when the broker does not say). Never raises."""
        out: dict[str, int | None] = {"dead_letters": None, "scheduler_lag": None}
        try:
            out["dead_letters"] = self.records(self.names["dead_letter"])
            from connectors.kafka_io import topic_partitions

            if self._admin is None:
                from connectors.kafka_admin import admin_client

                self._admin = admin_client(self.settings.kafka)
            tps = topic_partitions(self._consumer, [self.names["events"]])
            ends = self._consumer.end_offsets(tps)
            committed = self._admin.list_consumer_group_offsets(self.scheduler_group)
            out["scheduler_lag"] = sum(max(0, end - (committed[tp].offset if committed.get(tp) else 0))
                                       for tp, end in ends.items())
        except Exception:  # noqa: BLE001 - health is a report, never a reason to stop the run
            pass
        return out

    def close(self) -> None:
        """Close the consumer of :meth:`records`; never raises."""
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # noqa: BLE001 - as below
                pass
            self._admin = None
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001 - closing a progress consumer must not hide the outcome
                pass
            self._consumer = None
