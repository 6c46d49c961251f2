#!/usr/bin/env python3
"""Assemble the built-in demo model (build/demo/model.gguf + mmproj.gguf) from the pip packages' pretrained parts
and the committed trained projector, checking each file against audiokv_edge/data/demo/SHA256SUMS.

    .venv/bin/python scripts/build_demo_model.py            # what scripts/setup.sh runs
    .venv/bin/python scripts/build_demo_model.py --record   # after training: record the new sha256 sums
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from audiokv_edge.demo_model import export  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=None, help="output directory (default build/demo)")
    ap.add_argument("--record", action="store_true", help="write SHA256SUMS from this build instead of checking")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        files = export.assemble(args.out, record=args.record)
    except (export.DemoModelError, FileNotFoundError, ValueError) as exc:
        print(f"build_demo_model: error: {exc}", file=sys.stderr)
        return 2
    print(f"demo model: {files.model}\ndemo mmproj: {files.mmproj}\ndemo LoRA: {files.lora or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
