"""The `busstop` command: one subcommand per developer task."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="busstop")
    commands = parser.add_subparsers(dest="command", required=True)

    from busstop import stack, status
    from worker.planner import cli as plan_cli

    up = commands.add_parser("up", help="start Redis, workers and the gateway on this machine")
    stack.add_arguments(up)
    up.set_defaults(run=stack.run)

    status_parser = commands.add_parser("status", help="the pool: workers and their load, queues, batch jobs")
    status.add_arguments(status_parser)
    status_parser.set_defaults(run=status.run)

    plan = commands.add_parser("plan", help="does a model fit a GPU: weights, KV cache, TP degree")
    plan_cli.add_arguments(plan)
    plan.set_defaults(run=plan_cli.run)

    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ValueError as e:
        print(f"busstop {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
