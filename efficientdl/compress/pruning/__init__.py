"""Pruning (Han et al., NIPS'15): masks as parametrizations, magnitude and threshold
criteria, iterative schedules with retraining, and per-layer sensitivity analysis."""

from .criteria import CRITERIA, SELECTIONS, PruningContext, global_mask, magnitude_scores, parse_pattern
from .criteria import obs_scores, select_per_row, wanda_scores
from .obs import obs_prune, obs_saliency
from .post_training import prune_post_training, reconstruction_error
from .prune import (TARGETS, WeightMask, apply_mask, check_targets, magnitude_mask, prune, prune_once,
                    pruning_targets, sensitivity, sparsities_from_sensitivity, sparsity_schedule, std_mask,
                    weight_mask)

__all__ = ["CRITERIA", "SELECTIONS", "TARGETS", "PruningContext", "WeightMask", "apply_mask", "check_targets",
           "global_mask", "magnitude_mask", "magnitude_scores", "parse_pattern", "prune", "prune_once",
           "pruning_targets", "sensitivity", "sparsities_from_sensitivity", "sparsity_schedule", "std_mask",
           "weight_mask", "obs_prune", "obs_saliency", "obs_scores", "prune_post_training", "reconstruction_error",
           "select_per_row", "wanda_scores"]
