"""Text documents as input (Session.answer_text / follow_up, the runner's --text), evicted by the same libaudiokv
callback as audio.

Layers: the document's reading, placement and blocks (runtime/text_document.py, no native code); the runner's usage
errors; a text-only Session on a tiny random model (no projector): statistics, blocks and streaming evictions, the
question before / after the document, follow-ups, method full token for token equal to llama-cpp-python's plain
greedy decoding of the same prompt, and SSS scope "audio" (no audio token: no smoothing, every eviction the NumPy plan
with an all-text mask); the runner end to end. The real SmolLM2-135M-Instruct (pass-key retrieval, full == plain
llama-cpp-python) is marked slow.

Each native probe runs in a subprocess so that a native abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.runtime.session import SessionConfig
from audiokv_edge.runtime.text_document import (
    DocumentError,
    DocumentPrompt,
    document_token_span,
    load_document,
    render_document_prompt,
    stream_boundaries,
)
from tests.test_run_cli import JFK, assert_one_line_error, run_cli
from tests.text_fixtures import FILLER, text_model  # noqa: F401 - text_model is a fixture

REPO = Path(__file__).resolve().parents[1]

# ---- the document: reading, placement, blocks ------------------------------------------------------------------

def test_load_document_text_and_files(tmp_path):
    assert load_document("  The notes.\n\n") == "The notes."
    f = tmp_path / "doc.txt"
    f.write_bytes("\ufeffcaf\u00e9 menu\n".encode("utf-8"))           # a BOM is not part of the text
    assert load_document(f) == "caf\u00e9 menu"
    assert load_document(str(f)) == str(f)                              # a str is the text itself, not a path


@pytest.mark.parametrize("make,needle", [
    (lambda p: None, "not found"),
    (lambda p: p.write_text(" \n\t\n"), "is empty"),
    (lambda p: p.write_bytes(b"caf\xe9 latin-1"), "not UTF-8"),
    (lambda p: p.write_bytes(b"\x00\x01binary"), "NUL"),
    (lambda p: p.mkdir(), "directory"),
])
def test_bad_documents_are_one_line_errors(tmp_path, make, needle):
    path = tmp_path / "doc.txt"
    make(path)
    with pytest.raises(DocumentError, match=needle) as info:
        load_document(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_text_and_wrong_types():
    with pytest.raises(DocumentError, match="empty"):
        load_document("   ")
    with pytest.raises(TypeError, match="str .* or a path"):
        load_document(b"bytes")


class _ChatML:
    """A stand-in for llama_cpp's Jinja2ChatFormatter: ChatML, optionally dropping the user's content."""

    def __init__(self, drop: bool = False) -> None:
        self.drop = drop

    def __call__(self, messages):
        text = "".join(f"<|im_start|>{m['role']}\n{'' if self.drop else m['content']}<|im_end|>\n" for m in messages)

        class Response:
            prompt = text + "<|im_start|>assistant\n"

        return Response()


@pytest.mark.parametrize("formatter", [_ChatML(), None], ids=["chatml", "no-template"])
def test_question_after_or_before_the_document(formatter):
    after = render_document_prompt(formatter, "DOC TEXT", "  What?  ")
    before = render_document_prompt(formatter, "DOC TEXT", "What?", question_first=True)
    for p in (after, before):
        assert p.text[p.doc_start:p.doc_stop] == "DOC TEXT"
    assert after.content == "DOC TEXT\n\nWhat?" and before.content == "What?\n\nDOC TEXT"
    assert after.text.index("What?") > after.doc_stop and before.text.index("What?") < before.doc_start
    if formatter is not None:
        assert after.text == "<|im_start|>user\nDOC TEXT\n\nWhat?<|im_end|>\n<|im_start|>assistant\n"
    else:
        assert after.text == "DOC TEXT\n\nWhat?\n"
    assert render_document_prompt(formatter, "DOC", "").content == "DOC"     # no question: the document alone


def test_a_template_that_drops_the_content_is_refused():
    with pytest.raises(DocumentError, match="exactly once"):
        render_document_prompt(_ChatML(drop=True), "DOC", "What?")


def test_document_token_span():
    def words(text: str) -> list[int]:           # a word-level toy tokenizer: 1 + the length of each word
        return [1 + len(w) for w in text.split(" ") if w]

    prompt = DocumentPrompt(text="aa b ccc dd e ffff", content="", doc_start=5, doc_stop=13)   # "ccc dd e"
    assert document_token_span(words, prompt, words(prompt.text)) == (2, 5)
    merged = DocumentPrompt(text="aa bccc dd e ffff", content="", doc_start=4, doc_stop=12)   # "ccc dd e"
    assert document_token_span(words, merged, words(merged.text)) == (1, 4)   # "bccc" counts before the document


@pytest.mark.parametrize("n_tokens,span,block,want", [
    (2000, (30, 1530), 512, [542, 1054]),
    (600, (30, 542), 512, []),                  # the document fits one block
    (600, (30, 543), 512, [542]),
    (100, (10, 90), 20, [30, 50, 70]),          # the question and the template tail go with the last block
    (100, (0, 0), 20, []),                      # no document token
])
def test_stream_boundaries(n_tokens, span, block, want):
    assert stream_boundaries(n_tokens, span, block) == want


def test_stream_boundaries_rejects_a_bad_block():
    with pytest.raises(ValueError, match="block"):
        stream_boundaries(100, (0, 50), 0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_config_text_block(bad):
    with pytest.raises(ValueError, match="text_block"):
        SessionConfig(text_block=bad)


# ---- the runner's usage errors (no native code) -----------------------------------------------------------------

@pytest.fixture
def doc(tmp_path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text(FILLER * 4)
    return path


@pytest.mark.parametrize("argv,needles", [
    (["m.gguf", str(JFK), "--text", "{doc}"], ["--text takes no audio file", "jfk.wav"]),
    (["m.gguf", "--audio", str(JFK), "--text", "{doc}"], ["--text and --audio"]),
    ([str(JFK), "--text", "{doc}"], ["--text takes no audio file"]),
    (["m.gguf", "--text", "{doc}", "--mmproj", "p.gguf"], ["--mmproj", "needs none"]),
    (["m.gguf", str(JFK), "--question-first"], ["--question-first", "--text"]),
    (["m.gguf", str(JFK), "--text-block", "64"], ["--text-block", "--text"]),
    (["m.gguf", "--text", "{doc}", "--text-block", "0"], ["--text-block", ">= 1"]),
    (["m.gguf", "--text", "{missing}"], ["text document not found", "missing.txt"]),
    (["m.gguf", "--text", "{empty}"], ["empty.txt", "is empty"]),
    (["m.gguf", "--text", "{latin1}"], ["latin1.txt", "not UTF-8"]),
])
def test_runner_text_usage_errors(tmp_path, doc, argv, needles):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    names = {"doc": doc, "missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt",
             "latin1": tmp_path / "latin1.txt"}
    proc = run_cli(*[a.format(**names) for a in argv])
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, *needles)


# ---- a text-only Session on a tiny model ------------------------------------------------------------------------

def _probe(code: str, *args: str, timeout: int = 600) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE_SESSION = r"""
import json, sys
from audiokv_edge.runtime.session import Session, SessionConfig, SessionError, ContextTooSmallError
model, filler = sys.argv[1:3]
doc = filler * 12
out = {}
with Session(model, config=SessionConfig(method="full", max_tokens=6, threads=2, ctx=1024)) as s:
    out["supports_audio"] = s.supports_audio
    out["mmproj"] = s.mmproj_path
    try:
        s.answer("x.wav")
    except SessionError as exc:
        out["audio_error"] = str(exc)
    a = s.answer_text(doc, "Who walks on the moon?")
    out["a"] = dict(a.to_dict(), tokens=list(a.tokens))
    out["span"] = s.last_document_span
    out["streamed"] = "".join(s.stream_text(doc, "Who walks on the moon?"))
    out["streamed_tokens"] = list(s.last_answer.tokens)
    q = s.answer_text(doc, "Who walks on the moon?", question_first=True)
    out["q"] = dict(q.to_dict(), tokens=list(q.tokens))
    out["q_span"] = s.last_document_span
    out["rendered_after"] = s.render_text_prompt(doc, "Who walks on the moon?")
    out["rendered_before"] = s.render_text_prompt(doc, "Who walks on the moon?", question_first=True)
    try:
        s.answer_text(filler * 200, "Who?")
    except ContextTooSmallError as exc:
        out["too_long"] = str(exc)
    try:
        s.answer_text("  \n ", "Who?")
    except ValueError as exc:
        out["empty"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def session_probe(text_model):
    return _probe(PROBE_SESSION, str(text_model), FILLER)


@pytest.mark.native
def test_a_text_model_alone_is_a_text_only_session(session_probe):
    assert session_probe["supports_audio"] is False and session_probe["mmproj"] is None
    assert "no audio projector" in session_probe["audio_error"] and "text only" in session_probe["audio_error"]


@pytest.mark.native
def test_text_answer_statistics(session_probe):
    a = session_probe["a"]
    start, stop = session_probe["span"]
    assert a["document_tokens"] == stop - start > 0 and a["audio_tokens"] == 0 and a["audio_seconds"] == 0
    assert a["prompt_tokens"] > a["document_tokens"] and a["kv_bytes_full"] == a["kv_bytes_kept"] > 0
    assert a["method"] == "full" and a["keep"] == 1.0 and a["prefill_tokens_per_s"] > 0
    assert len(a["tokens"]) == a["generated_tokens"] <= 6
    assert session_probe["streamed"] == a["text"] and session_probe["streamed_tokens"] == a["tokens"]  # greedy


@pytest.mark.native
def test_question_before_the_document(session_probe):
    after, before = session_probe["rendered_after"], session_probe["rendered_before"]
    question = "Who walks on the moon?"
    assert after.endswith(f"\n\n{question}<|im_end|>\n<|im_start|>assistant\n")
    assert after.index(question) > after.index(FILLER.strip()) and before.index(question) < before.index(
        FILLER.strip())
    assert session_probe["q"]["prompt_tokens"] == session_probe["a"]["prompt_tokens"]
    assert session_probe["q_span"][0] > session_probe["span"][0]            # the question comes first


@pytest.mark.native
def test_text_errors(session_probe):
    too_long = session_probe["too_long"]
    assert "but the context holds 1024" in too_long and "document of" in too_long and "--ctx" in too_long
    assert "is empty" in session_probe["empty"]


PROBE_STREAM = r"""
import json, sys
from audiokv_edge.runtime.session import Session, SessionConfig
model, filler, method, stream, block, question_first = sys.argv[1:7]
doc = filler * 12
cfg = SessionConfig(method=method, keep=0.4, stream=stream == "1", text_block=int(block), max_tokens=4, threads=2,
                    ctx=int(sys.argv[7]))
with Session(model, config=cfg) as s:
    a = s.answer_text(doc, "Who walks on the moon?", question_first=question_first == "1")
    g = s.geometry
    evictions = s.last_evictions
    f = s.follow_up("And what do they plant?")
    print(json.dumps({"answer": a.to_dict(), "evictions": evictions, "heads": g.n_layer * g.n_head_kv,
                      "span": s.last_document_span, "follow_up": f.to_dict(), "follow_up_evictions": s.last_evictions}))
"""


def _assert_one_eviction_per_block(out: dict, block: int) -> dict:
    """A --stream probe's evictions: one after every block of the document but the last and one after the prompt,
    each keeping 0.4 x the positions seen. Returns the answer's stats."""
    answer, evictions, heads = out["answer"], out["evictions"], out["heads"]
    want = stream_boundaries(answer["prompt_tokens"], tuple(out["span"]), block)
    assert len(want) >= 3
    assert [e["n_past"] for e in evictions] == [*want, answer["prompt_tokens"]]
    for e in evictions:
        assert abs(e["entries_after"] / (heads * e["n_past"]) - 0.4) <= 0.02, e
    return answer


@pytest.mark.native
@pytest.mark.parametrize("question_first", [False, True], ids=["question-after", "question-before"])
def test_stream_evicts_after_every_block(text_model, question_first):
    """--stream on a text document in blocks of 64 tokens: one eviction after every block but the last and one after
    the prompt, each keeping keep x the positions seen; the follow-up adds no eviction."""
    out = _probe(PROBE_STREAM, str(text_model), FILLER, "snapkv", "1", "64", str(int(question_first)), "1024")
    answer = _assert_one_eviction_per_block(out, 64)
    assert abs(answer["kv_bytes_kept"] / answer["kv_bytes_full"] - 0.4) <= 0.02
    assert out["follow_up_evictions"] == [] and out["follow_up"]["prompt_tokens"] > 0


@pytest.fixture(scope="module")
def one_kv_head_model(tmp_path_factory) -> Path:
    """A tiny random qwen2 text model with ONE KV head per layer (head size 32: q8_0 fits)."""
    from audiokv_edge.testing import tiny_models as tm

    path = tmp_path_factory.mktemp("one_kv_head") / "model.gguf"
    tm.write_text_model(path, tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=1, head_dim=32),
                        seed=5)
    return path


@pytest.mark.native
@pytest.mark.parametrize("method", ["pyramidkv", "snapkv"])
def test_stream_with_one_kv_head_per_layer(one_kv_head_model, method):
    """Regression (found by scripts/check_adapter_sanitized.sh's runner matrix): with one KV head per layer, a
    per-layer budget (pyramidkv) leaves the layers holding different counts while every layer's heads agree; the
    second eviction from the pools was still handed over as a "uniform" cache and the callback refused it (layer 1
    head 0 holds 91 entries, not 96). Every block's eviction must now run and keep keep x the positions seen."""
    out = _probe(PROBE_STREAM, str(one_kv_head_model), FILLER, method, "1", "64", "0", "1024")
    _assert_one_eviction_per_block(out, 64)


@pytest.mark.native
def test_stream_runs_a_document_longer_than_the_context(text_model):
    """A document of about 1,000 tokens in a 256-token context: refused without --stream (the message names both
    sizes), answered with it (blocks of 128)."""
    probe = PROBE_STREAM.replace("doc = filler * 12", "doc = filler * 40")
    proc = subprocess.run([sys.executable, "-c", probe, str(text_model), FILLER, "snapkv", "0", "128", "0", "256"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode != 0 and "ContextTooSmallError" in proc.stderr
    assert "but the context holds 256: use --stream or a larger --ctx" in proc.stderr
    out = _probe(probe, str(text_model), FILLER, "snapkv", "1", "128", "0", "256")
    assert out["answer"]["prompt_tokens"] > 900 and len(out["evictions"]) >= 7
    assert abs(out["answer"]["kv_bytes_kept"] / out["answer"]["kv_bytes_full"] - 0.4) <= 0.02


PROBE_PLAIN = r"""
import json, sys
from audiokv_edge.native.libs import load_llama_cpp
from audiokv_edge.runtime.session import Session, SessionConfig
model, doc, question, max_tokens, ctx, method = sys.argv[1:7]
max_tokens, ctx = int(max_tokens), int(ctx)
if doc.startswith("@"):
    doc = open(doc[1:]).read()
cfg = SessionConfig(method=method, keep=0.4, max_tokens=max_tokens, threads=2, ctx=ctx)
with Session(model, config=cfg) as s:
    a = s.answer_text(doc, question)
    rendered = s.render_text_prompt(doc, question)
    bos = s._llm.bos_text
    session_prompt = s._llm.tokenize(rendered, add_special=not (bos and rendered.startswith(bos)))
    formatter = s._formatter
    f = s.follow_up("Say it again.")
llama_cpp = load_llama_cpp()
llm = llama_cpp.Llama(model_path=model, n_ctx=ctx, n_batch=512, n_threads=2, flash_attn=False, verbose=False)
if method != "full":   # the same callback on a llama_cpp.Llama (runtime/llama_hook.py), evicted after the prompt
    import audiokv_edge
    audiokv_edge.enable(llm, method=method, keep=0.4)
prompt = llm.tokenize(rendered.encode(), add_bos=not (bos and rendered.startswith(bos)), special=True)
vocab = llama_cpp.llama_cpp.llama_model_get_vocab(llm.model)
plain, stop = [], False
for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
    if llama_cpp.llama_cpp.llama_vocab_is_eog(vocab, token):
        stop = True
        break
    plain.append(token)
    if len(plain) >= max_tokens:
        break
plain_follow_up = None
if method == "full":   # the follow-up: the Llama reuses its cache (prompt + answer) and decodes the rest at once
    from audiokv_edge.runtime.llama import render_follow_up
    turn = render_follow_up(formatter, [{"role": "user", "content": f"{doc.strip()}\n\n{question}"}], a.text,
                            "Say it again.")
    plain_follow_up = []
    for token in llm.generate(prompt + plain + llm.tokenize(turn.encode(), add_bos=False, special=True), temp=0.0,
                              top_k=1, repeat_penalty=1.0):
        if llama_cpp.llama_cpp.llama_vocab_is_eog(vocab, token) or len(plain_follow_up) >= max_tokens:
            break
        plain_follow_up.append(token)
print(json.dumps({"tokens": list(a.tokens), "finish": a.stats.finish_reason, "plain": plain, "plain_stop": stop,
                  "prompt_tokens": a.stats.prompt_tokens, "session_prompt": session_prompt, "plain_prompt": prompt,
                  "text": a.text, "kept": a.stats.kv_bytes_kept / a.stats.kv_bytes_full, "follow_up": f.text,
                  "follow_up_tokens": list(f.tokens), "plain_follow_up": plain_follow_up}))
"""


def _assert_same_as_llama(out: dict) -> None:
    assert out["session_prompt"] == out["plain_prompt"]                  # the same tokenization of the prompt
    assert out["prompt_tokens"] == len(out["plain_prompt"])
    assert out["tokens"] == out["plain"][:len(out["tokens"])] and out["tokens"]
    assert (out["finish"] == "stop") == out["plain_stop"]


@pytest.mark.native
def test_method_full_is_plain_greedy_decoding(text_model):
    """Method full through the text path generates exactly the tokens llama-cpp-python's plain greedy decoding of
    the same rendered prompt generates (no eviction machinery, its own tokenization), and so does the follow-up
    (the Llama continuing its cache with the next turn)."""
    out = _probe(PROBE_PLAIN, str(text_model), FILLER * 12, "Who walks on the moon?", "8", "1024", "full")
    _assert_same_as_llama(out)
    assert out["kept"] == 1.0
    assert out["follow_up_tokens"] and out["follow_up_tokens"] == out["plain_follow_up"]


@pytest.mark.native
@pytest.mark.parametrize("method", ["snapkv", "audiokv"])
def test_text_eviction_is_the_llama_hooks(text_model, method):
    """An evicting method through the text path generates exactly what a llama_cpp.Llama with
    audiokv_edge.enable() (the same libaudiokv callback after the prompt) generates from the same prompt."""
    out = _probe(PROBE_PLAIN, str(text_model), FILLER * 12, "Who walks on the moon?", "8", "1024", method)
    _assert_same_as_llama(out)
    assert abs(out["kept"] - 0.4) <= 0.02


PROBE_SSS = r"""
import json, sys
import numpy as np
from audiokv_edge.runtime.session import Session, SessionConfig
from tests.test_sss_audio_spans import record_evictions
model, filler, scope = sys.argv[1:4]
records = record_evictions()
cfg = SessionConfig(method="audiokv", keep=0.4, stream=True, text_block=96, max_tokens=2, threads=2, ctx=1024,
                    sss_scope=scope)
with Session(model, config=cfg) as s:
    s.answer_text(filler * 12, "Who walks on the moon?")
    spans = s.last_audio_spans
from tests.test_sss_audio_spans import _kept_equal, _reference
n_pos = [int(r["q_pos"][-1]) + 1 for r in records]
out = {"spans": spans, "n_evictions": len(records),
       "equal_text_mask": [_kept_equal(r, _reference(r, "audiokv", 0.4, np.zeros(n, bool)))
                           for r, n in zip(records, n_pos)],
       "equal_unmasked": [_kept_equal(r, _reference(r, "audiokv", 0.4, None)) for r in records]}
print(json.dumps(out))
"""


@pytest.mark.native
def test_sss_scope_audio_on_text_smooths_nothing(text_model):
    """A text document has no audio token: with sss_scope "audio" the session hands the evictor no span, and every
    streaming eviction plans exactly like the NumPy reference with an all-text mask (raw window scores, no SSS);
    scope "all" smooths every token as without a mask, and keeps other entries."""
    runs = {scope: _probe(PROBE_SSS, str(text_model), FILLER, scope) for scope in ("all", "audio")}
    audio, every = runs["audio"], runs["all"]
    assert audio["spans"] == [] and every["spans"] == []
    assert audio["n_evictions"] == every["n_evictions"] >= 3
    assert audio["equal_text_mask"] == [True] * audio["n_evictions"]
    assert every["equal_unmasked"] == [True] * every["n_evictions"]
    assert audio["equal_unmasked"] != [True] * audio["n_evictions"]


# ---- the runner end to end --------------------------------------------------------------------------------------

@pytest.mark.native
def test_runner_text_json_and_follow_up(text_model, doc):
    proc = run_cli(str(text_model), "--text", str(doc), "-p", "Who walks on the moon?", "--method", "snapkv",
                   "--keep", "0.4", "--max-tokens", "4", "--threads", "2", "--follow-up", "And then?", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["document"] == str(doc) and record["mmproj"] is None and record["question_first"] is False
    assert record["document_tokens"] > 0 and record["audio_tokens"] == 0 and "audio" not in record
    assert abs(record["kv_bytes_kept"] / record["kv_bytes_full"] - 0.4) <= 0.02 and record["evict_ms"] > 0
    (follow,) = record["follow_ups"]
    assert follow["prompt"] == "And then?" and follow["document_tokens"] == 0 and follow["prompt_tokens"] > 0
    text = run_cli(str(text_model), "--text", str(doc), "--method", "full", "--max-tokens", "4", "--threads", "2",
                   "--question-first")
    assert text.returncode == 0, text.stderr[-3000:]
    assert "text: " in text.stderr and "document tokens" in text.stderr and "kv cache (full" in text.stderr


@pytest.mark.native
def test_runner_text_longer_than_the_context(text_model, tmp_path):
    long_doc = tmp_path / "long.txt"
    long_doc.write_text(FILLER * 40)
    proc = run_cli(str(text_model), "--text", str(long_doc), "--method", "full", "--ctx", "256")
    assert_one_line_error(proc, "document of", "the context holds 256", "--ctx")
    proc = run_cli(str(text_model), "--text", str(long_doc), "--method", "snapkv", "--stream", "--text-block", "128",
                   "--ctx", "256", "--max-tokens", "3", "--threads", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["stream"] is True and record["text_block"] == 128 and record["prompt_tokens"] > 900


# ---- the pass-key script and the real SmolLM2-135M-Instruct ------------------------------------------------------

SCRIPT = REPO / "scripts" / "bench_passkey_text.py"


def _passkey():
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_passkey_text

    return bench_passkey_text


def test_passkey_document():
    pk = _passkey()
    doc = pk.passkey_document(10, 0.5, 12345)
    assert doc.count("12345") == 2 and doc.count(pk.FILLER.strip()) == 10
    assert doc.index("12345") > len(doc) // 3 and pk.passkey_document(10, 0.0, 1).startswith("The pass key is 1.")
    assert pk.pass_key(50, 0.5, 0) == pk.pass_key(50, 0.5, 0) != pk.pass_key(50, 0.1, 0)


@pytest.mark.native
def test_passkey_script_result(text_model, tmp_path):
    """scripts/bench_passkey_text.py on the tiny model: one row per method, document and placement, the found
    fractions, the machine and versions (the retrieval numbers themselves need a real model)."""
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(text_model), "--methods", "full,snapkv",
                           "--n-filler", "2", "--depths", "0.5", "--max-tokens", "3", "--ctx", "1024",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("machine", "versions", "command"):
        assert report[key]
    rows = report["rows"]
    assert [(r["method"], r["placement"]) for r in rows] == [(m, p) for m in ("full", "snapkv")
                                                             for p in ("after", "before", "follow-up")]
    assert all(r["document_tokens"] > 0 and r["kv_bytes_full"] > 0 for r in rows)
    assert set(report["found"]) == {"full", "snapkv"} and "first_answer" in rows[2]


@pytest.mark.native
@pytest.mark.slow
def test_smollm2_full_finds_the_pass_key_as_plain_decoding_does(tmp_path):
    """SmolLM2-135M-Instruct Q4_1 on a pass-key document of about 1,300 tokens (the key in the middle): with method
    full the greedy answer holds the key, and it is llama-cpp-python's plain greedy decoding token for token."""
    from audiokv_edge.testing.real_models import smollm2_q4_1_path

    pk = _passkey()
    key = pk.pass_key(50, 0.5, 0)
    doc = tmp_path / "passkey.txt"
    doc.write_text(pk.passkey_document(50, 0.5, key))
    out = _probe(PROBE_PLAIN, str(smollm2_q4_1_path()), f"@{doc}", pk.QUESTION, "16", "2048", "full", timeout=1800)
    _assert_same_as_llama(out)
    assert out["prompt_tokens"] > 1200 and str(key) in out["text"], out["text"]
