"""A short run of the container fuzzer: every mutated or truncated file is refused with a
FormatError or decodes to exactly the original tensors, fast and within the memory bound."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fuzzer_finds_no_failure(tmp_path):
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz_container.py"), "--cases", "600",
                           "--seed", "7", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["failure_count"] == 0 and summary["cases"] == 600
    per = summary["per_mutation"]
    assert all(c["cases"] == 100 for c in per.values())
    assert per["truncate"]["refused"] == 100 and per["garbage body"]["refused"] == 100
    assert summary["max_decode_seconds"] < 1.0 and summary["worst_peak_over_bound"] <= 1.0
