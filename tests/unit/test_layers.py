"""The architecture's layers hold: ``lint-imports`` checks the contracts declared in pyproject.toml.

The contracts (docs/ARCHITECTURE.md): the core imports no Beam, Kafka, network module, connector,
pipeline, agent or application code, not even inside a function; ``pipelines`` and ``probe_agent``
never import each other; the connectors know nothing of the layers above them; nothing imports the
application layer (the CLI and the orchestrator of ``scanflow run``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scanflow.config import REPO_ROOT


def test_every_layer_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is missing: pip install -c constraints.txt -e '.[dev]'"
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "4 kept" in out.stdout, out.stdout
