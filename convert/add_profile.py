#!/usr/bin/env python3
"""Write an AudioKV head profile into a COPY of a GGUF model (audiokv.* keys, docs/gguf-keys.md).

    python convert/add_profile.py MODEL.gguf PROFILE.json -o OUT.gguf [--window 32 --sss-alpha 0.5 ...]

The input is never modified. Tensors are streamed (memory does not grow with the model size), the output is
written to a temporary file next to OUT.gguf, verified, then renamed. Errors are one line on stderr, exit code 2.
Ctrl-C, SIGTERM or SIGHUP: the temporary file is removed, one line on stderr, exit code 128 + the signal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiokv_edge.profile.gguf_keys import write_profile  # noqa: E402
from audiokv_edge.profile.defaults import ProfileDefaults  # noqa: E402
from audiokv_edge.profile.side_file import load_profile_file  # noqa: E402

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="add_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="input GGUF (read only)")
    p.add_argument("profile", help="head profile, .json or .npz (as written by convert/profile_heads.py)")
    p.add_argument("-o", "--output", required=True, help="output GGUF (must differ from the input)")
    p.add_argument("--window", type=int, help="default observation window to store (overrides the profile's)")
    p.add_argument("--sss-alpha", type=float, help="default SSS alpha to store")
    p.add_argument("--sss-gamma", type=float, help="default SSS gamma to store")
    p.add_argument("--keep", type=float, help="default keep ratio to store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that the temporary output is removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP stop the write like Ctrl-C (by default they end Python at once, leaving the temporary file
    behind). A signal the parent set to be ignored stays ignored; only on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _identity(path: str) -> tuple | None:
    """(inode, modification time) of ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` without the "[Errno N]" prefix of an OSError."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    with _signals_interrupt():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    output_before = _identity(args.output)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        profile, defaults = load_profile_file(args.profile)
        overrides = {k: v for k, v in (("window", args.window), ("sss_alpha", args.sss_alpha),
                                       ("sss_gamma", args.sss_gamma), ("keep", args.keep)) if v is not None}
        if overrides:
            merged = dict(defaults.as_dict() if defaults else {}, **overrides)
            defaults = ProfileDefaults(**merged)
        bar = None
        if not (args.no_progress or args.quiet):
            from tqdm import tqdm
            size = os.path.getsize(args.model) if os.path.isfile(args.model) else 0
            bar = tqdm(total=size, unit="B", unit_scale=True, desc="tensors", file=sys.stderr, leave=False)
        try:
            stored = write_profile(args.model, profile, args.output, defaults,
                                   progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        # the rename is the commit point: a signal right after it leaves the complete, verified copy
        done = "" if _identity(args.output) == output_before else f" after {args.output} was written"
        print(f"add_profile: interrupted ({signal.Signals(signum).name}){done or '; nothing written'}",
              file=sys.stderr)
        return 128 + signum
    except (ValueError, OSError) as exc:
        print(f"add_profile: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    logging.getLogger("add_profile").info(
        "%s: stored a %d x %d head profile (calibration: %s)", args.output, stored.n_layer, stored.n_head_kv,
        stored.source.get("calibration"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
