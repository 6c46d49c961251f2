#!/usr/bin/env python3
"""Quality of every KV method on a real text model: pass-key retrieval and label-free agreement with the full cache,
for each document length x method x keep, the question after the document, before it, or asked as a follow-up.

    .venv/bin/python scripts/eval_text_quality.py [--model M.gguf | smollm2-135m | gemma3-270m | qwen2.5-coder-0.5b]
        [--lengths 2048,4096,8192]
        [--keeps 0.8,0.6,0.4,0.2] [--out results/quality] [--smoke]

Documents (scripts/bench_passkey_text.py's task): a pass key at each ``--depths`` fraction, and one multi-key
document (three named keys at depths 0.2 / 0.5 / 0.8, the question asks for one of them). Placements: ``after`` (the
eviction sees the question), ``before`` (query-agnostic), ``follow-up`` (the document with a question about the
filler, evicted; the full cache's first answer, then the pass-key question, not evicted).

Each (document, placement) is prefilled ONCE: the full cache of the prompt minus its last ``--tail`` tokens is saved
and restored into every configuration's session, which decodes the tail (the observation window) and evicts
(audiokv_edge/runtime/cache_replay.py). Per configuration:

- ``found``: the configuration's own greedy answer (at most ``--answer-tokens``) holds the key;
- label-free, teacher-forced on the full cache's greedy answer: ``top1`` (fraction of the answer's steps whose most
  likely token is the full cache's), ``kl`` (mean KL(full || method) of the next-token distributions, nats),
  ``exact`` (the first ``--exact-n`` greedy tokens equal the full cache's).

Configurations: full, then per keep every method of audiokv_edge.methods (audiokv with the model's stored head
profile, uniform budgets when it has none), ``audiokv-uniform`` (only when the model stores a profile) and
``audiokv-text`` (``--profiled-model``: a copy of the model with a text head profile stored by add_profile) and
``audiokv-text-sss-audio`` (the same with ``sss_scope="audio"``: the spectral smoothing is meant for audio, so a
text document keeps its raw window scores and only the profile's budgets remain).

Resumable: each finished row is appended to OUT/<name>.jsonl and skipped on a re-run; the full cache's reference
(prefix state, answers, log-probabilities) of each document is kept in OUT/<name>.work/ until the run completes.
Writes OUT/<name>.json (machine, versions, command, seeds, every row, the summary), OUT/<name>.png (one panel per
placement and length, one line per method) and OUT/<name>.md. ``--report`` only rewrites them from the jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import pathlib
import shutil
import sys
import textwrap
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import bench_passkey_text as task  # noqa: E402
from bench_common import header  # noqa: E402

logger = logging.getLogger("eval_text_quality")
REPO = pathlib.Path(__file__).resolve().parent.parent
PLACEMENTS = task.PLACEMENTS
#: Multi-key documents: the keys' depths, and which key each document asks for (rotating with the seed).
MULTIKEY_DEPTHS = (0.2, 0.5, 0.8)
METRICS = (("found", "pass-key accuracy"), ("top1", "top-1 agreement with the full cache"),
           ("kl", "KL(full || method), nats"), ("exact", "first N greedy tokens = full cache's"))


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """One line of the table: a method at a keep ratio on a model file."""

    name: str
    method: str
    keep: float
    model: str = "stored"   # "stored": --model; "text": --profiled-model; "uniform": a copy with a uniform profile
    sss_scope: str = "all"  # "audio": AudioKV's smoothing only over audio tokens, so none over a text document


def configs(keeps: list[float], methods: list[str], *, has_profile: bool, text_profile: bool) -> list[TextConfig]:
    """full, then per keep (lowest first: the differences show there first in a partial run) every method."""
    out = [TextConfig("full", "full", 1.0)]
    for k in sorted(keeps):
        out += [TextConfig(m, m, k) for m in methods if m != "full"]
        if has_profile and "audiokv" in methods:
            out.append(TextConfig("audiokv-uniform", "audiokv", k, "uniform"))
        if text_profile:
            out.append(TextConfig("audiokv-text", "audiokv", k, "text"))
            out.append(TextConfig("audiokv-text-sss-audio", "audiokv", k, "text", "audio"))
    return out


@dataclasses.dataclass(frozen=True)
class Document:
    """One retrieval item: the text, the question (after / before the document) and the key it asks for."""

    id: str
    text: str
    key: int
    question: str
    question_before: str


def documents(n_filler: int, depths: list[float], seed: int, multikey: bool) -> list[Document]:
    docs = []
    for d in depths:
        key = task.pass_key(n_filler, d, seed)
        docs.append(Document(f"passkey@{d:g}", task.passkey_document(n_filler, d, key), key, task.QUESTION,
                             task.QUESTION_BEFORE))
    if multikey:
        keys = task.multikey_keys(n_filler, seed)
        name = task.KEY_NAMES[seed % len(task.KEY_NAMES)]
        docs.append(Document(f"multikey:{name}", task.multikey_document(n_filler, MULTIKEY_DEPTHS, keys), keys[name],
                             task.MULTIKEY_QUESTION.format(name=name),
                             task.MULTIKEY_QUESTION_BEFORE.format(name=name)))
    return docs


def filler_count(session, target_tokens: int) -> int:
    """Filler paragraphs that make a pass-key prompt of about ``target_tokens`` tokens (with the question)."""
    one = len(session.text_prompt_tokens(task.FILLER * 10, task.QUESTION)[0])
    many = len(session.text_prompt_tokens(task.FILLER * 50, task.QUESTION)[0])
    per = (many - one) / 40
    return max(2, int((target_tokens - (one - 10 * per) - 40) / per))


# ------------------------------------------------------------------ the full cache's reference per (doc, placement)
def reference(session, doc: Document, placement: str, args, work: pathlib.Path) -> dict:
    """Prefill once with the full cache: the prefix state, the tail, the tokens between the eviction and the answer
    (follow-up), the full cache's greedy answer and its log-probabilities. Cached in ``work``."""
    import numpy as np

    from audiokv_edge.runtime import cache_replay as cr
    from audiokv_edge.runtime.llama import render_follow_up

    work.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c == "-" else "_" for c in f"{doc.id}-{placement}")
    state_path, npy_path, meta_path = (work / f"{safe}.{ext}" for ext in ("state", "npy", "json"))
    if meta_path.exists():   # the prefill is reused; the answer is recomputed if --answer-tokens changed
        meta = json.loads(meta_path.read_text())
        meta["prefix"] = cr.PrefixState(meta["n_prefix"], state_path.read_bytes())
        if meta.get("answer_tokens") == args.answer_tokens:
            meta["logprobs"] = np.load(npy_path).astype(np.float64)
            return meta
    else:
        t0 = time.perf_counter()
        question_first = placement == "before"
        question = {"after": doc.question, "before": doc.question_before, "follow-up": task.OTHER_QUESTION}[placement]
        tokens, span, rendered = session.text_prompt_tokens(doc.text, question, question_first=question_first)
        tail = tokens[-args.tail:]
        prefix = cr.save_prefix(session, tokens[:-args.tail])
        between: list[int] = []
        first_answer = None
        if placement == "follow-up":
            first = cr.greedy(session, prefix, tail, args.first_answer_tokens)
            reply = _text(session, first)
            follow = render_follow_up(session._formatter, [{"role": "user", "content": rendered.content}], reply,
                                      doc.question)
            between = [t for t in first if not _is_eog(session, t)] + session._llm.tokenize(follow, add_special=False)
            first_answer = reply
        meta = {"doc": doc.id, "placement": placement, "key": doc.key, "prompt_tokens": len(tokens),
                "document_tokens": span[1] - span[0], "n_prefix": prefix.n_tokens, "tail": tail, "between": between,
                "first_answer": first_answer, "reference_s": round(time.perf_counter() - t0, 1)}
        state_path.write_bytes(prefix.blob)
        meta["prefix"] = prefix
    answer = cr.greedy(session, meta["prefix"], meta["tail"], args.answer_tokens, between=meta["between"])
    forced = answer or [int(session._lc.llama_vocab_eos(session._vocab))]
    logprobs, _ = cr.replay(session, meta["prefix"], meta["tail"], forced, between=meta["between"])
    meta.update(forced=forced, answer=_text(session, answer), answer_tokens=args.answer_tokens)
    np.save(npy_path, logprobs.astype(np.float32))
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v for k, v in meta.items() if k != "prefix"}))
    tmp.rename(meta_path)
    meta["logprobs"] = logprobs.astype(np.float32).astype(np.float64)
    return meta


def _is_eog(session, token: int) -> bool:
    return bool(session._lc.llama_vocab_is_eog(session._vocab, token))


def _text(session, tokens: list[int]) -> str:
    return b"".join(session._llm.piece_bytes(t) for t in tokens if not _is_eog(session, t)).decode("utf-8", "replace")


def evaluate(session, cfg: TextConfig, ref: dict, args) -> dict:
    """One configuration on one (document, placement): its own answer and its agreement with the full cache."""
    from audiokv_edge.runtime import cache_replay as cr

    t0 = time.perf_counter()
    logprobs, record = cr.replay(session, ref["prefix"], ref["tail"], ref["forced"], between=ref["between"])
    quality = cr.compare_logprobs(ref["logprobs"], logprobs)
    if quality["prefix"] >= len(ref["forced"]):   # greedy decoding follows the full cache's answer all the way
        answer = ref["answer"]
    else:
        answer = _text(session, cr.greedy(session, ref["prefix"], ref["tail"], args.answer_tokens,
                                          between=ref["between"]))
    n_exact = min(args.exact_n, len(ref["forced"]))
    return {"config": cfg.name, "method": cfg.method, "keep": cfg.keep, "doc": ref["doc"],
            "placement": ref["placement"], "key": ref["key"], "answer": answer, "found": str(ref["key"]) in answer,
            "top1": quality["top1"], "kl": quality["kl"], "exact": quality["prefix"] >= n_exact,
            "greedy_prefix": quality["prefix"], "steps": quality["steps"],
            "kv_kept_ratio": round(record["kept_entries"] / record["full_entries"], 4) if record else 1.0,
            "evict_ms": record.get("evict_ms", 0.0), "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------ summary, plot, table
def summarise(rows: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["length"], r["placement"], r["config"], r["keep"]), []).append(r)
    out = []
    for (length, placement, config, keep), rs in cells.items():
        out.append({"length": length, "placement": placement, "config": config, "keep": keep, "n": len(rs),
                    "found": round(sum(r["found"] for r in rs) / len(rs), 4),
                    "top1": round(sum(r["top1"] for r in rs) / len(rs), 4),
                    "kl": round(sum(r["kl"] for r in rs) / len(rs), 5),
                    "exact": round(sum(r["exact"] for r in rs) / len(rs), 4),
                    "kv_kept_ratio": round(sum(r["kv_kept_ratio"] for r in rs) / len(rs), 4)})
    return sorted(out, key=lambda r: (r["length"], PLACEMENTS.index(r["placement"]), r["config"] != "full",
                                      r["config"], -r["keep"]))


def ranking(summary: list[dict], metric: str = "top1") -> list[tuple[str, float, int]]:
    """Methods by their mean ``metric`` over every evicted cell (length, placement, keep) that all of them ran:
    (config, mean, cells), best first (lowest KL, highest otherwise)."""
    evicted = [r for r in summary if r["config"] != "full"]
    names = sorted({r["config"] for r in evicted})
    by_name = {n: {(r["length"], r["placement"], r["keep"]): r[metric] for r in evicted if r["config"] == n}
               for n in names}
    common = set.intersection(*(set(v) for v in by_name.values())) if by_name else set()
    if not common:
        return []
    means = [(n, round(sum(by_name[n][c] for c in common) / len(common), 4), len(common)) for n in names]
    return sorted(means, key=lambda t: t[1] if metric == "kl" else -t[1])


def write_plot(summary: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(length, p) for length in sorted({r["length"] for r in summary}) for p in PLACEMENTS
              if any(r["length"] == length and r["placement"] == p for r in summary)]
    metrics = [m for m in METRICS if m[0] in ("found", "top1", "kl")]
    fig, axes = plt.subplots(len(metrics), max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4 * len(metrics)),
                             squeeze=False)
    names = sorted({r["config"] for r in summary if r["config"] != "full"})
    colors = plt.get_cmap("tab10")
    for col, (length, placement) in enumerate(panels):
        cell = [r for r in summary if r["length"] == length and r["placement"] == placement]
        full = next((r for r in cell if r["config"] == "full"), None)
        for row, (metric, label) in enumerate(metrics):
            ax = axes[row][col]
            for i, name in enumerate(names):
                pts = sorted(((r["keep"], r[metric]) for r in cell if r["config"] == name), reverse=True)
                if full is not None:
                    pts = [(1.0, full[metric])] + pts
                if len(pts) > (1 if full is not None else 0):
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name,
                            color=colors(i % 10), linestyle="--" if "-" in name else "-")
            if full is not None and metric == "found":
                ax.axhline(full[metric], color="black", linewidth=0.8, label="full cache")
            if metric == "kl":
                ax.set_yscale("symlog", linthresh=0.01)
            n = max((r["n"] for r in cell), default=0)
            ax.set_title(f"{length} tokens, question {placement} ({n} docs)", fontsize=9)
            ax.set_xlabel("keep ratio")
            ax.set_ylabel(label, fontsize=8)
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, width=int(50 * max(1, len(panels)))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_table(summary: list[dict], rows: list[dict], path: pathlib.Path, head: str, exact_n: int) -> None:
    lines = [head, "",
             "found: the method's own greedy answer holds the pass key. top-1: fraction of the full cache's answer "
             "tokens (teacher-forced) whose most likely token is the same with the method's cache. KL: mean "
             f"KL(full || method) of those next-token distributions (nats). exact: the first {exact_n} greedy "
             "tokens are the full cache's. Averages over the documents of each cell.", ""]
    labels = full_cache_labels(rows)
    if labels:
        found = sum(r["found"] for r in labels)
        lines.append(f"The full cache finds the pass key in {found} of {len(labels)} (length, document, placement) "
                     + ("items: pass-key accuracy is a real label there." if found else
                        "items: pass-key accuracy labels nothing here; top-1 and KL carry the comparison.")
                     + "".join(f" Not found: {r['length']} tokens, {r['doc']}, {r['placement']}."
                               for r in labels if not r["found"]))
    for metric in ("top1", "kl", "found"):
        rank = ranking(summary, metric)
        if rank:
            lines.append(f"Ranking by mean {metric} over the {rank[0][2]} evicted cells every method ran: "
                         + ", ".join(f"{n} {v:g}" for n, v, _ in rank) + ".")
    lines += ["", "| length | placement | method | keep | docs | found | top-1 | KL | exact | KV kept |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['length']} | {r['placement']} | {r['config']} | {r['keep']:.1f} | {r['n']} | {r['found']:.2f} | "
              f"{r['top1']:.3f} | {r['kl']:.4f} | {r['exact']:.2f} | {r['kv_kept_ratio']:.3f} |" for r in summary]
    lines += ["", "Full cache's answers:", ""]
    for r in rows:
        if r["config"] == "full":
            lines.append(f"- {r['length']} tokens, {r['doc']}, {r['placement']} (key {r['key']}): "
                         f"{r['answer'].strip()!r}")
    path.write_text("\n".join(lines) + "\n")


def write_outputs(rows: list[dict], args, name: str, meta: dict) -> list[dict]:
    summary = summarise(rows)
    title = f"{args.model.name}: text retrieval and agreement with the full cache vs keep ratio"
    write_plot(summary, args.out / f"{name}.png", title)
    write_table(summary, rows, args.out / f"{name}.md",
                f"# {title}\n\nCommand: `{meta['command']}`", args.exact_n)
    report = dict(meta, summary=summary, ranking={m: ranking(summary, m) for m in ("top1", "kl", "found", "exact")},
                  full_cache_labels=full_cache_labels(rows), rows=rows)
    tmp = args.out / f"{name}.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.rename(args.out / f"{name}.json")
    return summary


# ------------------------------------------------------------------ main
def _list(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x]


def model_for(cfg: TextConfig, args, work: pathlib.Path) -> pathlib.Path:
    if cfg.model == "text":
        return args.profiled_model
    if cfg.model == "uniform":
        import eval_quality

        return eval_quality.model_variant(args.model, "uniform", work)
    return args.model


def resolve_model(name_or_path: str) -> pathlib.Path:
    """A real text model's name (audiokv_edge.testing.real_models.TEXT_MODELS) or a GGUF path; exits with one line
    saying how to install a named model that is not installed."""
    from audiokv_edge.testing import real_models

    if name_or_path in real_models.TEXT_MODELS:
        try:
            return real_models.TEXT_MODELS[name_or_path]()
        except real_models.RealModelNotInstalledError as exc:
            raise SystemExit(f"--model {name_or_path}: {exc}") from None
    path = pathlib.Path(name_or_path)
    if not path.is_file():
        raise SystemExit(f"--model {name_or_path}: no such file, and not one of {', '.join(real_models.TEXT_MODELS)}")
    return path


def full_cache_labels(rows: list[dict]) -> list[dict]:
    """Whether the full cache finds the key, per (length, document, placement): where it does, pass-key accuracy is
    a real label for the methods; where it does not, only the agreement with the full cache (top-1, KL) compares."""
    return [{"length": r["length"], "doc": r["doc"], "placement": r["placement"], "key": r["key"],
             "found": r["found"], "answer": r["answer"]} for r in rows if r["config"] == "full"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="text model: a GGUF path, or one of the real models "
                    "by name: smollm2-135m (default, installed by scripts/setup.sh), gemma3-270m, qwen2.5-coder-0.5b "
                    "(scripts/fetch_text_models.sh)")
    ap.add_argument("--profiled-model", type=pathlib.Path, help="a copy of --model with a text head profile stored "
                    "(convert/add_profile.py): adds the configuration audiokv-text")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "results" / "quality")
    ap.add_argument("--name", default=None, help="result file stem (default <date>-text-<model>)")
    ap.add_argument("--lengths", default="2048,4096,8192", help="prompt lengths in tokens (about)")
    ap.add_argument("--keeps", default="0.8,0.6,0.4,0.2")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: all of audiokv_edge.methods)")
    ap.add_argument("--depths", default="0.1,0.5,0.9", help="depths of the single pass key")
    ap.add_argument("--no-multikey", action="store_true")
    ap.add_argument("--placements", default=",".join(PLACEMENTS))
    ap.add_argument("--tail", type=int, default=64, help="prompt tokens decoded after the restore (>= the window)")
    ap.add_argument("--answer-tokens", type=int, default=12)
    ap.add_argument("--first-answer-tokens", type=int, default=8, help="follow-up: the first answer's tokens")
    ap.add_argument("--exact-n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="only rewrite JSON / PNG / MD from the jsonl")
    ap.add_argument("--smoke", action="store_true", help="CI subset: 256 tokens, one depth, no multi-key, full + "
                    "snapkv + audiokv at keep 0.4, the three placements")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from audiokv_edge.methods import METHODS
    from audiokv_edge.native import libs as native_libs
    from audiokv_edge.profile.gguf_keys import read_stored
    from audiokv_edge.runtime.session import Session, SessionConfig

    args.model = resolve_model(args.model)
    lengths, keeps, depths = _list(args.lengths, int), _list(args.keeps), _list(args.depths)
    methods = _list(args.methods, str) if args.methods else [m for m in METHODS if m != "full"]
    placements = _list(args.placements, str)
    multikey = not args.no_multikey
    if args.smoke:
        lengths, keeps, depths, methods, multikey = [256], [0.4], [0.5], ["snapkv", "audiokv"], False
        args.tail, args.answer_tokens, args.first_answer_tokens, args.exact_n = 40, 4, 3, 3
    bad = sorted(set(placements) - set(PLACEMENTS)) + sorted(set(methods) - set(METHODS))
    if bad:
        raise SystemExit(f"unknown placements or methods: {', '.join(bad)}")
    if args.profiled_model is not None and not args.profiled_model.is_file():
        raise SystemExit(f"--profiled-model {args.profiled_model}: no such file")
    has_profile = read_stored(str(args.model))[0] is not None
    cfgs = configs(keeps, methods, has_profile=has_profile, text_profile=args.profiled_model is not None)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{datetime.date.today().isoformat()}-text-{args.model.stem}{'-smoke' if args.smoke else ''}"
    raw = args.out / f"{name}.jsonl"
    rows = [json.loads(ln) for ln in raw.read_text().splitlines() if ln.strip()] if raw.exists() else []
    done = {(r["length"], r["doc"], r["placement"], r["config"], r["keep"]) for r in rows}
    work = args.out / f"{name}.work"
    work.mkdir(exist_ok=True)
    meta = header("eval_text_quality", native_lib_dir=native_libs.lib_dir())
    meta.update(model=str(args.model), profiled_model=None if args.profiled_model is None else str(args.profiled_model),
                has_stored_profile=has_profile, lengths=lengths, keeps=keeps, depths=depths, multikey=multikey,
                multikey_depths=MULTIKEY_DEPTHS, placements=placements, seed=args.seed, tail=args.tail,
                answer_tokens=args.answer_tokens, first_answer_tokens=args.first_answer_tokens, exact_n=args.exact_n,
                threads=args.threads, configs=[dataclasses.asdict(c) for c in cfgs], filler=task.FILLER,
                other_question=task.OTHER_QUESTION)
    if args.report:
        write_outputs(rows, args, name, meta)
        return 0

    def sink(row: dict) -> None:
        rows.append(row)
        with open(raw, "a") as f:
            f.write(json.dumps(row) + "\n")
        logger.info("%5d %-16s %-9s %-12s keep %.1f  found %d  top1 %.2f  kl %.4f  %s  (%.0f s)", row["length"],
                    row["doc"], row["placement"], row["config"], row["keep"], row["found"], row["top1"], row["kl"],
                    row["answer"].strip()[:40], row["seconds"])

    t_start = time.time()
    for length in lengths:
        ctx = length + 256
        scfg = dict(max_tokens=max(args.answer_tokens, args.first_answer_tokens) + 1, threads=args.threads, ctx=ctx)
        with contextlib.ExitStack() as stack:
            full = stack.enter_context(Session(args.model, config=SessionConfig(method="full", **scfg), audio=False))
            n_filler = filler_count(full, length)
            # item by item (reference, then every configuration): a partial run has whole comparisons
            for d, p in [(d, p) for d in documents(n_filler, depths, args.seed, multikey) for p in placements]:
                pending = [c for c in cfgs if (length, d.id, p, c.name, c.keep) not in done]
                if not pending:
                    continue
                t0 = time.perf_counter()
                ref = reference(full, d, p, args, work / str(length))
                for cfg in pending:
                    if cfg.name == "full":
                        sink({"length": length, "config": "full", "method": "full", "keep": 1.0, "doc": d.id,
                              "placement": p, "key": d.key, "answer": ref["answer"],
                              "found": str(d.key) in ref["answer"], "top1": 1.0, "kl": 0.0, "exact": True,
                              "greedy_prefix": len(ref["forced"]), "steps": len(ref["forced"]), "kv_kept_ratio": 1.0,
                              "evict_ms": 0.0, "prompt_tokens": ref["prompt_tokens"],
                              "document_tokens": ref["document_tokens"], "first_answer": ref["first_answer"],
                              "seconds": round(time.perf_counter() - t0, 1)})
                        continue
                    # one context at a time beside the full cache's: a context per configuration kept open for
                    # the whole length held 17.8 GB at 4k tokens of Qwen2.5-Coder-0.5B (29 contexts); reopening
                    # costs little (the model's weights are mmapped)
                    with Session(model_for(cfg, args, work), audio=False,
                                 config=SessionConfig(method=cfg.method, keep=cfg.keep, sss_scope=cfg.sss_scope,
                                                       **scfg)) as session:
                        sink(dict(evaluate(session, cfg, ref, args), length=length))
                write_outputs(rows, args, name, dict(meta, wall_s=round(time.time() - t_start, 1)))
        shutil.rmtree(work / str(length), ignore_errors=True)
    summary = write_outputs(rows, args, name, dict(meta, wall_s=round(time.time() - t_start, 1)))
    shutil.rmtree(work, ignore_errors=True)
    for metric in ("top1", "kl", "found"):
        logger.info("ranking by %s: %s", metric, ranking(summary, metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
