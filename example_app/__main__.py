"""``python -m example_app`` — run the MCP server and its demo services on loopback until Ctrl-C.
``python -m example_app --selftest`` — walk the whole flow headlessly and exit 0 on success.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from . import settings
from .client import FlowError
from .demo import DEMO_USERS
from .selftest import run_flow
from .stack import start_stack


def _ports(base: int) -> dict[str, int]:
    return {name: base + offset for name, (_key, offset) in settings.SERVICE_KEYS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__)
    parser.add_argument("--selftest", action="store_true",
                        help="run the whole flow headlessly on free ports, print the tool results, exit")
    parser.add_argument("--user", default="alice", help="demo user for --selftest (default: alice)")
    default_port = int(os.environ.get("EXAMPLE_PORT", settings.DEFAULT_PORT))
    parser.add_argument("--port", type=int, default=default_port,
                        help="port of the MCP server; the demo services use the next five ports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config: dict[str, Any] = {}
    demo_setup = not os.environ.get("MCP_AUTH_STORAGE") and not os.environ.get("MCP_AUTH_SIGNING_KEYS")
    if demo_setup or args.selftest:
        # Memory storage, an ephemeral signing key and SECRET_KEY are the demo's choice, not a mistake:
        # keep the start-up warnings about them out of a newcomer's first screen.
        logging.getLogger("flask_mcp_auth").setLevel(logging.ERROR)
        logging.getLogger("example_app").setLevel(logging.ERROR)
    if args.selftest:
        return _selftest(args.user, config)
    config["EXAMPLE_BROWSER_DEMO"] = True  # /demo: walk the chain with just a browser
    stack = start_stack(port=args.port, service_ports=_ports(args.port), config=config)
    print(f"MCP server:          {stack.mcp_url}")
    print(f"authorization server: {stack.issuer}")
    for name, server in stack.services.servers.items():
        print(f"demo {name + ':':16}{server.url}")
    print("demo users:          " + ", ".join(f"{u.username} ({u.name})" for u in DEMO_USERS)
          + " — or type any name on a login page")
    print(f"in a browser:        {stack.issuer}/demo  (sign in through all three providers, see the tools)")
    print(f"MCP clients:         connect to {stack.mcp_url} (e.g. `npx @modelcontextprotocol/inspector`)")
    if demo_setup:
        print("storage:             memory, with an ephemeral signing key (production: docs/deployment.md)")
    print("Ctrl-C to stop.")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        print("stopped")
    return 0


def _selftest(username: str, config: dict[str, Any]) -> int:
    try:
        stack = start_stack(config=config)
    except Exception as exc:
        print(f"selftest: could not start the stack: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"selftest: MCP server at {stack.mcp_url}")
        run_flow(stack, username, say=print)
        exchanges = stack.services.code_exchanges()
        print(f"selftest: upstream code exchanges {exchanges}")
        if set(exchanges.values()) != {1}:
            raise FlowError("expected exactly one code exchange per provider")
    except (FlowError, OSError, ValueError, KeyError) as exc:
        print(f"selftest: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    print("selftest: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
