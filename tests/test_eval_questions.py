"""The evaluation's questions (audiokv_edge/demo_model/tasks.py evaluation_questions) and their grading: answers
that follow from the transcript, counts only of repeated words, as many "No." as "Yes.", each answer's position in
the passage; the partial score of a near miss; the rote baseline and the per-kind / per-position summary of
scripts/eval_quality.py, on synthetic results and on the committed step-3300 results; the evaluation set's build
(deterministic, question set recorded); the training generator unchanged."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from audiokv_edge.demo_model import evalset, tasks

REPO = Path(__file__).resolve().parents[1]
STEP3300 = REPO / "results" / "quality" / "2026-12-07-demo-step3300.json"

SENTENCES = ["The storage bucket has every backup.", "Patch the server before the backup runs.",
             "A quiet lake reflects mountains.", "The server restarts after midnight.",
             "Owls hunt silently through forests.", "Every backup of the storage bucket is encrypted."]
SPANS = [(0.0, 3.0), (3.5, 7.0), (7.4, 9.0), (9.5, 12.0), (12.3, 15.0), (15.4, 19.0)]
DISTRACTORS = ["Green parrots talk loudly at dawn.", "Kernels compile quickly on laptops."]


def _eval_quality():
    spec = importlib.util.spec_from_file_location("eval_quality", REPO / "scripts" / "eval_quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _asked(seed=1, sentences=SENTENCES, spans=SPANS):
    return tasks.evaluation_questions(sentences, spans, random.Random(seed), DISTRACTORS)


def test_answers_follow_from_the_transcript():
    qs = _asked()
    by_kind = {k: [q for q in qs if q["kind"] == k] for k in tasks.KINDS}
    assert [q["answer"] for q in by_kind["first"]] == [SENTENCES[0]]
    assert [q["answer"] for q in by_kind["last"]] == [SENTENCES[-1]]
    # "about": one per sentence holding a content word said once; the answer is that sentence, X said only there
    assert [q["sentences"] for q in by_kind["about"]] == [[1], [2], [3], [4], [5]]  # sentence 0's words all repeat
    for q in by_kind["about"]:
        word = q["question"].split('"')[1]
        assert tasks.count_word(SENTENCES, word) == 1 and word in q["answer"].lower()
        assert q["answer"] == SENTENCES[q["sentences"][0]]
    # counts: only words said 2+ times, the count as the answer, the sentences holding it as the span
    assert by_kind["count"]
    for q in by_kind["count"]:
        word = q["question"].split('"')[1]
        n = tasks.count_word(SENTENCES, word)
        assert n >= 2 and q["answer"] == str(n)
        assert q["sentences"] == [i for i, s in enumerate(SENTENCES) if word in s.lower().replace(".", "").split()]
    # yes/no: balanced; a "Yes." word is said once (its sentence is the position), a "No." word never
    yes = [q for q in by_kind["yesno"] if q["answer"] == "Yes."]
    no = [q for q in by_kind["yesno"] if q["answer"] == "No."]
    assert len(yes) == len(no) == 3 and len(qs) == len({q["question"] for q in qs})
    assert {q["position"] for q in yes} == set(tasks.POSITIONS)
    for q in yes:
        assert tasks.count_word(SENTENCES, q["question"].split('"')[1]) == 1
    for q in no:
        assert tasks.count_word(SENTENCES, q["question"].split('"')[1]) == 0
        assert q["sentences"] == [] and q["start_s"] is None and q["position"] is None


def test_positions_follow_the_passage():
    qs = _asked()
    about = [q for q in qs if q["kind"] == "about"]
    starts = [q["start_s"] for q in about]
    assert starts == sorted(starts) and all(q["start_s"] == SPANS[q["sentences"][0]][0] for q in about)
    rank = [tasks.POSITIONS.index(q["position"]) for q in about]
    assert rank == sorted(rank) and set(rank) == {0, 1, 2}
    first, last = qs[0], qs[1]
    assert (first["position"], first["start_s"], last["position"], last["end_s"]) == ("early", 0.0, "late", 19.0)
    assert [tasks.position_of(s, 19.0) for s in SPANS] == ["early", "early", "middle", "middle", "late", "late"]
    spread = [q for q in qs if q["kind"] == "count" and len({tasks.position_of(SPANS[i], 19.0)
                                                              for i in q["sentences"]}) > 1]
    assert spread and all(q["position"] == "spread" for q in spread)


def test_questions_are_deterministic_and_need_no_repeats_for_counts():
    assert _asked(3) == _asked(3) and _asked(3) != _asked(4)
    plain = ["Owls hunt silently.", "Lakes reflect mountains.", "Servers restart nightly."]
    qs = _asked(1, plain, SPANS[:3])
    assert not [q for q in qs if q["kind"] == "count"] and len([q for q in qs if q["kind"] == "about"]) == 3
    with pytest.raises(ValueError, match="one span per sentence"):
        tasks.evaluation_questions(plain, SPANS[:2], random.Random(0), DISTRACTORS)


def test_training_questions_unchanged():
    """What training draws (questions, sample_task) is the generator it was: same questions, same random draws."""
    s = ["The red fox runs over the red hill.", "A red hen sits quietly.",
         "Nothing else moves here, the hill is quiet.", "The fox sleeps."]
    rng = random.Random(3)
    assert tasks.questions(s, rng, ["Blue whales sing loudly.", "Green parrots talk."]) == [
        ("first", "Repeat the first sentence of the audio.", "The red fox runs over the red hill."),
        ("last", "Repeat the last sentence of the audio.", "The fox sleeps."),
        ("count", 'How many times is the word "moves" said?', "1"),
        ("yesno", 'Is the word "moves" said in the audio? Answer yes or no.', "Yes."),
        ("about", 'What is said about "sleeps"?', "The fox sleeps."),
        ("yesno", 'Is the word "sing" said in the audio? Answer yes or no.', "No.")]
    assert rng.random() == 0.13042279608514273


def test_near_miss_scores_partially():
    ref = "Sets up a named group, which is similar to aliases in email programs."
    near = "Sets up a new group, which is similar to an alias in mail programs."
    assert not tasks.answer_correct("about", near, ref)           # 4 errors in 13 words: WER 0.31 > 0.25
    assert tasks.answer_score("about", near, ref) == pytest.approx(1 - 4 / 13)
    assert tasks.answer_score("first", ref.upper(), ref) == 1.0 and tasks.answer_correct("first", ref.upper(), ref)
    run_on = " ".join(["so that's bad news"] * 10)
    assert tasks.answer_score("last", run_on, ref) == 0.0           # WER > 1 clipped
    assert tasks.answer_score("last", "", ref) == 0.0
    assert tasks.answer_score("count", "2 times", "2") == 1.0 and tasks.answer_score("count", "1", "2") == 0.0
    assert tasks.answer_score("yesno", "Yes.", "No.") == 0.0


def _result(config, keep, kind, answer, reference, position=None):
    return {"config": config, "keep": keep, "item": "awb-60s", "voice": "flite:awb", "task": f"{kind} {reference}",
            "kind": kind, "answer": answer, "reference": reference, "position": position, "question_set": 2,
            "correct": tasks.answer_correct(kind, answer, reference),
            "score": tasks.answer_score(kind, answer, reference), "kv_bytes_full": 100, "kv_bytes_kept": 40}


def test_summary_breaks_down_per_kind_and_position(tmp_path):
    eq = _eval_quality()
    s1, s2, s3 = SENTENCES[1], SENTENCES[3], SENTENCES[5]
    results = []
    for config, keep, late_answer in (("full", 1.0, s3), ("snapkv", 0.4, "Owls hunt silently through forests.")):
        results += [_result(config, keep, "about", s1, s1, "early"),
                    _result(config, keep, "about", s2.replace("midnight", "noon"), s2, "middle"),
                    _result(config, keep, "about", late_answer, s3, "late"),
                    _result(config, keep, "count", "1", "2", "spread"),
                    _result(config, keep, "yesno", "Yes.", "Yes.", "early"),
                    _result(config, keep, "yesno", "No." if config == "full" else "Yes.", "No.")]
    summary = {r["config"]: r for r in eq.summarise(results)}
    full, snap = summary["full"], summary["snapkv"]
    assert full["by_kind"]["yesno"] == {"questions": 2, "accuracy": 1.0, "score": 1.0, "rote_accuracy": 0.5}
    assert snap["by_kind"]["yesno"]["accuracy"] == 0.5 == snap["by_kind"]["yesno"]["rote_accuracy"]
    assert full["by_kind"]["count"]["rote_accuracy"] == 0.0 and "rote_accuracy" not in full["by_kind"]["about"]
    assert full["by_kind"]["about"]["accuracy"] == 1.0 and full["by_kind"]["about"]["score"] == pytest.approx(
        (1 + 4 / 5 + 1) / 3, abs=1e-4)                        # "midnight" -> "noon": 1 of 5 words, still correct
    assert full["by_position"]["late"] == {"questions": 1, "accuracy": 1.0, "score": 1.0}
    assert snap["by_position"]["late"]["score"] < 0.5 and snap["by_position"]["early"]["score"] == 1.0
    assert full["accuracy"] == round(5 / 6, 4) and snap["score"] < full["score"]
    assert set(full["by_position"]) == set(tasks.POSITIONS)    # "spread" and unplaced answers are left out
    eq.write_table(eq.summarise(results), [], tmp_path / "t.md", "# t")
    table = (tmp_path / "t.md").read_text()
    assert "| rote answer | - | - | 0.000 | 0.500 |" in table and "| snapkv | 0.4 | 1.000 / 1.000 (1) |" in table


def test_summary_of_committed_results_keeps_its_fields(tmp_path):
    """The step-3300 results (question set 1: no positions, no scores) still summarise to the stored figures."""
    eq = _eval_quality()
    stored = json.loads(STEP3300.read_text())
    summary = eq.summarise(stored["results"])
    old = {(r["config"], r["keep"]): r for r in stored["summary"]}
    assert set(old) == {(r["config"], r["keep"]) for r in summary}
    for r in summary:
        assert {k: r[k] for k in old[(r["config"], r["keep"])]} == old[(r["config"], r["keep"])]
        assert r["by_position"] == {}
    full = next(r for r in summary if r["config"] == "full")
    assert full["by_kind"]["count"]["rote_accuracy"] == 1.0 and full["by_kind"]["yesno"]["rote_accuracy"] == 0.5
    assert 0 < full["by_kind"]["about"]["score"] < 0.2 and full["by_kind"]["about"]["accuracy"] == 0
    eq.write_table(summary, eq.per_item(stored["results"]), tmp_path / "t.md", "# t")
    eq.write_plot(summary, tmp_path / "t.png", "t")
    assert "| full | 1.0 | 0.700 / 0.500 (2) |" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_resume_refuses_answers_to_another_question_set(tmp_path, capsys):
    eq = _eval_quality()
    old = {"config": "full", "keep": 1.0, "item": "awb-60s", "task": "Repeat the first sentence of the audio.",
           "kind": "first", "answer": "x", "reference": "y", "correct": False}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    argv = ["--model", str(tmp_path / "m.gguf"), "--mmproj", str(tmp_path / "p.gguf"), "--set", str(tmp_path / "set"),
            "--out", str(tmp_path), "--name", "old"]
    with pytest.raises(SystemExit, match=r"holds answers to question set \[1\].*asks set 2"):
        eq.main(argv)
    assert not (tmp_path / "set").exists()


def test_evalset_build_is_deterministic(tmp_path):
    sentences = [f"Sentence {n} names the server." for n in ("one", "two", "three", "four", "five")] + [
        f"Owls hunt at night near lake {n}." for n in range(15)]  # build draws 20 distractors
    a = evalset.build(tmp_path / "a", durations_s=(4,), voices=("rms",), sentences=sentences)
    b = evalset.build(tmp_path / "b", durations_s=(4,), voices=("rms",), sentences=sentences)
    strip = [{k: v for k, v in it.items() if k != "audio"} for it in a]
    assert strip == [{k: v for k, v in it.items() if k != "audio"} for it in b]
    passage = a[0]
    assert passage["question_set"] == tasks.EVAL_QUESTION_SET and passage["questions"]
    meta = json.loads((tmp_path / "a" / "rms-4s.json").read_text())
    assert len(meta["spans"]) == len(meta["sentences"]) and passage["questions"][1]["end_s"] == meta["spans"][-1][1]
    # a passage whose stored sentences lack their spans is made again, not asked about without positions
    (tmp_path / "a" / "rms-4s.json").write_text(json.dumps({"sentences": meta["sentences"]}))
    again = evalset.build(tmp_path / "a", durations_s=(4,), voices=("rms",), sentences=sentences)
    assert again == a and json.loads((tmp_path / "a" / "rms-4s.json").read_text()) == meta


def test_evalset_speaks_the_pinned_sentences(tmp_path, monkeypatch):
    """The shipped pin covers every reserved passage with held-out sentences only; a build speaks an item's pinned
    sentences in order (a passage stored from other sentences is made again) and asks about its pinned
    distractors; a malformed pin is refused by name."""
    from audiokv_edge.demo_model import corpus

    shipped = evalset.pinned_texts()
    assert set(shipped) == {f"{v}-{d}s" for v in evalset.EVAL_VOICES for d in (60, 120, 300)}
    assert all(corpus.split_of(s) == "heldout" for e in shipped.values() for s in e["sentences"] + e["distractors"])

    pin = {"items": {"rms-4s": {"sentences": ["Owls hunt at night.", "The server names the lake."],
                                "distractors": [f"Sentence {n} is not said." for n in range(20)]}}}
    (tmp_path / "pin.json").write_text(json.dumps(pin))
    monkeypatch.setattr(evalset, "PINNED_TEXT", tmp_path / "pin.json")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "rms-4s.flac").write_bytes(b"stale")
    (tmp_path / "set" / "rms-4s.json").write_text(json.dumps({"sentences": ["Another text."], "spans": [[0, 1]],
                                                               "seconds": 1.0}))
    items = evalset.build(tmp_path / "set", durations_s=(4,), voices=("rms",))
    meta = json.loads((tmp_path / "set" / "rms-4s.json").read_text())
    assert meta["sentences"] == pin["items"]["rms-4s"]["sentences"] and len(meta["spans"]) == 2
    assert items[0]["distractors"] == pin["items"]["rms-4s"]["distractors"]
    assert items[0]["transcript"] == "Owls hunt at night. The server names the lake."
    (tmp_path / "pin.json").write_text(json.dumps({"items": {"rms-4s": {"sentences": []}}}))
    with pytest.raises(ValueError, match="pin.json: not an evaluation text file"):
        evalset.build(tmp_path / "set", durations_s=(4,), voices=("rms",))
