#!/usr/bin/env python3
"""Evaluate a prompt with the llama_cpp bindings through one libllama and save the logits.

Used to compare builds (patched vs unpatched libllama, one build vs another): run it once per library directory,
in separate processes (a process binds one libllama), and compare the saved arrays.

    python scripts/llama_prompt_logits.py --model M.gguf --out patched.npz
    python scripts/llama_prompt_logits.py --model M.gguf --out unpatched.npz --lib-dir build/native/lib/unpatched

The .npz holds ``prompt_tokens`` [n_prompt] int32, ``prompt_logits`` [n_prompt, n_vocab] float32 (every prompt
position), ``generated_tokens`` [n_generate] int32 (greedy) and ``generated_logits`` [n_generate, n_vocab] float32
(the logits each generated token was chosen from), and ``libllama`` (path of the library used).
Exit status 0 on success, 1 with a message on bad input (missing model or library).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PROMPT = "The capital of France is"


def prompt_logits(model: pathlib.Path, prompt: str, n_generate: int, n_threads: int, n_ctx: int) -> dict:
    """Run the prompt and a greedy continuation; see the module docstring for the returned arrays."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from audiokv_edge.native import libs as native_libs

    llama_cpp = native_libs.load_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads,
                          n_threads_batch=n_threads, logits_all=True, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.eval(tokens)
    prompt_rows = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    generated, generated_rows = [], []
    for _ in range(n_generate):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        token = int(np.argmax(row))
        generated.append(token)
        generated_rows.append(row)
        llm.eval([token])
    n_vocab = prompt_rows.shape[1]
    result = {
        "prompt_tokens": np.array(tokens, dtype=np.int32),
        "prompt_logits": prompt_rows,
        "generated_tokens": np.array(generated, dtype=np.int32),
        "generated_logits": np.array(generated_rows, dtype=np.float32).reshape(len(generated), n_vocab),
        "generated_text": np.array(llm.detokenize(generated).decode("utf-8", errors="replace")),
        "libllama": np.array(llama_cpp.llama_cpp._lib._name),
    }
    llm.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=pathlib.Path, required=True, help="GGUF model")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output .npz")
    parser.add_argument("--lib-dir", type=pathlib.Path, default=None,
                        help="directory holding the libllama to use (default: the combined build's lib/)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--n-generate", type=int, default=8)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=256)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"llama_prompt_logits: error: model {args.model} does not exist", file=sys.stderr)
        return 1
    if args.lib_dir is not None:
        library = args.lib_dir / ("libllama.dylib" if sys.platform == "darwin" else "libllama.so")
        if not library.is_file():
            print(f"llama_prompt_logits: error: {library} does not exist", file=sys.stderr)
            return 1
        os.environ["LLAMA_CPP_LIB_PATH"] = str(args.lib_dir.resolve())
    if args.n_generate < 0 or args.n_threads < 1 or args.n_ctx < 8:
        print("llama_prompt_logits: error: need --n-generate >= 0, --n-threads >= 1, --n-ctx >= 8", file=sys.stderr)
        return 1
    result = prompt_logits(args.model, args.prompt, args.n_generate, args.n_threads, args.n_ctx)
    np.savez(args.out, **result)
    print(f"llama_prompt_logits: {len(result['prompt_tokens'])} prompt tokens, generated "
          f"{result['generated_text']!s:.60} with {result['libllama']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
