"""A model file truncated or overwritten in place while a Session, the runner or the server uses it.

llama.cpp maps the GGUF by default; the weights are then read from the file's pages at every token, and a page past
the file's new end raises SIGBUS: the process dies with no message. A loaded model must not depend on its file
(the file being replaced by a download or a ``cp`` in place is an everyday event, and hours into a recording the
run must not die of it), so the Session reads the weights into memory (``SessionConfig.mmap`` False, the runner's
default; ``--mmap`` opts back in) and ``python -m audiokv_edge.serve`` starts llama-server with ``--load-mode none``.

Each case runs in a subprocess (a SIGBUS would end pytest): the answer after the file was cut is the answer before
it. With ``mmap=True`` the same steps die of SIGBUS, which shows that the cut really reaches the pages in use.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.evict_fixtures import child_env, run_python

pytestmark = pytest.mark.native

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"

#: Loads the model, answers, damages the file (argv[3]: "truncate" to a quarter, "overwrite" in place with other
#: bytes of the same size, as ``cp other.gguf model.gguf`` does), answers again; prints both answers as JSON.
SESSION_CHILD = """
import json, os, sys
from audiokv_edge.runtime.session import Session, SessionConfig
model, mmap, damage = sys.argv[1], sys.argv[2] == "mmap", sys.argv[3]
config = SessionConfig(method="audiokv", keep=0.4, max_tokens=8, ctx=512, threads=1, mmap=mmap)
document = "ask not what your country can do for you, ask what you can do for your country. " * 4
with Session(model, audio=False, config=config) as session:
    before = session.answer_text(document).text
    size = os.path.getsize(model)
    if damage == "truncate":
        os.truncate(model, size // 4)
    else:
        with open(model, "r+b") as f:
            f.truncate(0)
            f.write(os.urandom(size))
    print("damaged", flush=True)
    after = session.answer_text(document).text
print(json.dumps({"before": before, "after": after}))
"""


@pytest.fixture
def model(tmp_path):
    return write_tiny_pair(tmp_path, "qwen2-qwen2a")[0]


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_session_answers_from_memory_after_the_file_changed(model, damage):
    res = run_python("-c", SESSION_CHILD, str(model), "read", damage)
    assert res.returncode == 0, res.stderr[-3000:]
    answers = json.loads(res.stdout.splitlines()[-1])
    assert answers["before"] and answers["after"] == answers["before"]


def test_a_mapped_model_dies_of_sigbus_when_truncated(model):
    """The reason for the default: with the mapping (``mmap=True``, ``--mmap``) the same steps kill the process."""
    res = run_python("-c", SESSION_CHILD, str(model), "mmap", "truncate")
    assert "damaged" in res.stdout, res.stderr[-3000:]
    assert res.returncode == -signal.SIGBUS, (res.returncode, res.stderr[-3000:])


def test_runner_finishes_when_the_model_is_truncated_mid_run(tmp_path, model):
    """``python -m audiokv_edge.run`` streaming 35 s of speech (two 30 s chunks): the model file is cut to a quarter
    when the second prompt chunk starts; the run ends normally with its JSON record."""
    speech, rate = sf.read(DATA / "jfk.wav", dtype="float32")
    audio = tmp_path / "speech_35s.flac"
    sf.write(audio, np.tile(speech, 4)[: 35 * rate], rate)
    proc = subprocess.Popen([sys.executable, "-m", "audiokv_edge.run", str(model), str(audio), "--method", "audiokv",
                             "--keep", "0.4", "--stream", "--ctx", "2048", "-n", "8", "--threads", "1", "--json", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=child_env())
    log = []
    for line in proc.stderr:
        log.append(line)
        if re.search(r"runtime\.session: prompt chunk 2/", line):
            os.truncate(model, os.path.getsize(model) // 4)
            break
    else:
        pytest.fail("the run never reached its second prompt chunk:\n" + "".join(log[-30:]))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (proc.returncode, err[-3000:])
    assert os.path.getsize(model) < 300_000 and json.loads(out)["text"]
