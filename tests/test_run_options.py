"""The runner's llama.cpp-style options and its console script.

``audiokv-run`` (pyproject [project.scripts], installed by set-up) is ``python -m audiokv_edge.run``; llama.cpp's short
options (-m, -mm / --mmproj, --audio, -p, -n, -c, -t, -fa, -ctk / -ctv) mean what the long ones mean, the positional
forms keep working, and contradicting K / V cache types or flash-attention options are one-line errors.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge import run
from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.test_run_cli import JFK, assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]


def parsed(argv: list[str]) -> dict:
    """What the runner does with ``argv``: the files, the session options and the prompt."""
    args = run.build_parser().parse_args(argv)
    return {"files": run.model_and_audio(args), "config": run.session_config(args), "prompt": args.prompt,
            "mmproj": args.mmproj}


@pytest.mark.parametrize("short,long", [
    (["-m", "m.gguf", "a.wav"], ["m.gguf", "a.wav"]),
    (["-m", "m.gguf", "--audio", "a.wav"], ["m.gguf", "a.wav"]),
    (["--audio", "a.wav", "-m", "m.gguf"], ["m.gguf", "a.wav"]),
    (["m.gguf", "--audio", "a.wav"], ["m.gguf", "a.wav"]),
    (["--audio", "a.wav"], ["a.wav"]),
    (["m.gguf", "a.wav", "-mm", "p.gguf"], ["m.gguf", "a.wav", "--mmproj", "p.gguf"]),
    (["m.gguf", "a.wav", "-p", "Who?"], ["m.gguf", "a.wav", "--prompt", "Who?"]),
    (["m.gguf", "a.wav", "-n", "7"], ["m.gguf", "a.wav", "--max-tokens", "7"]),
    (["m.gguf", "a.wav", "-c", "2048"], ["m.gguf", "a.wav", "--ctx", "2048"]),
    (["m.gguf", "a.wav", "-t", "3"], ["m.gguf", "a.wav", "--threads", "3"]),
    (["m.gguf", "a.wav", "-fa", "on"], ["m.gguf", "a.wav", "--flash-attn"]),
    (["m.gguf", "a.wav", "-fa", "1"], ["m.gguf", "a.wav", "--flash-attn"]),
    (["m.gguf", "a.wav", "-fa", "off"], ["m.gguf", "a.wav"]),
    (["m.gguf", "a.wav", "-fa", "auto"], ["m.gguf", "a.wav"]),
    (["m.gguf", "a.wav", "-ctk", "q8_0", "-ctv", "q8_0"], ["m.gguf", "a.wav", "--kv-type", "q8_0"]),
    (["m.gguf", "a.wav", "--cache-type-k", "f16", "--cache-type-v", "f16"], ["m.gguf", "a.wav"]),
    (["m.gguf", "a.wav", "--kv-type", "q8_0", "-ctk", "q8_0"], ["m.gguf", "a.wav", "--kv-type", "q8_0"]),
])
def test_short_options_mean_the_long_ones(short, long):
    assert parsed(short) == parsed(long)


def test_all_short_options_at_once():
    got = parsed(["-m", "m.gguf", "-mm", "p.gguf", "--audio", "a.wav", "-p", "Who?", "-n", "5", "-c", "1024", "-t",
                  "2", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"])
    assert got["files"] == ("m.gguf", "a.wav") and got["mmproj"] == "p.gguf" and got["prompt"] == "Who?"
    cfg = got["config"]
    assert (cfg.max_tokens, cfg.ctx, cfg.threads, cfg.flash_attn, cfg.kv_type) == (5, 1024, 2, True, "q8_0")


@pytest.mark.parametrize("argv,files", [
    (["m.gguf", "a.wav"], ("m.gguf", "a.wav")),
    (["a.wav"], (None, "a.wav")),
    ([], (None, None)),
])
def test_positional_forms_are_unchanged(argv, files):
    got = parsed(argv)
    assert got["files"] == files
    assert (got["config"].kv_type, got["config"].flash_attn) == ("f16", False)


@pytest.mark.parametrize("argv,needles", [
    (["m.gguf", str(JFK), "-ctk", "q8_0"], ["-ctk q8_0", "-ctv f16", "--kv-type"]),
    (["m.gguf", str(JFK), "-ctk", "f16", "-ctv", "q8_0"], ["differ", "-ctk f16", "-ctv q8_0"]),
    (["m.gguf", str(JFK), "--kv-type", "q8_0", "-ctv", "f16"], ["-ctv f16", "--kv-type q8_0"]),
    (["m.gguf", str(JFK), "-ctk", "q4_0", "-ctv", "q4_0"], ["-ctk", "q4_0"]),
    (["m.gguf", str(JFK), "-fa", "maybe"], ["-fa", "on, off or auto"]),
    (["m.gguf", str(JFK), "-fa", "off", "--flash-attn"], ["--flash-attn", "-fa off"]),
    (["-m", "m.gguf"], ["AUDIO", "-m"]),
    (["-m", "m.gguf", "x.wav", "y.wav"], ["y.wav"]),
    (["-m", "m.gguf", "--audio", str(JFK), "x.wav"], ["x.wav", "-m and --audio"]),
    (["--audio", str(JFK), "m.gguf", "x.wav"], ["x.wav", "--audio"]),
])
def test_contradictions_are_one_line_errors(argv, needles):
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, *needles)


# --- the console script ----------------------------------------------------------------------------------------------


def test_console_script_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^audiokv-run = "audiokv_edge\.run:main"', section, flags=re.M), section
    from importlib.metadata import EntryPoint

    assert EntryPoint("audiokv-run", "audiokv_edge.run:main", "console_scripts").load() is run.main


def test_installed_console_script_is_the_module():
    """The script set-up installs beside this Python (pip writes it from [project.scripts])."""
    script = shutil.which("audiokv-run", path=str(Path(sys.executable).parent))
    assert script, f"no audiokv-run beside {sys.executable}: run bash scripts/setup.sh (it installs the console script)"
    by_script = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    by_module = run_cli("--help")
    assert by_script.returncode == by_module.returncode == 0, by_script.stderr
    assert by_script.stdout == by_module.stdout
    assert "-ctk" in by_script.stdout and "--audio" in by_script.stdout
    bad = subprocess.run([script, "m.gguf", str(JFK), "-ctk", "q8_0"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(bad, "-ctk q8_0")


@pytest.mark.native
def test_short_and_long_forms_give_the_same_answer(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path, "qwen3-qwen2a")  # head_dim 32: a q8_0 cache fits
    long = run_cli(str(model), str(JFK), "--mmproj", str(mmproj), "--prompt", "Who is speaking?", "--max-tokens", "4",
                   "--ctx", "1024", "--threads", "2", "--flash-attn", "--kv-type", "q8_0", "--method", "snapkv",
                   "--json")
    short = run_cli("-m", str(model), "-mm", str(mmproj), "--audio", str(JFK), "-p", "Who is speaking?", "-n", "4",
                    "-c", "1024", "-t", "2", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0", "--method", "snapkv",
                    "--json")
    assert long.returncode == short.returncode == 0, (long.stderr[-2000:], short.stderr[-2000:])
    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (long, short))
    for key in ("text", "prompt", "model", "mmproj", "audio", "ctx", "threads", "kv_type", "flash_attn", "method",
                "keep", "prompt_tokens", "generated_tokens", "kv_bytes_full", "kv_bytes_kept"):
        assert a[key] == b[key], key
    assert (b["kv_type"], b["flash_attn"], b["ctx"], b["threads"]) == ("q8_0", True, 1024, 2)
