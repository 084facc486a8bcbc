"""``python -m core demo``: build the demo workspace in the foreground (``core.demo``); the app queues the same
build as a background run."""
from __future__ import annotations

import argparse
import json
import sys


def configure_demo(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about a third of the full build's time; weaker models")
    size.add_argument("--tiny", action="store_true", help="for tests: minimal sizes, same steps; useless models")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed")


def run_demo(args: argparse.Namespace) -> int:
    from core import demo
    from core.runs.recorder import RunCancelled

    try:
        report = demo.build("tiny" if args.tiny else "quick" if args.quick else "full", seed=args.seed)
    # PhantomError, DatasetError, ConfigError and JobError are all ValueErrors with a readable message
    except (ValueError, FileNotFoundError) as error:
        print(f"error: demo failed: {error}", file=sys.stderr)
        return 2
    except (RunCancelled, KeyboardInterrupt) as error:
        print(f"demo cancelled ({error or 'interrupted'})", file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    return 0
