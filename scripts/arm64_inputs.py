#!/usr/bin/env python3
"""Write the inputs of the ARM64 check (scripts/check_arm64.sh) with this machine's Python and native build.

GGUF files and float32 samples are portable, so the models are written here and read by the aarch64 programs under
qemu-user; the runner's answer computed here is what the aarch64 run of the same steps is compared with.

OUT/oracle/{llama,qwen3}.gguf
    the tiny models of the COMPACT-vs-MASK oracle (tests/evict_fixtures.py: llama, head_dim 32; qwen3, head_dim 64
    whose q8_0 keys are Hadamard-rotated), seed 3 as in tests/test_evict_compact.py
OUT/stream/
    qwen3-qwen2a/{model,mmproj}.gguf (the tiny pair of tests/test_serve.py, seed 1); samples.f32 (the runner's
    samples of jfk.wav at the projector's rate: one audio chunk, then the prompt's text, so that --stream evicts
    after the audio chunk and after the prompt); prompt.txt (the runner's rendered prompt); driver_args.txt (options of llama-kv-evict-stream, one per line: the
    runner's observation window, captured queries and headroom); runner.json (``python -m audiokv_edge.run ...
    --stream --json`` on this machine).

Usage: python scripts/arm64_inputs.py --out DIR [--what all|oracle]   (oracle: only OUT/oracle)
Needs this machine's native build (AUDIOKV_EDGE_LIB_DIR or build/native/lib). Exit status 0, or 1 with one line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
JFK = REPO / "audiokv_edge" / "data" / "jfk.wav"

#: The streamed run: method, keep, prompt, answer length, context and threads of both sides (batch: the runner's
#: default, f16 cache and no flash attention: the runner's defaults too).
STREAM_PAIR = "qwen3-qwen2a"
STREAM_SEED = 1
STREAM_OPTIONS = {"method": "snapkv", "keep": 0.4, "prompt": "Transcribe the audio.", "max_tokens": 8, "ctx": 1024,
                  "threads": 1}


def write_oracle_models(out: pathlib.Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from evict_fixtures import _specs  # the specs of the oracle's tiny models, written once there

    from audiokv_edge.testing import tiny_models as tm

    out.mkdir(parents=True, exist_ok=True)
    specs = _specs()
    for name in ("llama", "qwen3"):
        tm.write_text_model(out / f"{name}.gguf", specs[name], seed=3)


def write_stream_inputs(out: pathlib.Path) -> None:
    import numpy as np

    from audiokv_edge.runtime.audio import load_audio
    from audiokv_edge.runtime.session import Session, SessionConfig
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    out.mkdir(parents=True, exist_ok=True)
    model, mmproj = write_tiny_pair(out, STREAM_PAIR, seed=STREAM_SEED)
    speech = JFK

    o = STREAM_OPTIONS
    config = SessionConfig(method=o["method"], keep=o["keep"], stream=True, max_tokens=o["max_tokens"],
                           threads=o["threads"], ctx=o["ctx"])
    with Session(model, mmproj, config=config) as session:
        clip = load_audio(speech, session.sample_rate)
        prompt = session.render_prompt(o["prompt"])
        settings = session.evict_settings
    np.ascontiguousarray(clip.samples, dtype=np.float32).tofile(out / "samples.f32")
    (out / "prompt.txt").write_text(prompt, encoding="utf-8")
    args = ["--method", o["method"], "--keep", str(o["keep"]), "--window", str(settings["window"]),
            "--n-window", str(settings["n_window"]), "--headroom", str(settings["n_headroom"]),
            "--max-tokens", str(o["max_tokens"]), "--ctx", str(o["ctx"]), "--batch", str(config.batch),
            "--threads", str(o["threads"]), "--fa", "off", "--stream"]
    (out / "driver_args.txt").write_text("\n".join(args) + "\n", encoding="utf-8")

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "audiokv_edge.run", str(model), str(speech), "--mmproj", str(mmproj),
           "--method", o["method"], "--keep", str(o["keep"]), "--prompt", o["prompt"], "-n", str(o["max_tokens"]),
           "-c", str(o["ctx"]), "-t", str(o["threads"]), "--stream", "--json", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the runner failed: {proc.stderr.strip().splitlines()[-1:]}")
    (out / "runner.json").write_text(proc.stdout.strip().splitlines()[-1] + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    parser.add_argument("--what", choices=("all", "oracle"), default="all", help="all inputs, or the oracle's only")
    args = parser.parse_args(argv)
    try:
        write_oracle_models(args.out / "oracle")
        if args.what == "all":
            write_stream_inputs(args.out / "stream")
    except Exception as exc:  # one line for the shell script
        print(f"arm64_inputs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
