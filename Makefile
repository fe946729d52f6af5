# Quick start:  make demo   (install + compress LeNet-300-100 on Fashion-MNIST)
#               make test   (install + run the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install data demo test bench bench-peers bench-gpu clean

install: $(VENV)/.installed

# The venv sees the system's packages, so a torch the user already has is kept;
# without one, torch 2.13.0 is installed (the CPU build where one is provided).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test]"
	touch $@

data:
	@sh tools/install-data.sh

demo: install data
	$(VENV)/bin/edl demo

test: install data
	$(PY) -m pytest -q

bench: install data
	$(PY) benchmarks/huffman_bench.py --json runs/bench/huffman.json
	$(PY) benchmarks/kmeans_bench.py --json runs/bench/kmeans.json
	$(PY) benchmarks/deep_compression.py --out-dir runs/bench
	$(PY) benchmarks/eie_sim.py --json runs/bench/eie_sim.json
	$(PY) benchmarks/winograd_bench.py --json runs/bench/winograd.json
	$(PY) benchmarks/lowrank.py --checkpoint runs/bench/lenet300-dense.pt --json runs/bench/lowrank.json
	$(PY) benchmarks/lowrank_conv_tt.py --lenet5 runs/bench/lenet5-dense.pt \
		--lenet300 runs/bench/lenet300-dense.pt --json runs/bench/lowrank_conv_tt.json
	$(PY) benchmarks/fixed_point.py --checkpoint runs/bench/lenet5-dense.pt --json runs/bench/fixed_point.json
	$(PY) benchmarks/ternary.py --checkpoint runs/bench/lenet5-dense.pt --json runs/bench/ternary.json
	$(PY) benchmarks/squeezenet.py --checkpoint runs/bench/squeezenet-dense.pt --json runs/bench/squeezenet.json
	$(PY) benchmarks/lstm.py --checkpoint runs/bench/lstm-dense.pt --json runs/bench/lstm.json
	$(PY) benchmarks/mixed_precision.py --json runs/bench/mixed_precision.json
	$(PY) benchmarks/parameter_server.py --json runs/bench/parameter_server.json
	$(PY) benchmarks/data_parallel.py --json runs/bench/data_parallel.json
	$(PY) benchmarks/method_comparison.py --json runs/bench/method_comparison.json
	$(PY) tools/fuzz_container.py --json runs/bench/fuzz.json
	$(PY) benchmarks/training_hardware.py --json runs/bench/training_hardware.json
	$(PY) benchmarks/startup.py --json runs/bench/startup.json
	$(PY) benchmarks/post_training.py --json runs/bench/post_training.json
	$(PY) benchmarks/export_sizes.py --json runs/bench/export_sizes.json
	$(PY) benchmarks/eie_layers.py --json runs/bench/eie_layers.json \
		--models runs/bench/lenet300-s96-b3.edlz runs/bench/lenet5-s95-b5_4.edlz

# the compressed runtime end to end and on the EIE layers (fp32 and int8) against dense torch,
# ONNX Runtime and DeepSparse: the peers'
# pins (DeepSparse 1.8 needs onnx < 1.15) get an environment of their own
BENCH_VENV ?= .venv-bench
bench-peers: data
	$(PYTHON) -m venv --system-site-packages $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -c "import torch" 2>/dev/null || $(BENCH_VENV)/bin/pip install "torch==2.13.0"
	$(BENCH_VENV)/bin/pip install -e ".[bench]"
	NM_DISABLE_ANALYTICS=1 $(BENCH_VENV)/bin/python benchmarks/runtime_e2e.py --out runs/bench/runtime_e2e.json
	NM_DISABLE_ANALYTICS=1 $(BENCH_VENV)/bin/python benchmarks/eie_peers.py --json runs/bench/eie_peers.json

# on a CUDA machine: the EIE layers on the GPU kernel, and ResNet-18 mixed-precision training
bench-gpu: install data
	$(PY) benchmarks/eie_layers.py --device cuda --json runs/bench/eie_layers_cuda.json
	$(PY) benchmarks/resnet_mixed_precision.py --json runs/bench/resnet_mixed_precision.json

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs build *.egg-info
