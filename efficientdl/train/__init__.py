"""Training loop, evaluation, seeding and checkpoints."""

from efficientdl.train.trainer import (
    Trainer,
    distillation_loss,
    evaluate,
    load_checkpoint,
    plain_state_dict,
    save_checkpoint,
    set_seed,
)

__all__ = [
    "Trainer", "evaluate", "set_seed", "save_checkpoint", "load_checkpoint", "plain_state_dict", "distillation_loss",
]
