"""The two errors a command stops with before it does any work (docs/OPERATIONS.md)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message says the fix."""


class KafkaNotReady(RuntimeError):
    """A command cannot start: no broker answers, or a topic it needs does not exist. The message is
    one line naming the fix; commands exit with :attr:`exit_code` (docs/OPERATIONS.md)."""

    exit_code = 4
