"""Hardware for efficient inference: energy of arithmetic and memory, number formats.

``hardware`` never imports ``compress`` or a model class; it reads neutral
descriptions (numbers, shapes) so that it works on any layer list, the papers' included.
"""

from .energy import HOROWITZ_45NM, OPERATIONS, EnergyTable, HardwareError, load_table
from .formats import BF16, FP16, FP32, INT8, INT16, INT32, STANDARD_FORMATS, NumberFormat, fixed_point, get_format

__all__ = ["BF16", "FP16", "FP32", "HOROWITZ_45NM", "INT8", "INT16", "INT32", "OPERATIONS", "STANDARD_FORMATS",
           "EnergyTable", "HardwareError", "NumberFormat", "fixed_point", "get_format", "load_table"]
