"""``python -m tests.testbed.serve --spec FILE --log FILE``: serve the device kinds of a JSON spec
(a list of ``{"ip", "port", "kind", ...}``) until killed; see :mod:`tests.testbed.services`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tests.testbed.services import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.serve")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(json.loads(Path(args.spec).read_text()), args.log))


if __name__ == "__main__":
    main(sys.argv[1:])
