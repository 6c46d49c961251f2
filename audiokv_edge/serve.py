"""Command line: serve a GGUF audio-language model with llama.cpp's own llama-server, with per-head KV eviction.

    python -m audiokv_edge.serve MODEL.gguf --mmproj MMPROJ.gguf [llama-server flags ...]
    python -m audiokv_edge.serve MODEL.gguf --mmproj MMPROJ.gguf --kv-evict audiokv --kv-evict-keep 0.4 --port 8080

runs the ``llama-server`` of this project's build (``bin/`` beside the libraries, :func:`audiokv_edge.native.libs.
tool_path`) in place of this process, with ``-m MODEL.gguf`` and every other argument passed on unchanged, and the
patched libraries first on the library search path. Besides llama-server's own flags (``--host``, ``--port``,
``-c``, ``-np``, ``-t``, ...) it takes ``--kv-evict METHOD`` (full, streamingllm, h2o, snapkv, pyramidkv, adakv,
audiokv), ``--kv-evict-keep R`` and ``--kv-evict-stream``: each slot's prompt is evicted per (layer, KV head) by
libaudiokv before its answer is decoded, a request may choose another method with ``"kv_evict": {"method": ...,
"keep": ..., "stream": ...}``, and the response's ``timings.kv_evict`` reports the kept vs full KV bytes
(README, "Serving"). ``--help`` shows llama-server's help.
"""

from __future__ import annotations

import os
import pathlib
import sys

PROG = "audiokv-serve"
SERVER = "llama-server"
#: glibc: allocations of 1 MiB and more are mmap'd and go back to the system when freed. Each audio request allocates
#: and frees tens of MB (samples, mel windows, embeddings); with glibc's default, growing threshold they come from
#: the heap and its fragmentation kept the server growing by ~1.6 MB per request (scripts/load_test_server.py).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
#: The weights read into memory instead of mapped (llama.cpp's ``--load-mode none --lazy-mode off``): with a mapping,
#: a model file truncated or overwritten in place while the server runs kills it with SIGBUS at the next request;
#: read, the server keeps answering with the model it loaded (as the runner, ``SessionConfig.mmap``). ``-lm mmap``
#: on the command line or the variables set by the caller win.
LOAD_ENV = {"LLAMA_ARG_LOAD_MODE": "none", "LLAMA_ARG_LAZY_MODE": "off"}


def server_command(argv: list[str]) -> list[str]:
    """llama-server's command line for our arguments: a leading positional ``MODEL.gguf`` becomes ``-m MODEL.gguf``,
    everything else is passed on.

    Raises
    ------
    FileNotFoundError
        The positional model file does not exist.
    """
    from audiokv_edge.native.libs import tool_path

    args = list(argv)
    if args and not args[0].startswith("-"):
        model = pathlib.Path(args.pop(0))
        if not model.is_file():
            raise FileNotFoundError(f"model file not found: {model}")
        args = ["-m", str(model)] + args
    return [str(tool_path(SERVER))] + args


def main(argv: list[str] | None = None) -> int:
    """Replace this process with llama-server; returns only on an error (1: not built, 2: bad arguments)."""
    from audiokv_edge.native.libs import NativeLibraryNotFoundError, library_path_env

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"usage: {PROG} MODEL.gguf --mmproj MMPROJ.gguf [--kv-evict METHOD] [--kv-evict-keep R] "
              f"[--kv-evict-stream] [llama-server flags ...]   ({PROG} --help: llama-server's flags)", file=sys.stderr)
        return 2
    try:
        command = server_command(argv)
        env = {**ALLOCATOR_ENV, **LOAD_ENV, **library_path_env()}  # a value the caller set wins
    except FileNotFoundError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, NativeLibraryNotFoundError) else 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
