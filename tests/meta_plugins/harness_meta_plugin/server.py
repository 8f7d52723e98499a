"""The toy backend's server: tests/loopback_servers.py's scripted OpenAI-compatible server on
the port it is given, serving the model under the name it is given, until it is stopped."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for loopback_servers

from loopback_servers import ScriptedServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    with ScriptedServer(model=args.name, host=args.host, port=args.port):
        threading.Event().wait()  # until SIGTERM, which the harness sends to the whole group


if __name__ == "__main__":
    main()
