"""efficientdl: make deep networks small, fast and energy-efficient, and show with numbers why.

Subpackages follow the lecture "Efficient Methods and Hardware for Deep Learning":
``compress`` (algorithms for efficient inference), ``train`` (efficient training),
``hardware``, plus ``data``, ``models``, ``format``, ``nn``, ``kernels``, ``report``
and the ``cli``.
"""

__version__ = "0.1.0"

from . import compress, data, format, hardware, kernels, models, nn, report, train  # noqa: E402

__all__ = ["__version__", "compress", "data", "format", "hardware", "kernels", "models", "nn", "report", "train"]
