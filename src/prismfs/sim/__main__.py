"""``python -m prismfs.sim``: run simulation seeds; print how to replay a failure.

python -m prismfs.sim --seeds 1000            # seeds 0..999, 1/3/5 nodes in turn
python -m prismfs.sim --seed 17 --nodes 3     # replay one seed exactly
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from prismfs.sim.simulator import Violation, run_seed

NODE_CHOICES = (1, 3, 5)


def nodes_for(seed: int) -> int:
    return NODE_CHOICES[seed % len(NODE_CHOICES)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prismfs.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=0, help="run this many seeds")
    parser.add_argument("--start", type=int, default=0, help="first seed of --seeds")
    parser.add_argument("--seed", type=int, help="run exactly this seed")
    parser.add_argument("--nodes", type=int, help="cluster size (default: by seed, 1/3/5)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    if not seeds:
        parser.error("give --seeds N or --seed S")
    failures = 0
    started = time.monotonic()
    for seed in seeds:
        n = args.nodes or nodes_for(seed)
        try:
            result = run_seed(seed, n)
        except (Violation, AssertionError, Exception) as exc:
            failures += 1
            print(f"seed {seed} ({n} nodes) FAILED: {exc}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
            print(f"  replay: python -m prismfs.sim --seed {seed} --nodes {n} -v", file=sys.stderr)
            continue
        if args.verbose or args.seed is not None:
            print(
                f"seed {seed} ({n} nodes): {result.completed}/{result.operations} ops, "
                f"{result.end_time} ms simulated, trace {result.trace_hash}"
            )
    elapsed = time.monotonic() - started
    print(f"{len(seeds) - failures} passed, {failures} failed ({elapsed:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
