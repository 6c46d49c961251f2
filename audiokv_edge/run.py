"""Command line: answer a prompt about an audio file with a GGUF audio-language model.

    python -m audiokv_edge.run MODEL.gguf AUDIO [--prompt TEXT] [--method audiokv] [--keep RATIO] [--json] ...
    python -m audiokv_edge.run AUDIO       # the built-in model on your audio
    python -m audiokv_edge.run             # the built-in model on a shipped speech clip

The built-in model is the demo audio model that scripts/setup.sh assembles (docs/demo-model.md: Whisper tiny.en's
encoder + a trained projector + SmolLM2-135M-Instruct); where it is not assembled, a tiny random-weight test model
(generated on first use into the cache directory) stands in, and says so. The generated text streams to stdout; statistics,
the progress bar and errors go to stderr. Every error is one line ``audiokv-run: error: ...`` and a non-zero exit
status (2: bad arguments or input, 1: model / runtime problem).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import platform
import sys

PROG = "audiokv-run"
DEFAULT_PAIR = "qwen2-qwen2a"
DEFAULT_AUDIO = "jfk.wav"
DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(message)


def _keep(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not (0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from audiokv_edge.methods import METHODS
    from audiokv_edge.runtime.session import DEFAULT_PROMPT, KV_TYPES, SSS_SCOPES

    p = _Parser(prog=PROG, description="Answer a prompt about an audio file with a GGUF audio-language model "
                "(llama.cpp + libmtmd) and AudioKV per-head KV-cache eviction.")
    p.add_argument("model", nargs="?", help="text model GGUF, or the audio file when it is the only argument (default: "
                   "the built-in demo model, docs/demo-model.md)")
    p.add_argument("audio", nargs="?", help="audio file: wav, flac, ogg, mp3, ... (default: a shipped speech clip)")
    p.add_argument("--mmproj", help="audio projector GGUF (default: the mmproj*.gguf beside the model)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"question about the audio (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--method", default="audiokv", choices=list(METHODS), help="KV-cache keep method (default audiokv)")
    p.add_argument("--keep", type=_keep, default=None,
                   help="fraction of the prompt's KV cache kept (default: with --method audiokv the model's stored "
                   "head-profile default audiokv.defaults.keep when it has one, else 0.4)")
    p.add_argument("--stream", action="store_true", help="evict after every audio chunk: memory for keep x the audio + one chunk + the answer, "
                   "and --ctx only needs to hold one 30 s chunk with its text and the answer")
    p.add_argument("--max-tokens", type=_positive_int(1), default=128, help="most tokens generated (default 128)")
    p.add_argument("--threads", type=_positive_int(1), default=None, help="CPU threads (default min(4, CPUs))")
    p.add_argument("--ctx", type=_positive_int(16), default=8192, help="context size in tokens (default 8192)")
    p.add_argument("--sss-scope", choices=list(SSS_SCOPES), default="all",
                   help="--method audiokv: spectral score smoothing over every token (all, default) or within the "
                        "audio chunks only, text tokens keeping their raw scores (audio)")
    p.add_argument("--kv-type", choices=list(KV_TYPES), default="f16", help="KV-cache type (default f16)")
    p.add_argument("--flash-attn", action="store_true", help="use flash attention")
    p.add_argument("--json", action="store_true", help="print one JSON object (text + statistics) on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no statistics on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log, including llama.cpp's own")
    return p


def cache_dir() -> pathlib.Path:
    """Where generated assets live: ``$AUDIOKV_EDGE_CACHE`` or ``~/.cache/audiokv-edge``."""
    return pathlib.Path(os.environ.get("AUDIOKV_EDGE_CACHE") or pathlib.Path.home() / ".cache" / "audiokv-edge")


def default_model() -> tuple[pathlib.Path, pathlib.Path, bool]:
    """The built-in model pair and whether it is the demo model: the demo audio model assembled by set-up, else a
    tiny random-weight test model written on first use."""
    from audiokv_edge.demo_model.export import DemoModelError, demo_paths
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    try:
        return (*demo_paths(), True)
    except DemoModelError:
        pass

    directory = cache_dir() / "tiny-models"
    model, mmproj = directory / DEFAULT_PAIR / "model.gguf", directory / DEFAULT_PAIR / "mmproj.gguf"
    if not (model.is_file() and mmproj.is_file()):
        model, mmproj = write_tiny_pair(directory, DEFAULT_PAIR)
    return model, mmproj, False


def default_audio() -> pathlib.Path:
    """The speech clip shipped with the package (whisper.cpp jfk.wav, MIT, see data/README.md)."""
    return DATA_DIR / DEFAULT_AUDIO


def progress_bar(show: bool, stream=None):
    """The encoding + prefill bar (tqdm) on ``stream`` (default stderr): drawn only on a terminal, never if not show."""
    from tqdm import tqdm

    return tqdm(total=1, desc="encoding + prefill", unit="positions", file=stream if stream is not None else sys.stderr,
                disable=None if show else True)


def _run(args: argparse.Namespace) -> int:
    from audiokv_edge.runtime.audio import probe_audio
    from audiokv_edge.runtime.session import Session, SessionConfig

    mmproj = args.mmproj
    if args.model is not None and args.audio is None:
        if args.model.lower().endswith(".gguf"):
            raise UsageError("give AUDIO after MODEL.gguf (or only AUDIO, for the built-in model)")
        args.model, args.audio = None, args.model  # one argument: the user's audio, the built-in model
    if args.model is None:
        model, default_mmproj, demo = default_model()
        mmproj = mmproj or default_mmproj
        audio = args.audio if args.audio is not None else default_audio()
        if args.audio is not None:
            probe_audio(audio)
        if demo:
            print(f"{PROG}: no model given: the built-in demo audio model (Whisper tiny.en encoder + trained projector "
                  f"+ SmolLM2-135M-Instruct, docs/demo-model.md) on {pathlib.Path(audio).name}", file=sys.stderr)
        else:
            print(f"{PROG}: no model given: running the built-in default, a TINY RANDOM-WEIGHT TEST MODEL "
                  f"({DEFAULT_PAIR}) on {pathlib.Path(audio).name}; its text is meaningless (the demo model is not "
                  f"assembled: bash scripts/setup.sh). Usage: {PROG} MODEL.gguf AUDIO", file=sys.stderr)
    else:
        model, audio = pathlib.Path(args.model), args.audio
        probe_audio(audio)  # fail on a bad audio file before loading the model

    config = SessionConfig(method=args.method, keep=args.keep, stream=args.stream, max_tokens=args.max_tokens,
                           threads=args.threads or 0, ctx=args.ctx, kv_type=args.kv_type, flash_attn=args.flash_attn,
                           sss_scope=args.sss_scope)
    show = not args.quiet
    with Session(model, mmproj, config=config) as session:
        bar = progress_bar(show)
        bar_used = [False]

        def progress(done: int, total: int) -> None:
            bar.total = max(1, total)
            bar.n = min(max(0, done), bar.total)
            bar.refresh()
            bar_used[0] = True

        def on_token(piece: str) -> None:
            if bar_used[0]:
                bar.close()
                bar_used[0] = False
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()

        answer = session.answer(audio, args.prompt, on_token=on_token, progress=progress)
        bar.close()
        if args.json:
            record = answer.to_dict()
            record.update(model=str(session.model_path), mmproj=str(session.mmproj_path), audio=str(audio),
                          prompt=args.prompt, threads=config.n_threads, ctx=session.n_ctx, kv_type=config.kv_type,
                          flash_attn=session.flash_attn, stream=config.stream, sss_scope=config.sss_scope,
                          machine=platform.machine(),
                          python=platform.python_version())
            print(json.dumps(record))
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
        if show:
            for line in answer.stats.summary_lines():
                print(line, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 model/runtime error, 2 bad arguments or input, 130 interrupted)."""
    from audiokv_edge.runtime.audio import AudioError
    from audiokv_edge.native.libs import NativeLibraryNotFoundError
    from audiokv_edge.runtime.session import ContextTooSmallError, SessionError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
    try:
        return _run(args)
    except (UsageError, AudioError, ContextTooSmallError, ValueError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (SessionError, NativeLibraryNotFoundError, ImportError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything unforeseen: still one line (the traceback with -v)
        logger.debug("unexpected error", exc_info=True)
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
