"""Command line: answer a prompt about an audio file with a GGUF audio-language model, or about a text document with
any GGUF text model.

    audiokv-run MODEL.gguf AUDIO [--prompt TEXT] [--method audiokv] [--keep RATIO] [--json] ...
    audiokv-run AUDIO       # the built-in model on your audio
    audiokv-run             # the built-in model on a shipped speech clip
    audiokv-run -m MODEL.gguf --mmproj MMPROJ.gguf --audio AUDIO -p TEXT -n 64 -c 4096 -t 4 -fa on -ctk q8_0 -ctv q8_0
    audiokv-run MODEL.gguf --text DOC.txt --prompt TEXT [--question-first] [--follow-up TEXT] ...   # no projector

``audiokv-run`` (the console script set-up installs) and ``python -m audiokv_edge.run`` are the same program. The
short options are llama.cpp's (llama-mtmd-cli): ``-m`` / ``--audio`` name the model and the audio instead of the
positional arguments, ``-mm`` = ``--mmproj``, ``-p`` = ``--prompt``, ``-n`` = ``--max-tokens``, ``-c`` = ``--ctx``,
``-t`` = ``--threads``, ``-fa on|off|auto`` (auto: the runner's default, off), ``-ctk`` / ``-ctv`` the K / V cache
types, which must be equal (one ``--kv-type`` holds both).

The built-in model is the demo audio model that scripts/setup.sh assembles (docs/demo-model.md: Whisper tiny.en's
encoder + a trained projector + SmolLM2-135M-Instruct); where it is not assembled, a tiny random-weight test model
(generated on first use into the cache directory) stands in, and says so. The generated text streams to stdout; statistics,
the progress bar and errors go to stderr. Every error is one line ``audiokv-run: error: ...`` and a non-zero exit
status (2: bad arguments or input, 1: model / runtime problem).

Ctrl-C (SIGINT) or SIGTERM stops the run at any stage (loading, audio, prefill, eviction, decoding, a follow-up)
within about a second: one line ``audiokv-run: interrupted (SIGINT)`` on stderr, exit status 128 + the signal number
(130, 143), and no JSON record. The handlers only set the Session's stop flag (``audiokv_edge.runtime.interrupt``); a
second signal, or a run still going :data:`FORCE_EXIT_S` after the first (a step that cannot be stopped, e.g. a large
audio encoder's 30 s chunk), ends the process at once with the same line and status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import platform
import signal
import sys
import threading

PROG = "audiokv-run"
DEFAULT_PAIR = "qwen2-qwen2a"
DEFAULT_AUDIO = "jfk.wav"
DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
#: Seconds after the first SIGINT / SIGTERM before the process ends without waiting for the run to stop.
FORCE_EXIT_S = 1.5

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


_ON, _OFF, _AUTO = ("on", "enabled", "true", "1"), ("off", "disabled", "false", "0"), ("auto", "-1")


def _on_off_auto(text: str) -> str:
    """llama.cpp's ``-fa`` value: ``"on"``, ``"off"`` or ``"auto"`` (and llama.cpp's synonyms of each)."""
    word = text.strip().lower()
    for value, words in (("on", _ON), ("off", _OFF), ("auto", _AUTO)):
        if word in words:
            return value
    raise argparse.ArgumentTypeError(f"must be on, off or auto, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from audiokv_edge.methods import METHODS
    from audiokv_edge.runtime.session import DEFAULT_PROMPT, DEFAULT_TEXT_PROMPT, KV_TYPES, SSS_SCOPES
    from audiokv_edge.runtime.text_document import DEFAULT_TEXT_BLOCK

    p = _Parser(prog=PROG, description="Answer a prompt about an audio file with a GGUF audio-language model "
                "(llama.cpp + libmtmd), or about a text document (--text) with a GGUF text model, with AudioKV "
                "per-head KV-cache eviction.")
    p.add_argument("model", nargs="?", help="text model GGUF, or the audio file when it is the only argument (default: "
                   "the built-in demo model, docs/demo-model.md)")
    p.add_argument("audio", nargs="?", help="audio file: wav, flac, ogg, mp3, ... (default: a shipped speech clip)")
    p.add_argument("-m", "--model", dest="model_file", metavar="MODEL",
                   help="text model GGUF, as llama.cpp's -m (then AUDIO is the only positional argument)")
    p.add_argument("--audio", dest="audio_file", metavar="AUDIO", help="audio file, as llama-mtmd-cli's --audio")
    p.add_argument("-mm", "--mmproj", help="audio projector GGUF (default: the mmproj*.gguf beside the model)")
    p.add_argument("--lora", metavar="FNAME", help="LoRA adapter GGUF applied to the text model, as llama.cpp's "
                   "--lora (the built-in demo model brings its own)")
    p.add_argument("--text", metavar="DOC", help="answer about this text document (a UTF-8 file) instead of audio: no "
                   "projector needed, any text model; evicted like audio (after the prompt, with --stream after every "
                   "--text-block tokens too)")
    p.add_argument("--question-first", action="store_true", help="--text: put the question before the document "
                   "(the eviction cannot see it: query-agnostic) instead of after it")
    p.add_argument("--text-block", type=_positive_int(1), default=None, metavar="TOKENS",
                   help=f"--text with --stream: document tokens between two evictions (default {DEFAULT_TEXT_BLOCK})")
    p.add_argument("-p", "--prompt", default=None,
                   help=f"question about the audio (default: {DEFAULT_PROMPT!r}) or the text (default: "
                        f"{DEFAULT_TEXT_PROMPT!r})")
    p.add_argument("--follow-up", action="append", default=[], metavar="TEXT",
                   help="a next question in the same chat, asked after the answer against the cache as it left it "
                        "(evicted; the follow-up is not evicted); repeat for more")
    p.add_argument("--method", default="audiokv", choices=list(METHODS), help="KV-cache keep method (default audiokv)")
    p.add_argument("--keep", type=_keep, default=None,
                   help="fraction of the prompt's KV cache kept (default: with --method audiokv the model's stored "
                   "head-profile default audiokv.defaults.keep when it has one, else 0.4)")
    p.add_argument("--kv-budget", type=_positive_int(1), default=None, metavar="TOKENS",
                   help="most KV-cache entries per layer and KV head (on average) an eviction keeps: it plans at keep "
                   "min(KEEP, TOKENS / positions seen), so the kept cache never grows past it, with --stream whatever "
                   "the length of the audio or document; the keep ratio still applies (--keep 1: the budget alone)")
    p.add_argument("--stream", action="store_true", help="evict after every audio chunk (--text: every --text-block "
                   "tokens of the document): memory for keep x the audio + one chunk + the answer, and --ctx only "
                   "needs to hold one 30 s chunk (one block) with its text and the answer")
    p.add_argument("-n", "--max-tokens", type=_positive_int(1), default=128,
                   help="most tokens generated (default 128)")
    p.add_argument("--dry-multiplier", type=float, default=0.0, metavar="X",
                   help="llama.cpp's DRY repetition penalty before the greedy pick, as llama-cli's --dry-multiplier "
                   "(0, default: plain greedy); 0.8 stops a small model from looping over a long transcript")
    p.add_argument("-t", "--threads", type=_positive_int(1), default=None, help="CPU threads (default min(4, CPUs))")
    p.add_argument("-c", "--ctx", type=_positive_int(16), default=8192, help="context size in tokens (default 8192)")
    p.add_argument("--kv-type", choices=list(KV_TYPES), default=None, help="KV-cache type of K and V (default f16)")
    p.add_argument("-ctk", "--cache-type-k", choices=list(KV_TYPES), default=None,
                   help="K cache type, as llama.cpp's -ctk; must equal the V cache type")
    p.add_argument("-ctv", "--cache-type-v", choices=list(KV_TYPES), default=None,
                   help="V cache type, as llama.cpp's -ctv; must equal the K cache type")
    p.add_argument("--sss-scope", choices=list(SSS_SCOPES), default="all",
                   help="--method audiokv: spectral score smoothing over every token (all, default) or within the "
                        "audio chunks only, text tokens keeping their raw scores (audio; a --text document has no "
                        "audio: no smoothing)")
    p.add_argument("--flash-attn", action="store_true", help="use flash attention")
    p.add_argument("-fa", dest="fa", type=_on_off_auto, default=None, metavar="on|off|auto",
                   help="flash attention, as llama.cpp's -fa (auto: the default, off; a q8_0 cache switches it on)")
    p.add_argument("--mmap", action="store_true",
                   help="map the model file instead of reading it into memory (faster load, shared page cache; the "
                        "run dies of SIGBUS if the file is truncated or overwritten in place meanwhile)")
    p.add_argument("--json", action="store_true", help="print one JSON object (text + statistics) on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no statistics on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log, including llama.cpp's own")
    return p


def model_and_audio(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The model and audio files named on the command line (None: the built-in model / the shipped clip).

    Positional form: ``MODEL AUDIO``, ``AUDIO`` alone, or nothing. With ``-m MODEL`` and / or ``--audio AUDIO`` the
    positional arguments give only what those options leave out.

    Raises
    ------
    UsageError
        A model without audio, or more files than places for them.
    """
    positional = [value for value in (args.model, args.audio) if value is not None]
    model, audio = args.model_file, args.audio_file
    if model is None and audio is None:
        if len(positional) == 1:
            if positional[0].lower().endswith(".gguf"):
                raise UsageError("give AUDIO after MODEL.gguf (or only AUDIO, for the built-in model)")
            return None, positional[0]  # one argument: the user's audio, the built-in model
        return (positional[0], positional[1]) if positional else (None, None)
    if model is not None and audio is not None:
        if positional:
            raise UsageError(f"unexpected argument {positional[0]!r}: -m and --audio already name the model and the audio")
        return model, audio
    if len(positional) > 1:
        named = "-m" if model is not None else "--audio"
        raise UsageError(f"unexpected argument {positional[1]!r}: with {named} give at most one positional argument")
    if model is not None:
        if not positional:
            raise UsageError("give AUDIO after -m MODEL.gguf (or --audio AUDIO)")
        return model, positional[0]
    return (positional[0] if positional else None), audio


def model_for_text(args: argparse.Namespace) -> str | None:
    """The model file of a ``--text`` run (None: the built-in model): ``-m MODEL`` or the one positional argument.

    Raises
    ------
    UsageError
        An audio file besides the document, or an audio projector (a text run loads none).
    """
    positional = [value for value in (args.model, args.audio) if value is not None]
    if args.audio_file is not None:
        raise UsageError(f"--text and --audio {args.audio_file} both give the input: answer about one of them")
    if args.mmproj is not None:
        raise UsageError("--mmproj is an audio projector: a --text run needs none")
    if args.model_file is not None and positional:
        raise UsageError(f"unexpected argument {positional[0]!r}: with --text, -m names the model and there is no "
                         f"audio file")
    if len(positional) > 1:
        raise UsageError(f"unexpected argument {positional[1]!r}: --text takes no audio file (give MODEL.gguf --text "
                         f"DOC)")
    if args.model_file is not None:
        return args.model_file
    if positional and not positional[0].lower().endswith(".gguf"):
        raise UsageError(f"--text takes no audio file ({positional[0]!r}): give MODEL.gguf --text DOC, or only "
                         f"--text DOC for the built-in model")
    return positional[0] if positional else None


def text_only_options(args: argparse.Namespace) -> None:
    """Refuse the text options without ``--text``.

    Raises
    ------
    UsageError
    """
    if args.text is None:
        for flag, given in (("--question-first", args.question_first), ("--text-block", args.text_block is not None)):
            if given:
                raise UsageError(f"{flag} applies to a text document: give --text DOC")


def kv_type(args: argparse.Namespace) -> str:
    """The one KV-cache type of ``--kv-type`` / ``-ctk`` / ``-ctv`` (default f16).

    Raises
    ------
    UsageError
        The K and V types differ (this runner keeps both in one type), or ``-ctk`` / ``-ctv`` contradicts
        ``--kv-type``.
    """
    for flag, value in (("-ctk", args.cache_type_k), ("-ctv", args.cache_type_v)):
        if value is not None and args.kv_type is not None and value != args.kv_type:
            raise UsageError(f"{flag} {value} contradicts --kv-type {args.kv_type}")
    type_k = args.cache_type_k or args.kv_type or "f16"
    type_v = args.cache_type_v or args.kv_type or "f16"
    if type_k != type_v:
        raise UsageError(f"the K and V cache types differ (-ctk {type_k}, -ctv {type_v}): one type holds both here; "
                         f"give the same -ctk and -ctv, or --kv-type")
    return type_k


def flash_attn(args: argparse.Namespace) -> bool:
    """Flash attention from ``--flash-attn`` and ``-fa on|off|auto`` (auto: the runner's default, off).

    Raises
    ------
    UsageError
        ``--flash-attn`` with ``-fa off``.
    """
    if args.fa == "off" and args.flash_attn:
        raise UsageError("--flash-attn contradicts -fa off")
    return args.flash_attn or args.fa == "on"


def session_config(args: argparse.Namespace):
    """The :class:`~audiokv_edge.runtime.session.SessionConfig` of the parsed command line.

    Raises
    ------
    UsageError
        Contradicting KV-cache types or flash-attention options.
    """
    from audiokv_edge.runtime.session import SessionConfig
    from audiokv_edge.runtime.text_document import DEFAULT_TEXT_BLOCK

    return SessionConfig(method=args.method, keep=args.keep, kv_budget=args.kv_budget, stream=args.stream,
                         max_tokens=args.max_tokens, threads=args.threads or 0, ctx=args.ctx, kv_type=kv_type(args),
                         flash_attn=flash_attn(args), sss_scope=args.sss_scope,
                         text_block=args.text_block or DEFAULT_TEXT_BLOCK, dry_multiplier=args.dry_multiplier,
                         mmap=args.mmap)


def cache_dir() -> pathlib.Path:
    """Where generated assets live: ``$AUDIOKV_EDGE_CACHE`` or ``~/.cache/audiokv-edge``."""
    return pathlib.Path(os.environ.get("AUDIOKV_EDGE_CACHE") or pathlib.Path.home() / ".cache" / "audiokv-edge")


def default_model() -> tuple[pathlib.Path, pathlib.Path, pathlib.Path | None, bool]:
    """The built-in model (text model, projector, LoRA adapter or None) and whether it is the demo model: the demo
    audio model assembled by set-up, else a tiny random-weight test model written on first use."""
    from audiokv_edge.demo_model.export import DemoModelError, demo_paths
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    try:
        files = demo_paths()
        return files.model, files.mmproj, files.lora, True
    except DemoModelError:
        pass

    directory = cache_dir() / "tiny-models"
    model, mmproj = directory / DEFAULT_PAIR / "model.gguf", directory / DEFAULT_PAIR / "mmproj.gguf"
    if not (model.is_file() and mmproj.is_file()):
        model, mmproj = write_tiny_pair(directory, DEFAULT_PAIR)
    return model, mmproj, None, False


def default_audio() -> pathlib.Path:
    """The speech clip shipped with the package (whisper.cpp jfk.wav, MIT, see data/README.md)."""
    return DATA_DIR / DEFAULT_AUDIO


def progress_bar(show: bool, stream=None, desc: str = "encoding + prefill"):
    """The encoding + prefill bar (tqdm) on ``stream`` (default stderr): drawn only on a terminal, never if not show."""
    from tqdm import tqdm

    return tqdm(total=1, desc=desc, unit="positions", file=stream if stream is not None else sys.stderr,
                disable=None if show else True)


def _inputs(args: argparse.Namespace) -> dict:
    """The model, projector, adapter and input of the command line: ``Session`` arguments and what to answer.

    Returns
    -------
    dict
        model, mmproj, lora, audio (bool: whether the session needs a projector), source (the audio file or the
        text document) and prompt.
    """
    from audiokv_edge.runtime.audio import probe_audio
    from audiokv_edge.runtime.session import DEFAULT_PROMPT, DEFAULT_TEXT_PROMPT
    from audiokv_edge.runtime.text_document import load_document

    text_only_options(args)
    mmproj, lora = args.mmproj, args.lora
    if args.text is not None:
        model_arg = model_for_text(args)
        source = pathlib.Path(args.text)
        load_document(source)  # fail on a bad document before loading the model
        prompt = args.prompt if args.prompt is not None else DEFAULT_TEXT_PROMPT
        if model_arg is not None:
            return dict(model=pathlib.Path(model_arg), mmproj=None, lora=lora, audio=False, source=source,
                        prompt=prompt)
        model, _, default_lora, demo = default_model()
        what = ("the built-in demo model's SmolLM2-135M-Instruct (with its LoRA, docs/demo-model.md)" if demo else
                f"a TINY RANDOM-WEIGHT TEST MODEL ({DEFAULT_PAIR}); its text is meaningless (the demo model is not "
                f"assembled: bash scripts/setup.sh)")
        print(f"{PROG}: no model given: {what} on {source.name}. Usage: {PROG} MODEL.gguf --text DOC", file=sys.stderr)
        return dict(model=model, mmproj=None, lora=lora or default_lora, audio=False, source=source, prompt=prompt)

    prompt = args.prompt if args.prompt is not None else DEFAULT_PROMPT
    model_arg, audio_arg = model_and_audio(args)
    if model_arg is not None:
        probe_audio(audio_arg)  # fail on a bad audio file before loading the model
        return dict(model=pathlib.Path(model_arg), mmproj=mmproj, lora=lora, audio=True, source=audio_arg,
                    prompt=prompt)
    model, default_mmproj, default_lora, demo = default_model()
    audio = audio_arg if audio_arg is not None else default_audio()
    if audio_arg is not None:
        probe_audio(audio)
    if demo:
        print(f"{PROG}: no model given: the built-in demo audio model (Whisper tiny.en encoder + trained projector "
              f"+ SmolLM2-135M-Instruct, docs/demo-model.md) on {pathlib.Path(audio).name}", file=sys.stderr)
    else:
        print(f"{PROG}: no model given: running the built-in default, a TINY RANDOM-WEIGHT TEST MODEL "
              f"({DEFAULT_PAIR}) on {pathlib.Path(audio).name}; its text is meaningless (the demo model is not "
              f"assembled: bash scripts/setup.sh). Usage: {PROG} MODEL.gguf AUDIO", file=sys.stderr)
    return dict(model=model, mmproj=mmproj or default_mmproj, lora=lora or default_lora, audio=True, source=audio,
                prompt=prompt)


class SignalStop:
    """SIGINT / SIGTERM during a run (module docstring): the first one requests a stop on the Session's flag, a
    second one or :data:`FORCE_EXIT_S` seconds without the run ending exit the process at once.

    Python runs a signal handler only between bytecodes of the main thread, which a long C call (one 30 s chunk of
    a large audio encoder) holds off. So the handlers do nothing themselves; Python's C-level handler writes each
    signal to a wake-up pipe (``signal.set_wakeup_fd``) at once, and a thread reading it acts on it: the flag is set
    and the forced exit armed even while the main thread is still in C.

    Parameters
    ----------
    stop : StopFlag
        The flag handed to the Session.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop) -> None:
        self.stop = stop
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd: int | None = None
        self._pipe: tuple[int, int] | None = None
        self._timer: threading.Timer | None = None
        self._reported = threading.Lock()  # held once the line is written: it is written once

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (not a signal the parent set to be ignored; only on the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self._previous[signum] = previous
                signal.signal(signum, self._ignore_in_python)
        if not self._previous:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), name="audiokv-run signals", daemon=True).start()

    def uninstall(self) -> None:
        """Put back the previous handlers and forget a pending forced exit."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            os.close(self._pipe[1])  # the watching thread reads the end of the pipe and returns
            self._pipe = None
        if self._timer is not None:
            self._timer.cancel()

    @staticmethod
    def _ignore_in_python(_signum: int, _frame) -> None:
        """The Python-level handler: nothing (the watching thread has handled the signal)."""

    def _watch(self, read_fd: int) -> None:
        try:
            while data := os.read(read_fd, 64):
                for signum in data:
                    if signum in self.SIGNALS:
                        self._on_signal(signum)
        finally:
            os.close(read_fd)

    def _on_signal(self, signum: int) -> None:
        if self.signum is not None:  # a second signal: do not wait
            self.exit_now(signum)
        self.signum = signum
        self.stop.request(signum)
        self._timer = threading.Timer(FORCE_EXIT_S, self.exit_now, (signum,))
        self._timer.daemon = True
        self._timer.start()

    def report(self, signum: int | None = None) -> int:
        """Write the one line (once) and return the exit status, 128 + the signal number."""
        signum = int(signum or self.signum or signal.SIGINT)
        if self._reported.acquire(blocking=False):
            print(f"{PROG}: interrupted ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
        return 128 + signum

    def exit_now(self, signum: int) -> None:
        """End the process without waiting for the run (the line, the status, no clean-up)."""
        logger.debug("the run did not stop in time: exiting at once")
        os._exit(self.report(signum))


def silence_native_stderr() -> None:
    """``--quiet``: what native code writes to file descriptor 2 itself (a decoder's notes on a damaged file, ...)
    goes to the null device; Python's ``sys.stderr`` keeps the real one for error lines."""
    sys.stderr.flush()
    kept = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = os.fdopen(kept, "w", buffering=1, errors="backslashreplace")


def _run(args: argparse.Namespace, stop) -> int:
    from audiokv_edge.runtime.session import Session

    if args.quiet:
        silence_native_stderr()
    inputs = _inputs(args)
    config = session_config(args)
    text = not inputs["audio"]
    show = not args.quiet
    with Session(inputs["model"], inputs["mmproj"], config=config, lora=inputs["lora"], audio=inputs["audio"],
                 stop=stop) as session:
        bar = progress_bar(show, desc="prefill" if text else "encoding + prefill")
        bar_used = [False]
        line_open = [False]  # text written to stdout since the last newline

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
                line_open[0] = True

        def new_line() -> None:
            sys.stdout.write("\n")
            sys.stdout.flush()
            line_open[0] = False

        try:
            if text:
                answer = session.answer_text(inputs["source"], inputs["prompt"], question_first=args.question_first,
                                             on_token=on_token, progress=progress)
            else:
                answer = session.answer(inputs["source"], inputs["prompt"], on_token=on_token, progress=progress)
            bar.close()
            answers = [answer]
            for question in args.follow_up:
                if not args.json:
                    new_line()
                answers.append(session.follow_up(question, on_token=on_token))
            stop.raise_if_requested("decode")  # a signal after the last check: still no record
        except KeyboardInterrupt:
            if line_open[0]:
                new_line()  # end the line of text cut short
            raise
        finally:
            bar.close()
        if args.json:
            record = answer.to_dict()
            record.update(model=str(session.model_path),
                          mmproj=None if session.mmproj_path is None else str(session.mmproj_path),
                          lora=None if session.lora_path is None else str(session.lora_path),
                          prompt=inputs["prompt"], threads=config.n_threads, ctx=session.n_ctx, kv_type=config.kv_type,
                          flash_attn=session.flash_attn, stream=config.stream, sss_scope=config.sss_scope,
                          machine=platform.machine(), python=platform.python_version())
            if text:
                record.update(document=str(inputs["source"]), question_first=args.question_first,
                              text_block=config.text_block)
            else:
                record.update(audio=str(inputs["source"]))
            if args.follow_up:
                record["follow_ups"] = [dict(prompt=q, **a.to_dict()) for q, a in zip(args.follow_up, answers[1:])]
            print(json.dumps(record))
        else:
            new_line()
        if show:
            for i, a in enumerate(answers):
                if i:
                    print(f"follow-up {i}:", file=sys.stderr)
                for line in a.stats.summary_lines():
                    print(line, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 model/runtime error, 2 bad arguments or input, 130 / 143
    interrupted by SIGINT / SIGTERM)."""
    from audiokv_edge.runtime.interrupt import StopFlag

    signals = SignalStop(StopFlag())
    signals.install()
    try:
        return _main(argv, signals)
    except KeyboardInterrupt as exc:  # Interrupted, or Ctrl-C before the Session's checks (imports, parsing)
        return signals.report(getattr(exc, "signum", None))
    finally:
        signals.uninstall()


def _main(argv: list[str] | None, signals: SignalStop) -> int:
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
        signals.stop.raise_if_requested("loading")
        return _run(args, signals.stop)
    except (UsageError, AudioError, ContextTooSmallError, ValueError) as exc:
        return _error(signals, f"{PROG}: error: {_one_line(exc)}", 2)
    except (SessionError, NativeLibraryNotFoundError, ImportError, OSError) as exc:
        return _error(signals, f"{PROG}: error: {_one_line(exc)}", 1)
    except Exception as exc:  # anything unforeseen: still one line (the traceback with -v)
        logger.debug("unexpected error", exc_info=True)
        return _error(signals, f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}", 1)


def _error(signals: SignalStop, line: str, status: int) -> int:
    """Write an error line and return ``status``; after a signal, the interruption's line and status instead (a
    step cut short by the stop may fail in its own way first)."""
    if signals.signum is not None:
        logger.debug("after %s: %s", signal.Signals(signals.signum).name, line)
        return signals.report()
    print(line, file=sys.stderr)
    return status


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
