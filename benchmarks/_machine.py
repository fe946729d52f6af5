"""The machine a benchmark figure was measured on (see :mod:`efficientdl.core.machine`)."""

from efficientdl.core.machine import SIMD_FLAGS, cpu_info, cpu_name  # noqa: F401
