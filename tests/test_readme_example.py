"""The README's Python API example, taken from README.md as it stands, runs unchanged on a tiny model pair.

The code is run in a child process whose working directory holds exactly the files it names (model.gguf,
mmproj.gguf: the tiny qwen2 + qwen2a pair; talk.wav: the shipped jfk.wav), so the README cannot rot.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.evict_fixtures import child_env, run_python

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Python API"


def readme_blocks() -> list[str]:
    """The ```python blocks of the README's Python API section."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python block in the README's {SECTION!r} section"
    return blocks


def readme_example() -> str:
    """The first ```python block of the README's Python API section (the Session)."""
    return readme_blocks()[0]


def readme_enable_example() -> str:
    """The block of the README's Python API section that calls ``audiokv_edge.enable``."""
    found = [b for b in readme_blocks() if "audiokv_edge.enable(" in b]
    assert len(found) == 1, "the README's Python API section needs one example of audiokv_edge.enable()"
    return found[0]


def test_example_names_the_files_the_test_provides():
    code = readme_example()
    for name in ("model.gguf", "mmproj.gguf", "talk.wav"):
        assert f'"{name}"' in code
    assert "with Session(" in code and ".stream(" in code and ".answer(" in code and "on_token" in code


@pytest.mark.native
def test_readme_example_runs(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path / "pairs", "qwen2-qwen2a")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(model, work / "model.gguf")
    shutil.copy(mmproj, work / "mmproj.gguf")
    shutil.copy(REPO / "audiokv_edge" / "data" / "jfk.wav", work / "talk.wav")
    proc = run_python("-c", readme_example(), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 3, proc.stdout
    assert re.fullmatch(r"750 audio tokens, KV cache kept 40%", lines[-2]), lines[-2]  # qwen2a: 750 per 30 s chunk
    assert re.fullmatch(r"(stop|length|context) True", lines[-1]), lines[-1]
    assert "".join(lines[:-2]).strip(), "the streamed answer is empty"


def readme_text_example() -> str:
    """The block of the README's Python API section that answers a text document (``answer_text``)."""
    found = [b for b in readme_blocks() if ".answer_text(" in b]
    assert len(found) == 1, "the README's Python API section needs one example of Session.answer_text()"
    return found[0]


@pytest.mark.native
def test_readme_text_example_runs(tmp_path):
    """The text example on a tiny random text model under the README's file name, alone in its folder (a text-only
    session), with a notes file."""
    from audiokv_edge.testing import tiny_models as tm

    code = readme_text_example()
    name = re.search(r'Session\("([^"]+\.gguf)"', code).group(1)
    tm.write_text_model(tmp_path / name, tm.TextModelSpec("qwen2", tm.CHATML), seed=2)
    (tmp_path / "notes.txt").write_text("The weekly meeting moves from Monday to Friday at ten. " * 20)
    proc = run_python("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.search(r"\(\d+ document tokens\)\n", proc.stdout), proc.stdout
    assert abs(float(lines[-1]) - 0.4) < 0.02, lines[-1]


def test_enable_example_is_a_plain_llama_cpp_app():
    code = readme_enable_example()
    assert '"model.gguf"' in code and "import llama_cpp\n" in code and "llama_cpp.Llama(" in code
    assert "load_llama_cpp" not in code  # set-up makes a plain import load the patched build


@pytest.mark.native
def test_readme_enable_example_runs(tmp_path):
    """The enable() example as an app runs it: a plain ``import llama_cpp`` with no library variable set (set-up
    links the patched libraries into the llama_cpp package, tests/test_llama_cpp_links.py)."""
    from audiokv_edge.testing import tiny_models as tm

    tm.write_text_model(tmp_path / "model.gguf", tm.TextModelSpec("qwen2", tm.CHATML), seed=2)
    proc = run_python("-c", readme_enable_example(), cwd=tmp_path,
                      env=child_env(drop=("LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"KV cache kept 4[01]% of \d+ prompt tokens", lines[-1]), lines[-1]
