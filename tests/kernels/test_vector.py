"""The SIMD vector intrinsics and the vector row kernel, against numpy and dense math."""

import numba
import numpy as np
import pytest
from numba.core.errors import TypingError

from efficientdl.kernels import cpu
from efficientdl.kernels.vector import (vector_add, vector_fma, vector_load, vector_load_flat, vector_scale,
                                        vector_store, vector_store_flat, vector_zeros)


@numba.njit
def _axpy_rows(a, w, x, i, j, out):
    # out[i, j:j+8] = out[i, j:j+8] + w · x[i, j:j+8] + 0, through every operation
    v = vector_fma(vector_load(out, i, j, 8), w, vector_load(x, i, j, 8))
    vector_store(out, i, j, vector_add(v, vector_zeros(a, 8)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_vector_operations_match_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, (3, 20)).astype(dtype)        # whole numbers: every sum exact, fused or not
    out = rng.integers(0, 100, (3, 20)).astype(dtype)
    expected = out.copy()
    w = dtype(3)
    expected[1, 5:13] = out[1, 5:13] + w * x[1, 5:13]
    _axpy_rows(x, w, x, 1, 5, out)
    np.testing.assert_array_equal(out, expected)


def test_integer_vectors_wrap_like_int32():
    x = np.full((1, 8), 2**30, np.int32)
    out = np.zeros((1, 8), np.int32)
    _axpy_rows(x, np.int32(4), x, 0, 0, out)               # 4 · 2^30 = 2^32 ≡ 0 (mod 2^32)
    np.testing.assert_array_equal(out, np.zeros((1, 8), np.int32))


def test_vector_width_must_be_a_literal():
    @numba.njit
    def load(x, lanes):
        return vector_load(x, 0, 0, lanes)

    with pytest.raises(TypingError, match="integer literal"):
        load(np.zeros((2, 16), np.float32), 8)


def test_vectors_need_a_two_dimensional_array():
    @numba.njit
    def load(x):
        return vector_load(x, 0, 0, 4)

    with pytest.raises(TypingError, match="2-D numeric arrays"):
        load(np.zeros(16, np.float32))


def _dense(codes, codebook, x):
    return codebook[codes].astype(np.float64) @ x.astype(np.float64)


# every tile of the row kernel: 64, 16, 8, 4 columns and the n mod 4 left over
@pytest.mark.parametrize("n", [2, 4, 5, 8, 12, 16, 23, 64, 67, 95, 130])
@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernel_tiles_match_dense_math(n, lookup, dtype):
    rng = np.random.default_rng(n)
    codes = (rng.random((37, 90)) < 0.15) * rng.integers(1, 16, (37, 90))
    codebook = np.r_[0.0, np.sort(rng.normal(0, 1, 15))].astype(np.float32)
    twin = cpu.pack_rows(codes, codebook, lookup=lookup)
    x = rng.standard_normal((90, n)).astype(dtype)
    y = cpu.matmul(cpu.pack(codes, codebook), x, twin=twin)
    np.testing.assert_allclose(y, _dense(codes, codebook, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lookup", [False, True])
def test_row_kernel_reads_rows_that_are_not_contiguous(lookup):
    # a view with a column stride: the kernel computes it element by element, not in vectors
    rng = np.random.default_rng(3)
    codes = (rng.random((20, 30)) < 0.3) * rng.integers(1, 16, (20, 30))
    codebook = np.r_[0.0, np.sort(rng.normal(0, 1, 15))].astype(np.float32)
    twin = cpu.pack_rows(codes, codebook, lookup=lookup)
    wide = rng.standard_normal((30, 40)).astype(np.float32)
    x = wide[:, ::2]                                       # 20 columns, stride 2 elements
    y = np.zeros((20, 20), np.float32)
    kernel = cpu._rows_absolute_mm_serial if twin.absolute else cpu._rows_mm_serial
    kernel(twin.colptr[0], twin.entries, twin.code_bits, twin.codebook.astype(np.float32), x, y, 1)
    np.testing.assert_allclose(y, _dense(codes, codebook, x), rtol=1e-5, atol=1e-5)


def test_int8_product_with_many_columns_is_exact_integer_math():
    rng = np.random.default_rng(4)
    codes = (rng.random((50, 70)) < 0.2) * rng.integers(1, 16, (50, 70))
    codebook = np.r_[0.0, np.sort(rng.normal(0, 1, 15))].astype(np.float32)
    q, scale_w = cpu.quantize_codebook(codebook)
    x = np.abs(rng.standard_normal((70, 67))).astype(np.float32)
    y = cpu.matmul_int8(cpu.pack(codes, codebook), x, twin=cpu.pack_rows(codes, codebook))
    scale_x = np.abs(x).max(axis=0) / 127                  # per column (one sample each)
    xq = np.clip(np.rint(x / scale_x), -127, 127).astype(np.int64)
    expected = (q[codes].astype(np.int64) @ xq) * scale_w * scale_x
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("density,width", [(1.0, 128), (0.25, 128), (0.23, 256), (0.10, 512), (0.04, 1024),
                                           (0.001, 1024)])
def test_block_width_follows_the_density(density, width):
    # the power of two nearest above 32 / density, within 128 … 1024 (worked by hand)
    assert cpu.block_columns_for(density) == width


def test_blocks_default_to_the_density_rule():
    codes = np.zeros((4, 2000), np.int64)
    codes[:, ::10] = 1                                     # density 0.1 → blocks of 512
    blocks = cpu.pack_row_blocks(codes, np.array([0.0, 1.0], np.float32))
    assert blocks.bounds.tolist() == [0, 512, 1024, 1536, 2000]


@numba.njit
def _scaled_rows(codebook, x, table):
    for c in range(x.size):
        vector_store_flat(table, 8 * c, vector_scale(x[c], vector_load_flat(codebook, 0, 8)))


def test_flat_vectors_scale_a_codebook_per_column():
    codebook = np.arange(8, dtype=np.float32) - 3
    x = np.array([2.0, -1.0, 0.5], np.float32)
    table = np.zeros(24, np.float32)
    _scaled_rows(codebook, x, table)
    np.testing.assert_array_equal(table, np.outer(x, codebook).reshape(-1))


@pytest.mark.parametrize("bits,used", [(3, 8), (4, 16), (5, 32), (4, 11)])
def test_lookup_table_holds_every_product(bits, used):
    # the vector form (a full codebook of 8 or 16k values) and the scalar one (a partial codebook)
    rng = np.random.default_rng(bits)
    codebook = rng.standard_normal(used).astype(np.float32)
    x = rng.standard_normal(13).astype(np.float32)
    table = np.full(13 << bits, np.nan, np.float32)

    @numba.njit
    def build(codebook, x, table):
        cpu._lookup_table(0, x.size, bits, codebook, x, table)

    build(codebook, x, table)
    expected = np.full((13, 1 << bits), np.nan, np.float32)
    expected[:, :used] = np.outer(x, codebook)
    np.testing.assert_array_equal(table.reshape(13, 1 << bits), expected)


@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float32), ((7,), np.float64), ((0, 4), np.float32)])
def test_arrays_on_cache_lines(shape, dtype):
    a = cpu.empty_on_cache_lines(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
    assert a.size == 0 or a.ctypes.data % 64 == 0
