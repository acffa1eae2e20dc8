"""Forward and training-step images/s: twin vs the PyTorch peer at the Sensorium-baseline shapes.

The issue-3 benchmark.

    python benchmarks/train.py [--quick] [--json] [--no-peer]

The measurements are twin.bench's (see its docstring); `twin bench` runs the whole suite.
"""

import argparse
import sys

from twin.bench import bench_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (checks the script runs)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    args = parser.parse_args(argv)
    return bench_command(quick=args.quick, as_json=args.json, peer=not args.no_peer, parts=("forward", "train"))


if __name__ == "__main__":
    sys.exit(main())
