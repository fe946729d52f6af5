"""Start-up time of the ``edl`` command: ``edl --help``, ``edl --version`` and ``edl info FILE``.

These three must not import torch (the target of issue 14 is ≤ 0.5 s median each).  The
benchmark first writes a small compressed file with the API (LeNet-300-100, pruned to 90%
and weight-shared at 5 bits, untrained), then runs each command ``--repeat`` times as a
fresh subprocess (after one untimed warm-up run) and reports the median, minimum and
maximum wall time, with the CPU model from ``/proc/cpuinfo``.

Usage::

    python benchmarks/startup.py --repeat 15 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402

try:
    import efficientdl  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def make_file(path: pathlib.Path) -> int:
    """Write a small compressed file with the API; returns its size in bytes."""
    import torch

    import efficientdl as edl

    torch.manual_seed(0)
    model = edl.models.create("lenet300")
    model, _ = edl.compress.prune(model, sparsity=0.9)
    model, _ = edl.compress.share(model, bits=5)
    edl.format.save(model, path)
    return path.stat().st_size


def edl_command() -> list[str]:
    """The installed ``edl`` console script beside this interpreter, else ``python -m efficientdl``."""
    script = pathlib.Path(sys.executable).parent / "edl"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("edl")
    return [found] if found else [sys.executable, "-m", "efficientdl"]


def time_command(argv: list[str], repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` runs of ``argv`` (one untimed warm-up first).

    Raises:
        RuntimeError: the command failed (its standard error quoted).
    """
    times = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
        if i:
            times.append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs of each command (default 15)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be ≥ 1")
    edl = edl_command()
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "lenet300.edlz"
        size = make_file(path)
        commands = {"edl --help": ["--help"], "edl --version": ["--version"], "edl info FILE": ["info", str(path)]}
        results = {}
        for label, extra in commands.items():
            times = time_command(edl + extra, args.repeat)
            results[label] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                              "runs": len(times)}
    cpu = cpu_name()
    print(f"CPU: {cpu} ({os.cpu_count()} logical cores); Python {platform.python_version()}; "
          f"command: {' '.join(edl)}; FILE: {size:,} bytes (LeNet-300-100, 90% pruned, 5-bit shared)")
    print("\n| command | median s | min s | max s | runs |\n|---|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['runs']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                                         "command": edl, "file_bytes": size, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
