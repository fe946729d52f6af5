"""The machine a figure or a measured kernel choice belongs to: CPU model, its SIMD flags, core count."""

from __future__ import annotations

import os
import pathlib
import platform

#: the instruction-set flags that change our kernels' speed
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_info() -> dict:
    """``{"model", "flags", "simd", "cores"}`` from ``/proc/cpuinfo`` (Linux), else what
    :mod:`platform` knows; ``simd`` is the subset of :data:`SIMD_FLAGS` the CPU has."""
    info = {"model": platform.processor() or platform.machine(), "flags": [], "cores": os.cpu_count()}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["model"] = value.strip()
            elif key.strip() == "flags":
                info["flags"] = value.split()
                break
    except OSError:
        pass
    info["simd"] = [flag for flag in SIMD_FLAGS if flag in info["flags"]]
    return info


def cpu_name() -> str:
    """The CPU's model name."""
    return cpu_info()["model"]


def machine_key() -> str:
    """A short stable key for "this machine" as far as kernel speed goes: CPU model, SIMD
    flags, torch and numba versions and thread counts (a cached kernel choice is only
    valid where all of these match)."""
    import hashlib

    import numba
    import torch

    info = cpu_info()
    text = "|".join([info["model"], ",".join(info["simd"]), torch.__version__, numba.__version__,
                     str(torch.get_num_threads()), str(numba.get_num_threads())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
