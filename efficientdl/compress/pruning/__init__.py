"""Pruning (Han et al., NIPS'15): masks as parametrizations, magnitude and threshold
criteria, iterative schedules with retraining, and per-layer sensitivity analysis."""

from .prune import (WeightMask, apply_mask, magnitude_mask, prune, prune_once, sensitivity,
                    sparsities_from_sensitivity, sparsity_schedule, std_mask, weight_mask)

__all__ = ["WeightMask", "apply_mask", "magnitude_mask", "prune", "prune_once", "sensitivity",
           "sparsities_from_sensitivity", "sparsity_schedule", "std_mask", "weight_mask"]
