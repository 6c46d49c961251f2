#!/usr/bin/env python3
"""Write tiny random-weight GGUF pairs of real architectures: OUT/<llm-arch>-<projector>/{model.gguf,mmproj.gguf}.

Example: python scripts/make_tiny_models.py --out build/tiny
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from audiokv_edge.testing.tiny_models import TINY_PAIRS, write_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--only", nargs="*", choices=sorted(TINY_PAIRS), help="write only these pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    written = write_all(args.out, seed=args.seed, names=args.only)
    for name, (model, mmproj) in written.items():
        print(f"{name}: {model} {mmproj}")
    print(f"{len(written)} pairs in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
