"""scripts/bench_plan.py runs and writes its JSON result (tiny shape; the real timing is the script's job)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_plan_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench_plan.py"), "--n-layer", "2", "--n-head", "4",
                    "--n-head-kv", "2", "--head-dim", "8", "--n-tokens", "300", "--repeats", "1",
                    "--methods", "snapkv", "audiokv", "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"snapkv", "audiokv"}
    assert report["results"]["audiokv"]["kept_total"] == round(0.4 * 300) * 4
    assert report["shape"]["n_tokens"] == 300 and report["machine"]["cpu_count"] >= 1
    assert {"python", "numpy", "scipy"} <= set(report["versions"]) and "bench_plan.py" in report["command"]
