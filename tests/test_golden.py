"""The committed golden plans (tests/data/golden_*.npz, written by scripts/make_golden.py) still hold.

They pin the reference's exact output; the C parity tests read the same files. A failure here means the
semantics changed: fix the code, or change docs/semantics.md deliberately and regenerate.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge import HeadProfile, KeepPlan, plan

DATA = Path(__file__).parent / "data"
FILES = sorted(DATA.glob("golden_*.npz"))


def golden_cases(path):
    with np.load(path) as z:
        data = {key: z[key] for key in z.files}
    cases = json.loads(str(data["cases"]))
    offsets = np.concatenate([[0], np.cumsum(data["counts"].reshape(len(cases), -1).sum(axis=1))])
    n_tokens = data["keys"].shape[2]
    for i, case in enumerate(cases):
        expected = KeepPlan.from_flat(data["counts"][i], data["indices"][offsets[i]:offsets[i + 1]], n_tokens)
        yield data, case, expected


def test_golden_files_exist():
    assert {p.stem for p in FILES} == {"golden_seed0", "golden_gqa3", "golden_ties"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_golden_plans(path):
    n = 0
    for data, case, expected in golden_cases(path):
        got = plan(case["method"], data["q_window"], data["keys"], case["keep"], HeadProfile(data["profile"]),
                   **case["params"])
        assert got == expected, case
        n += 1
    assert n == 54
