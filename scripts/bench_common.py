"""The header block every benchmark's JSON result carries (``audiokv_edge.bench.header``: machine, versions, command,
time; and writing it), and the plan benchmarks' shape options.

Imported by the scripts beside it (``scripts/`` is on ``sys.path`` when one of them runs as a script). Nothing runs
at import time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audiokv_edge.bench.header import header, write_result  # noqa: E402,F401  (re-exported to the scripts)


def add_plan_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the plan benchmarks' shape: model (layers, heads, head size), cached tokens, scoring
    window and keep ratio. The defaults are Qwen2.5-Omni-7B with five minutes of audio (7,500 tokens at 25/s)."""
    parser.add_argument("--n-layer", type=int, default=28)
    parser.add_argument("--n-head", type=int, default=28)
    parser.add_argument("--n-head-kv", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--n-tokens", type=int, default=7500)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.4)


PLAN_SHAPE_KEYS = ("n_layer", "n_head", "n_head_kv", "head_dim", "n_tokens", "window", "keep")


def plan_shape(args: argparse.Namespace) -> dict:
    """The shape options of ``add_plan_shape_arguments`` as a result's ``shape`` field."""
    return {key: getattr(args, key) for key in PLAN_SHAPE_KEYS}
