"""A benchmark result as a markdown table and a PNG plot, and the memory projection for long recordings.

The projection (:func:`memory_table`) combines measured parts (the model file, the KV bytes per token and the
context's other buffers, from the result's full-cache cells) into model + KV + buffers for recordings of given
lengths, without eviction (the whole prompt's cache) and with ``--stream`` at a keep ratio (kept cache + one audio
chunk + the answer in per-head pools, a main cache of one chunk), and says which fit a device's memory.
"""

from __future__ import annotations

import pathlib

__all__ = ["DEVICES", "markdown", "memory_table", "plot"]

#: Devices of the fit table: name -> RAM bytes.
DEVICES = {"Raspberry Pi 5 4 GB": 4 * 2**30, "Raspberry Pi 5 8 GB": 8 * 2**30, "Mac 8 GB": 8 * 2**30,
           "Mac 16 GB": 16 * 2**30}
#: Share of a device's RAM a run may use (the rest: operating system, desktop, page cache).
USABLE_SHARE = 0.8
MIB = 2**20


def _mib(n) -> str:
    return "-" if n is None else f"{n / MIB:,.0f}"


def markdown(result: dict) -> str:
    """The cells of ``result`` as one markdown table (one row per cached length, method and keep)."""
    lines = [f"# {result['model']}: KV cache eviction sweep", "",
             f"`{result['command']}`", "",
             f"Machine: {result['machine'].get('cpu_model', result['machine'].get('processor', '?'))}, "
             f"{result['machine'].get('cpu_count')} CPUs; threads {result['config']['threads']}, KV "
             f"{result['config']['kv_type']}, flash attention {'on' if result['config']['flash_attn'] else 'off'}; "
             f"cache filled by {result['config']['fill']}"
             + (" (synthetic sequence state: prefill time projected, see prefill_source)"
                if result['config']['fill'] == "synthetic" else "") + ".", "",
             "Decode tokens/s are 1 / the median step; CPU: of the process's CPU time per step (with one thread the "
             "compute's own, steady on a shared machine), wall: of the wall-clock time. Ratios come from contexts "
             "decoded alternately in one run.", "",
             "| cached | method | keep | KV MiB in use | KV x full | decode tok/CPU-s | x full (CPU) | x full (wall) | "
             "same-size full: tokens, x (CPU) | prefill tok/CPU-s | evict CPU s | evict / prefill (CPU) | "
             "evict / prefill (wall) | context RSS MiB | peak RSS MiB |",
             "| ---: | --- |" + " ---: |" * 13]
    for c in sorted(result["cells"], key=lambda c: (c["n_cached"], c["method"] != "full", c["method"], -c["keep"])):
        same = c.get("same_tokens_full")
        same_text = "-" if not same else f"{same['n_tokens']:,}: {same['compacted_over_full_cpu']:.2f}"
        lines.append(
            f"| {c['n_cached']:,} | {c['method']} | {c['keep']:g} | {_mib(c['kv_bytes_used'])} | "
            f"{c['kv_ratio_used']:.3f} | {c['decode_tokens_per_cpu_s']:.3g} | "
            f"{c.get('decode_cpu_speedup_vs_full', 1.0):.2f} | {c.get('decode_speedup_vs_full', 1.0):.2f} | "
            f"{same_text} | {c['n_cached'] / c['prefill_cpu_seconds']:.3g} | {c['evict_cpu_seconds']:.3f} | "
            f"{100 * c['evict_cpu_share_of_prefill']:.2f}% | {100 * c['evict_share_of_prefill']:.2f}% | "
            f"{_mib(c.get('context_rss_bytes'))} | {_mib(c.get('peak_rss_bytes'))} |")
    window = {c["kv_bytes_window"] for c in result["cells"] if c.get("kv_bytes_window") is not None}
    if window:
        lines += ["", "KV columns: the evictable cache (the full-attention layers owning K/V). The sliding-window "
                  "layers' cache holds its window in every context alike: "
                  + ", ".join(f"{b / MIB:,.2f} MiB" for b in sorted(window)) + " (not in the columns)."]
    if result.get("memory_table"):
        lines += ["", memory_markdown(result["memory_table"])]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: pathlib.Path) -> None:
    """Decode tokens/s relative to the full cache and KV bytes relative to full, against keep, per method and
    cached length (two panels), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_kv) = plt.subplots(1, 2, figsize=(11, 4.2))
    cells = [c for c in result["cells"] if c["method"] != "full"]
    for n in sorted({c["n_cached"] for c in cells}):
        for method in sorted({c["method"] for c in cells}):
            row = sorted((c for c in cells if c["n_cached"] == n and c["method"] == method), key=lambda c: c["keep"])
            if not row:
                continue
            keeps = [1.0] + [c["keep"] for c in reversed(row)]
            label = f"{method}, {n:,} cached"
            ax_speed.plot(keeps, [1.0] + [c["decode_cpu_speedup_vs_full"] for c in reversed(row)], marker="o",
                          label=label)
            ax_kv.plot(keeps, [1.0] + [c["kv_ratio_used"] for c in reversed(row)], marker="o", label=label)
    ax_speed.set(xlabel="keep ratio", ylabel="decode tokens per CPU-s / full cache (side by side)",
                 title="decode speed")
    ax_kv.set(xlabel="keep ratio", ylabel="KV bytes in use / full cache", title="KV cache memory")
    for ax in (ax_speed, ax_kv):
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    ax_kv.legend(fontsize=7)
    fig.suptitle(f"{result['model']} ({result['config']['kv_type']} KV, {result['config']['threads']} threads)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_table(result: dict, *, model_bytes: int, projector_bytes: int | None, minutes: tuple[float, ...],
                 tokens_per_second: float, keep: float, chunk_tokens: int, answer_tokens: int, main_cells: int,
                 kv_bytes_per_token: int | None = None) -> dict:
    """Model + KV + buffers for recordings of ``minutes``, no eviction vs ``--stream`` at ``keep``.

    Parameters
    ----------
    result : dict
        A sweep result with full-cache cells (their ``context_rss_bytes`` minus their KV bytes are the buffers).
    model_bytes, projector_bytes : int
        The GGUF files' sizes (every weight is read while decoding, so resident); the model counts as its measured
        anonymous resident size after loading (``model_anonymous_rss_bytes``) when that is larger.
    minutes : tuple of float
    tokens_per_second : float
        Audio tokens per second of the model's projector (Qwen2.5-Omni: 25).
    keep : float
        Keep ratio of the streamed runs.
    chunk_tokens, answer_tokens : int
        Tokens of one audio chunk and of the question + answer: the pools' headroom while streaming.
    main_cells : int
        Cells of the main cache with ``--stream`` (one chunk with its text and the answer).
    kv_bytes_per_token : int, optional
        K + V bytes per token over all layers; default: the result's (its KV type).

    Returns
    -------
    dict
        ``rows`` (per length: tokens, full and stream bytes, and which devices each fits) and how each part was
        obtained (``measured`` / ``projected``).
    """
    per_token = kv_bytes_per_token or result["cells"][0]["kv_bytes_per_token"]
    # buffers besides the KV cache (compute buffer, output, graph): the largest measured at any length; an evicting
    # context holds its main cache (every position, filled before the eviction) and its pools besides them
    buffers = max((c["context_rss_bytes"] - c["kv_bytes_full"] - (c["kv_bytes_used"] if c["method"] != "full" else 0)
                   for c in result["cells"] if c.get("context_rss_bytes") is not None), default=0)
    # the model's anonymous resident memory after loading (llama.cpp's repacked weights), at least its file: the
    # file's mapped pages on top of it are reclaimable
    model_anon = max((c.get("model_anonymous_rss_bytes") or 0 for c in result["cells"]), default=0)
    model_bytes = max(model_bytes, model_anon)
    weights = model_bytes + (projector_bytes or 0)
    rows = []
    for m in minutes:
        tokens = int(round(m * 60 * tokens_per_second))
        full_kv = (tokens + answer_tokens) * per_token
        stream_kv = (int(round(keep * tokens)) + chunk_tokens + answer_tokens + main_cells) * per_token
        full_total, stream_total = weights + full_kv + buffers, weights + stream_kv + buffers
        rows.append({"minutes": m, "audio_tokens": tokens, "kv_bytes_full": full_kv, "kv_bytes_stream": stream_kv,
                     "total_bytes_full": full_total, "total_bytes_stream": stream_total,
                     "fits_full": [d for d, ram in DEVICES.items() if full_total <= USABLE_SHARE * ram],
                     "fits_stream": [d for d, ram in DEVICES.items() if stream_total <= USABLE_SHARE * ram]})
    longest = {}  # device -> the longest recording (minutes) that fits, without eviction and with --stream
    for device, ram in DEVICES.items():
        room = USABLE_SHARE * ram - weights - buffers
        full_tokens = room / per_token - answer_tokens
        stream_tokens = (room / per_token - chunk_tokens - answer_tokens - main_cells) / keep
        longest[device] = {"full_minutes": max(0.0, full_tokens / tokens_per_second / 60),
                           "stream_minutes": max(0.0, stream_tokens / tokens_per_second / 60)}
    return {"rows": rows, "longest_fit_minutes": longest, "kv_bytes_per_token": per_token, "buffers_bytes": buffers,
            "model_bytes": model_bytes,
            "projector_bytes": projector_bytes, "keep": keep, "chunk_tokens": chunk_tokens,
            "answer_tokens": answer_tokens, "main_cells": main_cells, "usable_share_of_ram": USABLE_SHARE,
            "how": ("model: anonymous resident size after loading, at least its GGUF file (measured); projector: its "
                    "GGUF file size (measured); KV bytes per token: llama.cpp's cache layout, "
                    "checked against the measured per-sequence statistics; buffers: the largest measured context "
                    "RSS minus its KV cache (measured at the sweep's lengths and batches: a larger prefill batch "
                    "needs a larger compute buffer); totals at the listed lengths: "
                    "projected (sums of those parts); the audio encoder's compute buffer is not included")}


def memory_markdown(table: dict) -> str:
    """:func:`memory_table` as markdown."""
    lines = [f"Memory (model {_mib(table['model_bytes'])} MiB + projector {_mib(table['projector_bytes'])} MiB + "
             f"KV {table['kv_bytes_per_token']:,} B/token + buffers {_mib(table['buffers_bytes'])} MiB; "
             f"`--stream` keeps {table['keep']:g} of the audio plus one {table['chunk_tokens']}-token chunk, "
             f"{table['answer_tokens']} text tokens and a {table['main_cells']}-cell main cache; a device fits a "
             f"run that needs at most {table['usable_share_of_ram']:.0%} of its RAM). {table['how']}.", "",
             "| audio | tokens | KV MiB full | total MiB full | fits (full) | KV MiB --stream | "
             "total MiB --stream | fits (--stream) |", "| ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in table["rows"]:
        lines.append(f"| {r['minutes']:g} min | {r['audio_tokens']:,} | {_mib(r['kv_bytes_full'])} | "
                     f"{_mib(r['total_bytes_full'])} | {', '.join(r['fits_full']) or 'none'} | "
                     f"{_mib(r['kv_bytes_stream'])} | {_mib(r['total_bytes_stream'])} | "
                     f"{', '.join(r['fits_stream']) or 'none'} |")
    lines += ["", "Longest recording that fits: " + "; ".join(
        f"{d}: {v['full_minutes']:.0f} min full, {v['stream_minutes']:.0f} min --stream"
        for d, v in table["longest_fit_minutes"].items()) + "."]
    return "\n".join(lines)
