"""Hardware for efficient training: a training-step model of GPUs, TPUs and CPUs.

* :mod:`.devices` — training devices (the lecture's Knights Landing, P100, V100, Cloud
  TPU; A100, H100, H200; this CPU), interconnects and cluster topologies, YAML loading;
* :mod:`.step` — one step on one device: per-layer forward / backward-data /
  backward-weight FLOPs and bytes under the roofline, the optimizer step, the memory
  footprint with and without activation checkpointing, the achieved-fraction factor;
* :mod:`.parallel` — data parallelism: ring / hierarchical all-reduce, parameter
  server, DDP-style bucketed overlap, scaling efficiency, crossover;
* :mod:`.cost` — time, device-hours and energy to train.

Like the rest of ``hardware/`` it reads a neutral
:class:`~efficientdl.hardware.workload.TrainingWorkload` and never imports torch.
"""

from .cost import TrainingCost, time_to_train
from .devices import (
                      TRAINING_DEVICES,
                      TRAINING_LINKS,
                      TRAINING_TOPOLOGIES,
                      Link,
                      Topology,
                      TrainingDevice,
                      get_link,
                      get_topology,
                      get_training_device,
                      load_hardware_file,
                      probe_cpu,
)
from .parallel import (
                      DataParallelStep,
                      allreduce_time_s,
                      crossover,
                      data_parallel_step,
                      parameter_server_time_s,
                      ring_allreduce_time_s,
                      scaling,
)
from .step import (
                      DEFAULT_ACHIEVED_FRACTION,
                      MEMORY_FORMATS,
                      TENSOR_CORE_RATIO,
                      MemoryFootprint,
                      StepBreakdown,
                      calibrate_fraction,
                      carry_fraction,
                      check_fits,
                      largest_batch,
                      memory_footprint,
                      training_step,
)

__all__ = ["DEFAULT_ACHIEVED_FRACTION", "MEMORY_FORMATS", "TENSOR_CORE_RATIO", "TRAINING_DEVICES", "TRAINING_LINKS",
           "TRAINING_TOPOLOGIES", "DataParallelStep", "Link", "MemoryFootprint", "StepBreakdown", "Topology",
           "TrainingCost", "TrainingDevice", "allreduce_time_s", "calibrate_fraction", "carry_fraction", "check_fits",
           "crossover", "data_parallel_step", "get_link", "get_topology", "get_training_device", "largest_batch",
           "load_hardware_file", "memory_footprint", "parameter_server_time_s", "probe_cpu", "ring_allreduce_time_s",
           "scaling", "time_to_train", "training_step"]
