"""The Triton kernel against dense math: on a CUDA GPU when there is one, otherwise in
Triton's interpreter on the CPU (a subprocess, since the interpreter is chosen at import);
skipped where Triton is not installed."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = HAS_TRITON and torch.cuda.is_available()

CHECK = textwrap.dedent("""
    import numpy as np, torch
    from efficientdl.kernels import gpu
    device = "{device}"
    rng = np.random.default_rng(0)
    cases = [(1, 1, 1.0, None), (7, 5, 0.0, 3), (33, 17, 0.3, None), (40, 70, 0.1, 2), (16, 9, 1.0, 64),
             (300, 100, 0.05, 5), (12, 30, 0.5, 130)]
    for rows, cols, density, n in cases:
        codes = np.where(rng.random((rows, cols)) < density, rng.integers(1, 16, (rows, cols)), 0)
        codebook = np.concatenate([[0.0], rng.normal(size=15)]).astype(np.float32)
        shape = (cols,) if n is None else (cols, n)
        x = rng.normal(size=shape) * (rng.random(shape) < 0.5)
        x[0] = 0                                   # an all-zero input row is skipped
        expected = codebook.astype(np.float64)[codes] @ x
        m = gpu.GpuPackedMatrix.from_codes(codes, codebook, device)
        for dtype, tol in [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]:
            xt = torch.tensor(x, dtype=dtype, device=device)
            y = gpu.matmul(m, xt, cols_per_program=3)
            assert y.dtype == dtype and tuple(y.shape) == expected.shape, (y.shape, expected.shape)
            scale = max(1.0, float(np.abs(expected).max()))
            err = float(np.abs(y.double().cpu().numpy() - expected).max()) / scale
            assert err < tol, (rows, cols, n, dtype, err)
    m = gpu.GpuPackedMatrix.from_codes(np.ones((3, 4), np.int64), np.array([0, 1], np.float32), device)
    for bad, message in [(torch.ones(5, device=device), "shape"),
                         (torch.ones(4, dtype=torch.int32, device=device), "float16"),
                         (torch.ones(2, 4, device=device).t(), "contiguous")]:
        try:
            gpu.matmul(m, bad)
        except ValueError as e:
            assert message in str(e), e
        else:
            raise AssertionError("accepted " + message)
    print("ok")
""")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_triton_kernel_matches_dense_math():
    env = dict(os.environ)
    if not ON_GPU:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHECK.format(device="cuda" if ON_GPU else "cpu")],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU and Triton")
def test_compressed_linear_runs_on_cuda():
    from efficientdl.nn import CompressedLinear

    rng = np.random.default_rng(1)
    codes = np.where(rng.random((64, 96)) < 0.2, rng.integers(1, 16, (64, 96)), 0)
    codebook = np.concatenate([[0.0], rng.normal(size=15)]).astype(np.float32)
    bias = torch.randn(64)
    layer = CompressedLinear(codes, codebook, bias)
    x = torch.relu(torch.randn(5, 96))
    expected = layer(x)
    got = layer.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_gpu_pack_rejects_bad_codebooks():
    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    from efficientdl.kernels import gpu

    with pytest.raises(ValueError, match="codebook"):
        gpu.GpuPackedMatrix.from_codes(np.zeros((2, 2), np.int64), np.ones(3, np.float32), "cpu")
    with pytest.raises(ValueError, match="2-D"):
        gpu.GpuPackedMatrix.from_codes(np.zeros(4, np.int64), np.zeros(3, np.float32), "cpu")
