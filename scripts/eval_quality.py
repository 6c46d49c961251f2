#!/usr/bin/env python3
"""Quality of every KV method on the demo audio model through the patched llama.cpp: WER of long passages (60-300 s,
reserved voices awb / rms) and of human clips, and accuracy on questions with known answers, for each method x keep,
AudioKV with and without SSS, with SSS restricted to the audio tokens (audiokv-sssaudio: text tokens keep their raw
scores), with a uniform profile, and --stream.

    .venv/bin/python scripts/eval_quality.py [--keeps 1,0.8,0.6,0.4,0.2] [--out results/quality] [--smoke]

Questions (audiokv_edge/demo_model/tasks.py evaluation_questions): first / last sentence, "what is said about X" for
every sentence with a word said once, counts of words said 2+ times, yes/no with as many "No." as "Yes."; each
answer graded right / wrong (`correct`, tasks.answer_correct) and by a score in [0, 1] (`score`, tasks.answer_score:
1 - WER against the reference sentence, so a near miss is not wholly wrong). The summary breaks both down per kind
(beside the accuracy of the rote answers "Yes." and "1") and, for the sentence answers, per third of the passage
where the answer lies (early / middle / late: what an eviction policy drops).

Resumable: each (configuration, item, task) result is appended to OUT/<name>.jsonl and skipped on a re-run; a file
holding answers to another version of the question set is refused. Writes OUT/<name>.json (machine, versions,
command, every result, the summary), OUT/<name>.png (WER, accuracy and score vs keep, one line per method; score per
kind and per position at the lowest keep) and OUT/<name>.md (the tables). --smoke runs a short subset (CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import pathlib
import platform
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

logger = logging.getLogger("eval_quality")
METHODS = ("streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "audiokv")
REPO = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One line of the table: a method at a keep ratio on a model variant."""

    name: str        # label in the table and plot
    method: str
    keep: float
    variant: str = "stored"   # "stored" profile and defaults, "nosss" (SSS alpha 0), "uniform" (no profile)
    stream: bool = False
    sss_scope: str = "all"    # "audio": SSS within the audio chunks only (SessionConfig.sss_scope)


def configs(keeps: list[float], stream_keeps: list[float]) -> list[EvalConfig]:
    out = [EvalConfig("full", "full", 1.0)]
    for k in keeps:
        if k >= 1.0:
            continue
        out += [EvalConfig(m, m, k) for m in METHODS]
        out += [EvalConfig("audiokv-nosss", "audiokv", k, "nosss"), EvalConfig("audiokv-uniform", "audiokv", k, "uniform"),
                EvalConfig("audiokv-sssaudio", "audiokv", k, sss_scope="audio")]
    for k in stream_keeps:
        out += [EvalConfig("audiokv+stream", "audiokv", k, stream=True), EvalConfig("snapkv+stream", "snapkv", k, stream=True)]
    return out


def model_variant(model: pathlib.Path, variant: str, work: pathlib.Path) -> pathlib.Path:
    """The model file for a variant: the model itself ("stored"), a copy whose stored defaults turn SSS off
    ("nosss": alpha 0), or a copy whose head profile is uniform ("uniform": every head scored 1)."""
    import numpy as np

    from audiokv_edge.profile.gguf_keys import read_stored, write_profile
    from audiokv_edge.profile.head_profile import HeadProfile
    from audiokv_edge.profile.defaults import ProfileDefaults

    if variant == "stored":
        return model
    if variant not in ("nosss", "uniform"):
        raise ValueError(f"unknown variant {variant!r}")
    path = work / f"{model.stem}-{variant}.gguf"
    if path.exists():
        return path
    profile, defaults = read_stored(str(model))
    if profile is None:
        logger.warning("%s has no head profile: variant %s is the model itself", model, variant)
        return model
    if variant == "nosss":
        defaults = dataclasses.replace(defaults or ProfileDefaults(), sss_alpha=0.0)
    else:
        profile = HeadProfile(np.ones_like(profile.scores), dict(profile.source, calibration="uniform (eval_quality)"))
    write_profile(model, profile, path, defaults)
    return path


def run_items(cfg: EvalConfig, model: pathlib.Path, mmproj: pathlib.Path, items: list[dict], done: set, sink,
              max_tokens: int, ctx: int, questions: bool, lora: pathlib.Path | None = None,
              dry_multiplier: float = 0.0) -> None:
    import jiwer

    from audiokv_edge.demo_model import corpus, tasks
    from audiokv_edge.runtime.session import Session, SessionConfig

    todo = [(it, t) for it in items for t in ([None] + (it["questions"] if questions else []))
            if (cfg.name, cfg.keep, it["id"], t["question"] if t else "transcribe") not in done]
    if not todo:
        return
    scfg = SessionConfig(method=cfg.method, keep=None if cfg.method == "full" else cfg.keep, stream=cfg.stream,
                         max_tokens=max_tokens, ctx=ctx, sss_scope=cfg.sss_scope, dry_multiplier=dry_multiplier)
    with Session(model, mmproj=mmproj, config=scfg, lora=lora) as s:
        for it, t in todo:
            prompt = t["question"] if t else tasks.TRANSCRIBE
            t0 = time.time()
            ans = s.answer(it["audio"], prompt)
            rec = {"config": cfg.name, "method": cfg.method, "keep": cfg.keep, "variant": cfg.variant,
                   "stream": cfg.stream, "sss_scope": cfg.sss_scope, "item": it["id"], "voice": it["voice"], "seconds": it["seconds"],
                   "task": t["question"] if t else "transcribe", "kind": t["kind"] if t else "transcribe",
                   "answer": ans.text, "kv_bytes_full": ans.stats.kv_bytes_full, "kv_bytes_kept": ans.stats.kv_bytes_kept,
                   "wall_s": round(time.time() - t0, 2)}
            if t is None:
                ref, hyp = corpus.normalise(it["transcript"]), corpus.normalise(ans.text)
                m = jiwer.process_words(ref, hyp or "-")
                rec.update(ref_words=len(ref.split()), errors=m.substitutions + m.deletions + m.insertions,
                           wer=round(m.wer, 4))
            else:
                rec.update(reference=t["answer"], correct=tasks.answer_correct(t["kind"], ans.text, t["answer"]),
                           score=round(tasks.answer_score(t["kind"], ans.text, t["answer"]), 4),
                           position=t.get("position"), start_s=t.get("start_s"), end_s=t.get("end_s"),
                           question_set=it.get("question_set", 1))
            sink(rec)


def full_cache_answers(results: list[dict]) -> dict[tuple[str, str], str]:
    """The full cache's answer to each (item, task): what an evicting method should reproduce."""
    return {(r["item"], r["task"]): r["answer"] for r in results if r["config"] == "full"}


def distance_to_full(result: dict, full: dict[tuple[str, str], str]) -> tuple[int, int] | None:
    """(word errors, words) of a transcription against the full cache's answer to the same item (None: no full-cache
    answer yet). 0 errors: the method gave the full cache's transcript word for word."""
    import jiwer

    from audiokv_edge.demo_model import corpus

    ref = full.get((result["item"], result["task"]))
    if ref is None:
        return None
    ref, hyp = corpus.normalise(ref) or "-", corpus.normalise(result["answer"]) or "-"
    m = jiwer.process_words(ref, hyp)
    return m.substitutions + m.deletions + m.insertions, len(ref.split())


def question_score(result: dict) -> float:
    """A question result's score in [0, 1] (tasks.answer_score), computed from its answer when an older result file
    lacks it."""
    from audiokv_edge.demo_model import tasks

    if "score" in result:
        return result["score"]
    return tasks.answer_score(result["kind"], result["answer"], result["reference"])


def breakdown(questions: list[dict]) -> dict:
    """Per kind and, for the sentence answers, per position: how many questions, the share answered right, the mean
    score; for the kinds a model can answer by rote ("Yes.", "1") the share the rote answer gets right."""
    from audiokv_edge.demo_model import tasks

    def cell(rs, kind=None):
        out = {"questions": len(rs), "accuracy": round(sum(bool(r["correct"]) for r in rs) / len(rs), 4),
               "score": round(sum(question_score(r) for r in rs) / len(rs), 4)}
        if kind in tasks.ROTE_ANSWERS:
            rote = tasks.ROTE_ANSWERS[kind]
            out["rote_accuracy"] = round(sum(tasks.answer_correct(kind, rote, r["reference"]) for r in rs) / len(rs), 4)
        return out

    kinds = sorted({r["kind"] for r in questions},
                   key=lambda k: tasks.KINDS.index(k) if k in tasks.KINDS else len(tasks.KINDS))
    by_kind = {k: cell([r for r in questions if r["kind"] == k], k) for k in kinds}
    placed = [r for r in questions if r["kind"] in tasks.SENTENCE_KINDS and r.get("position") in tasks.POSITIONS]
    by_position = {p: cell([r for r in placed if r["position"] == p]) for p in tasks.POSITIONS
                   if any(r["position"] == p for r in placed)}
    return {"by_kind": by_kind, "by_position": by_position}


def summarise(results: list[dict]) -> list[dict]:
    full = full_cache_answers(results)
    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["config"], r["keep"])
        row = rows.setdefault(key, {"config": r["config"], "keep": r["keep"], "errors": 0, "ref_words": 0,
                                    "human_errors": 0, "human_words": 0, "vs_full": [],
                                    "correct": 0, "questions": [], "kv_ratio": []})
        if r["kind"] == "transcribe":
            h = r["voice"] == "human"
            row["human_errors" if h else "errors"] += r["errors"]
            row["human_words" if h else "ref_words"] += r["ref_words"]
            d = distance_to_full(r, full)
            if d is not None:
                row["vs_full"].append(min(1.0, d[0] / max(1, d[1])))
        else:
            row["correct"] += bool(r["correct"])
            row["questions"].append(r)
        if r["kv_bytes_full"]:
            row["kv_ratio"].append(r["kv_bytes_kept"] / r["kv_bytes_full"])
    out = []
    for row in rows.values():
        out.append({"config": row["config"], "keep": row["keep"],
                    "wer": round(row["errors"] / row["ref_words"], 4) if row["ref_words"] else None,
                    "human_wer": round(row["human_errors"] / row["human_words"], 4) if row["human_words"] else None,
                    "wer_vs_full": round(sum(row["vs_full"]) / len(row["vs_full"]), 4) if row["vs_full"] else None,
                    "accuracy": round(row["correct"] / len(row["questions"]), 4) if row["questions"] else None,
                    "score": round(sum(map(question_score, row["questions"])) / len(row["questions"]), 4)
                    if row["questions"] else None,
                    "kv_kept_ratio": round(sum(row["kv_ratio"]) / len(row["kv_ratio"]), 4) if row["kv_ratio"] else None,
                    **breakdown(row["questions"])})
    return sorted(out, key=lambda r: (r["config"] != "full", r["config"], -r["keep"]))


def per_item(results: list[dict]) -> list[dict]:
    """One row per transcription: WER against the reference and against the full cache's answer."""
    full = full_cache_answers(results)
    rows = []
    for r in results:
        if r["kind"] != "transcribe":
            continue
        d = distance_to_full(r, full)
        rows.append({"config": r["config"], "keep": r["keep"], "item": r["item"], "wer": r["wer"],
                     "wer_vs_full": None if d is None else round(d[0] / max(1, d[1]), 4)})
    return sorted(rows, key=lambda r: (r["item"], r["config"] != "full", r["config"], -r["keep"]))


def breakdown_keep(summary: list[dict]) -> float | None:
    """The keep ratio the per-kind and per-position breakdowns are drawn at: the lowest one with question results."""
    keeps = [r["keep"] for r in summary if r["config"] != "full" and r["by_kind"]]
    return min(keeps) if keeps else None


def write_plot(summary: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audiokv_edge.demo_model import tasks

    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    full = next((r for r in summary if r["config"] == "full"), None)
    names = sorted({r["config"] for r in summary if r["config"] != "full"})
    colors = plt.get_cmap("tab20")
    for ax, metric, label in ((axes[0, 0], "wer", "WER (long passages, reserved voices)"),
                              (axes[0, 1], "wer_vs_full", "WER vs the full cache's transcript"),
                              (axes[1, 0], "accuracy", "question accuracy (right / wrong)"),
                              (axes[1, 1], "score", "question score (sentences: 1 - WER)")):
        for i, name in enumerate(names):
            pts = [(r["keep"], r[metric]) for r in summary if r["config"] == name and r[metric] is not None]
            if full is not None and full[metric] is not None and not name.endswith("+stream"):
                pts.append((1.0, full[metric]))
            pts.sort(reverse=True)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colors(i % 20),
                        linestyle="--" if "-" in name or "+" in name else "-")
        if full is not None and full[metric] is not None:
            ax.axhline(full[metric], color="black", linewidth=0.8, label="full cache")
        if all(r[metric] is None for r in summary):
            ax.text(0.5, 0.5, f"no {label} in this run", transform=ax.transAxes, ha="center", va="center")
        if metric == "wer" and any(r[metric] for r in summary):
            ax.set_yscale("log")  # run-on answers reach WER 5-40; the differences that matter sit near 1
        ax.set_xlabel("keep ratio (fraction of the KV cache kept)")
        ax.set_ylabel(label)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    keep = breakdown_keep(summary)
    rows = [r for r in summary if (r["config"] == "full" or r["keep"] == keep) and r["by_kind"]]
    for ax, field, groups, label, empty in (
            (axes[0, 2], "by_kind", tasks.KINDS, "question kind", "no questions in this run"),
            (axes[1, 2], "by_position", tasks.POSITIONS, "third of the passage holding the answered sentence "
             "(first, last, about)", "no answer positions in this run (results before question set 2)")):
        groups = [g for g in groups if any(g in r[field] for r in rows)]
        width = 0.8 / max(1, len(rows))
        for j, r in enumerate(rows):
            color = "black" if r["config"] == "full" else colors(names.index(r["config"]) % 20)
            xs = [g + (j - (len(rows) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [r[field].get(g, {}).get("score", 0) for g in groups], width, color=color,
                   label="full cache" if r["config"] == "full" else r["config"])
        rote_label = "rote answer (" + " / ".join(tasks.ROTE_ANSWERS.values()) + ")"
        for g, group in enumerate(groups):
            rote = next((r[field][group]["rote_accuracy"] for r in rows if "rote_accuracy" in r[field].get(group, {})),
                        None)
            if rote is not None:
                ax.hlines(rote, g - 0.45, g + 0.45, color="red", linewidth=1.5, label=rote_label)
                rote_label = None
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlabel(label)
        ax.set_ylabel(f"score at keep {keep}" if keep is not None else "score")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
        if not groups:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center")
    if rows:
        axes[0, 2].legend(fontsize=6, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(summary: list[dict], items: list[dict], path: pathlib.Path, header: str) -> None:
    from audiokv_edge.demo_model import tasks

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [header, "",
             "WER vs full cache: word errors of the method's transcript against the full cache's transcript of the same "
             "recording (0: the same answer as with the whole cache), capped at 1 per recording (a run-on answer counts "
             "as wholly wrong, not as 40x wrong), averaged over the recordings. QA accuracy: answers graded right / "
             "wrong (yes/no and counts: the first word; sentences: WER <= 0.25 against the reference sentence); QA "
             "score: the mean of 1 - WER (clipped to [0, 1]) for sentence answers and 1 / 0 for the others.", "",
             "| method | keep | WER passages | WER human clips | WER vs full cache | QA accuracy | QA score | "
             "KV kept / full |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['config']} | {r['keep']:.1f} | {f(r['wer'])} | {f(r['human_wer'])} | {f(r['wer_vs_full'])} | "
              f"{f(r['accuracy'])} | {f(r['score'])} | {f(r['kv_kept_ratio'])} |" for r in summary]
    asked = [r for r in summary if r["by_kind"]]
    if asked:
        kinds = [k for k in tasks.KINDS if any(k in r["by_kind"] for r in asked)]
        rote = {k: next(r["by_kind"][k]["rote_accuracy"] for r in asked if k in r["by_kind"])
                for k in kinds if k in tasks.ROTE_ANSWERS}
        lines += ["", "Questions per kind: score / accuracy (questions). The rote row answers every yes/no with "
                  + " and every count with ".join(f'"{tasks.ROTE_ANSWERS[k]}"' for k in tasks.ROTE_ANSWERS)
                  + ": a kind where a method does not beat it tells nothing about the cache.", "",
                  "| method | keep | " + " | ".join(kinds) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in kinds) + " |"]
        lines += [f"| {r['config']} | {r['keep']:.1f} | " + " | ".join(
            "-" if k not in r["by_kind"] else
            f"{r['by_kind'][k]['score']:.3f} / {r['by_kind'][k]['accuracy']:.3f} ({r['by_kind'][k]['questions']})"
            for k in kinds) + " |" for r in asked]
        lines.append("| rote answer | - | " + " | ".join(f(rote.get(k)) for k in kinds) + " |")
        placed = [r for r in asked if r["by_position"]]
        if placed:
            lines += ["", "Sentence answers (first, last, about) by where the answered sentence lies in the passage "
                      "(third of the spoken time holding its midpoint): score / accuracy (questions).", "",
                      "| method | keep | " + " | ".join(tasks.POSITIONS) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in tasks.POSITIONS) + " |"]
            lines += [f"| {r['config']} | {r['keep']:.1f} | " + " | ".join(
                "-" if p not in r["by_position"] else f"{r['by_position'][p]['score']:.3f} / "
                f"{r['by_position'][p]['accuracy']:.3f} ({r['by_position'][p]['questions']})"
                for p in tasks.POSITIONS) + " |" for r in placed]
    lines += ["", "Per recording (WER / WER vs full cache):", ""]
    names = sorted({r["item"] for r in items})
    lines += ["| method | keep | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    cells = {(r["config"], r["keep"], r["item"]): r for r in items}
    for key in dict.fromkeys((r["config"], r["keep"]) for r in items):
        row = [cells.get((*key, n)) for n in names]
        lines.append(f"| {key[0]} | {key[1]:.1f} | " + " | ".join(
            "-" if c is None else f"{c['wer']:.2f} / {f(c['wer_vs_full'])}" for c in row) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, help="text model GGUF (default: the built-in demo model)")
    ap.add_argument("--mmproj", type=pathlib.Path, help="audio projector GGUF (default: the demo model's)")
    ap.add_argument("--lora", type=pathlib.Path, help="LoRA adapter GGUF of the text model (default: the demo model's)")
    ap.add_argument("--set", type=pathlib.Path, default=None, help="evaluation set directory (built when missing)")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "results" / "quality")
    ap.add_argument("--name", default=None, help="result file stem (default <date>-<model>)")
    ap.add_argument("--keeps", default="1,0.8,0.6,0.4,0.2")
    ap.add_argument("--stream-keeps", default="0.4")
    ap.add_argument("--durations", default="60,120,300", help="passage lengths in seconds")
    ap.add_argument("--methods", default=None, help="comma-separated config names to run (default all)")
    ap.add_argument("--no-questions", action="store_true")
    ap.add_argument("--max-tokens", type=int, default=1200)
    ap.add_argument("--ctx", type=int, default=6144)
    ap.add_argument("--dry-multiplier", type=float, default=0.0,
                    help="llama.cpp's DRY repetition penalty for every config (as the runner's; default 0: greedy)")
    ap.add_argument("--smoke", action="store_true", help="short subset: one 60 s passage per voice, full + snapkv + "
                    "audiokv at keep 0.4, no questions (unless --questions)")
    ap.add_argument("--questions", action="store_true", help="with --smoke: ask the passages' questions too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from tqdm import tqdm

    from audiokv_edge.demo_model import evalset, export, tasks

    if args.model is None:
        files = export.demo_paths()
        args.model, default_mmproj = files.model, files.mmproj
        args.mmproj = args.mmproj or default_mmproj
        args.lora = args.lora or files.lora
    keeps = [float(k) for k in args.keeps.split(",")]
    stream_keeps = [float(k) for k in args.stream_keeps.split(",") if k]
    durations = [int(d) for d in args.durations.split(",")]
    if args.smoke:
        keeps, stream_keeps, durations = [1.0, 0.4], [], [60]
        args.no_questions = args.no_questions or not args.questions
        args.max_tokens = min(args.max_tokens, 300)
    cfgs = configs(keeps, stream_keeps)
    if args.smoke:
        cfgs = [c for c in cfgs if c.name in ("full", "snapkv", "audiokv")]
    if args.methods:
        wanted = set(args.methods.split(","))
        cfgs = [c for c in cfgs if c.name in wanted]
    name = args.name or f"{datetime.date.today().isoformat()}-{args.model.stem}{'-smoke' if args.smoke else ''}"
    raw = args.out / f"{name}.jsonl"
    results = [json.loads(ln) for ln in raw.read_text().splitlines() if ln.strip()] if raw.exists() else []
    other_sets = {r.get("question_set", 1) for r in results if r["kind"] != "transcribe"} - {tasks.EVAL_QUESTION_SET}
    if other_sets and not args.no_questions:
        raise SystemExit(f"eval_quality.py: {raw} holds answers to question set {sorted(other_sets)}, this evaluation "
                         f"asks set {tasks.EVAL_QUESTION_SET}: choose another --name (or run --no-questions)")
    set_dir = args.set or (export.demo_dir().parent / "evalset")
    items = evalset.build(set_dir, durations_s=durations)
    items = [it for it in items if it["voice"] == "human" or int(it["id"].split("-")[1][:-1]) in durations]
    args.out.mkdir(parents=True, exist_ok=True)
    done = {(r["config"], r["keep"], r["item"], r["task"]) for r in results}
    work = args.out / "variants"
    work.mkdir(exist_ok=True)

    def sink(rec):
        results.append(rec)
        with open(raw, "a") as f:
            f.write(json.dumps(rec) + "\n")

    t0 = time.time()
    for cfg in tqdm(cfgs, desc="configurations", unit="cfg"):
        run_items(cfg, model_variant(args.model, cfg.variant, work), args.mmproj, items, done, sink,
                  args.max_tokens, args.ctx, not args.no_questions, args.lora, args.dry_multiplier)
    summary = summarise(results)
    title = f"{args.model.name} + {args.mmproj.name}: quality vs KV keep ratio"
    write_plot(summary, args.out / f"{name}.png", title)
    write_table(summary, per_item(results), args.out / f"{name}.md", f"# {title}\n\nCommand: `{' '.join(sys.argv)}`")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    (args.out / f"{name}.json").write_text(json.dumps({
        "machine": {"node": platform.node(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "commit": commit, "command": " ".join(sys.argv), "model": str(args.model), "mmproj": str(args.mmproj),
        "lora": None if args.lora is None else str(args.lora),
        "items": [{k: it[k] for k in ("id", "voice", "seconds")} for it in items],
        "configs": [dataclasses.asdict(c) for c in cfgs], "wall_s": round(time.time() - t0, 1),
        "summary": summary, "results": results}, indent=1))
    for r in summary:
        logger.info("%-16s keep %.1f  WER %s  human WER %s  WER vs full %s  accuracy %s  score %s", r["config"],
                    r["keep"], r["wer"], r["human_wer"], r["wer_vs_full"], r["accuracy"], r["score"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
