"""The machine a benchmark figure was measured on (see :mod:`efficientdl.core.machine`)."""

from efficientdl.core.machine import SIMD_FLAGS, cpu_info, cpu_name  # noqa: F401


def set_threads(threads: int) -> dict:
    """Give torch and numba ``threads`` threads each, print the CPU line every figure names, and
    return :func:`cpu_info`."""
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cores']} cores, SIMD: {' '.join(info['simd'])}; torch {torch.__version__}, "
          f"{threads} threads", flush=True)
    return info
