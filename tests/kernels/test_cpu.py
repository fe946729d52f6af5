"""The CPU sparse codebook kernel against dense float64 matrix products."""

import numba
import numpy as np
import pytest

from efficientdl.kernels import cpu


def random_case(rows, cols, density, act_density, bits=4, n=None, seed=0):
    rng = np.random.default_rng(seed)
    k = (1 << bits) - 1
    codes = np.where(rng.random((rows, cols)) < density, rng.integers(1, k + 1, (rows, cols)), 0)
    codebook = np.concatenate([[0.0], rng.normal(size=k)]).astype(np.float32)
    shape = (cols,) if n is None else (cols, n)
    x = (rng.normal(size=shape) * (rng.random(shape) < act_density)).astype(np.float32)
    return codes, codebook, x


def dense_reference(codes, codebook, x):
    return codebook.astype(np.float64)[codes] @ x.astype(np.float64)


SHAPES = [(1, 1), (1, 7), (7, 1), (33, 17), (64, 300), (300, 100), (5, 1000)]


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("n", [None, 1, 3, 64])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
@pytest.mark.parametrize("layout", ["columns", "rows"])
def test_matches_dense_math(rows, cols, n, density, threads, layout, monkeypatch):
    monkeypatch.setattr(cpu, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    monkeypatch.setattr(cpu, "ROWS_ABOVE_DENSITY", 0.0)          # the row kernel for any nonzero input
    codes, codebook, x = random_case(rows, cols, density, 0.5, n=n, seed=rows * cols)
    m = cpu.pack(codes, codebook, partitions=3)
    twin = cpu.pack_rows(codes, codebook) if layout == "rows" else None
    y = cpu.matmul(m, x, twin=twin)
    assert y.shape == ((rows,) if n is None else (rows, n))
    np.testing.assert_allclose(y, dense_reference(codes, codebook, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("entry_bits", [8, 16, 32])
@pytest.mark.parametrize("partitions", [1, 2, 5])
def test_every_entry_width_and_partitioning(entry_bits, partitions):
    # 2% density in 500 rows: many gaps wider than a 4-bit delta, so fillers are needed at 8 bits
    codes, codebook, x = random_case(500, 80, 0.02, 1.0, seed=1)
    m = cpu.pack(codes, codebook, partitions=partitions, entry_bits=entry_bits)
    assert m.entry_bits == entry_bits and m.partitions == partitions
    if entry_bits == 8:
        assert m.fillers > 0
    np.testing.assert_array_equal(cpu.unpack(m), codes)
    np.testing.assert_allclose(cpu.matmul(m, x), dense_reference(codes, codebook, x), rtol=1e-5, atol=1e-5)


def test_entry_width_follows_the_cost_model():
    # cost = entries × (bytes per entry + visit_cost), visit_cost 1 by default; with 4-bit
    # codes an 8-bit entry keeps a 4-bit zero run, so a gap of 16 rows needs one filler
    codebook = np.concatenate([[0.0], np.ones(15)]).astype(np.float32)
    column = np.zeros((20, 1), np.int64)
    column[[0, 1, 18], 0] = 1                  # gaps 0, 0, 16: 4 entries at 8 bits, 3 at 16
    assert cpu.pack(column, codebook, partitions=1).entry_bits == 8                    # 4·2 = 8 < 3·3 = 9
    assert cpu.pack(column, codebook, partitions=1, visit_cost=3.0).entry_bits == 16   # 4·4 = 16 > 3·5 = 15
    far = np.zeros((100, 1), np.int64)
    far[[0, 99], 0] = 1                        # gap 98: 6 fillers, 8 entries at 8 bits: 8·2 = 16 > 2·3 = 6
    assert cpu.pack(far, codebook, partitions=1).entry_bits == 16


def test_hand_worked_layout():
    # column 0 holds rows 0 and 20 (gap 19 > 15 needs one filler at 4-bit deltas), column 1 row 3
    codes = np.zeros((21, 2), np.int64)
    codes[0, 0], codes[20, 0], codes[3, 1] = 2, 1, 3
    codebook = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    m = cpu.pack(codes, codebook, partitions=1, entry_bits=8, pad_to=1)
    assert m.code_bits == 2 and m.entry_bits == 8       # 6-bit deltas: a gap of 19 fits, no filler
    assert list(m.entries) == [(0 << 2) | 2, (19 << 2) | 1, (3 << 2) | 3]
    assert m.colptr.tolist() == [[0, 2, 3]]
    codebook16 = np.concatenate([codebook, np.ones(12, np.float32)])   # 4-bit codes → 4-bit deltas
    m = cpu.pack(codes, codebook16, partitions=1, entry_bits=8, pad_to=1)
    assert list(m.entries) == [(0 << 4) | 2, (15 << 4) | 0, (3 << 4) | 1, (3 << 4) | 3]
    y = cpu.matmul(m, np.array([2.0, -1.0], np.float32))
    expected = np.zeros(21)
    expected[0], expected[20], expected[3] = -4.0, 3.0, -0.25
    np.testing.assert_allclose(y, expected)


def test_runs_are_padded_to_four_entries_without_moving_a_weight():
    # the matrix of the hand-worked layout: column 0 holds rows 0 and 20 of 21, column 1 row 3
    codes = np.zeros((21, 2), np.int64)
    codes[0, 0], codes[20, 0], codes[3, 1] = 2, 1, 3
    codebook = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    m = cpu.pack(codes, codebook, partitions=1, entry_bits=8)
    # column 0: no row after 20, so its zero run of 19 gives two (0, 0) fillers (rows 1, 2)
    # and keeps 17; column 1: three fillers on the free rows 4, 5, 6 after its entry
    assert list(m.entries) == [(0 << 2) | 2, 0, 0, (17 << 2) | 1, (3 << 2) | 3, 0, 0, 0]
    assert m.colptr.tolist() == [[0, 4, 8]] and m.fillers == 5
    np.testing.assert_array_equal(cpu.unpack(m), codes)
    # a full column has no zero row to pad with: it keeps its 5 entries
    full = cpu.pack(np.ones((5, 1), np.int64), codebook, partitions=1)
    assert full.entries.size == 5 and full.fillers == 0
    # random matrices: every run with room is a multiple of four, and the product is unchanged
    codes, codebook, x = random_case(300, 120, 0.07, 0.6, seed=3)
    for bits in (8, 16, 32):
        m = cpu.pack(codes, codebook, partitions=3, entry_bits=bits)
        assert np.all(np.diff(m.colptr, axis=1) % 4 == 0)
        # runs on whole words are read a word at a time (8- and 16-bit entries)
        assert (m.words.size == m.entries.size // 4) == (bits < 32)
        np.testing.assert_array_equal(cpu.unpack(m), codes)
        np.testing.assert_allclose(cpu.matmul(m, x), dense_reference(codes, codebook, x), rtol=1e-5, atol=1e-5)
    assert cpu.pack(codes, codebook, partitions=3, pad_to=1).words.size == 0


def test_all_zero_input_and_float64():
    codes, codebook, x = random_case(50, 40, 0.3, 0.0)
    m = cpu.pack(codes, codebook)
    assert not cpu.matmul(m, x).any()
    codes, codebook, x = random_case(50, 40, 0.3, 0.7, n=4)
    y = cpu.matmul(m := cpu.pack(codes, codebook), x.astype(np.float64))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, dense_reference(codes, codebook, x), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("layout", ["columns", "rows"])
@pytest.mark.parametrize("n", [None, 5])
def test_float64_on_every_kernel(layout, n, monkeypatch):
    # rows of ~60 entries: the unrolled steps (4 and 8 entries) and their remainders all run
    monkeypatch.setattr(cpu, "ROWS_ABOVE_DENSITY", 0.0)
    codes, codebook, x = random_case(70, 203, 0.3, 0.8, n=n, seed=7)
    m = cpu.pack(codes, codebook, partitions=2)
    twin = cpu.pack_rows(codes, codebook) if layout == "rows" else None
    y = cpu.matmul(m, x.astype(np.float64), twin=twin)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, dense_reference(codes, codebook, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n", [None, 2])
@pytest.mark.parametrize("layout", ["columns", "rows"])
def test_out_argument_is_overwritten(n, layout):
    codes, codebook, x = random_case(20, 10, 0.5, 1.0, n=n)
    m = cpu.pack(codes, codebook)
    twin = cpu.pack_rows(codes, codebook) if layout == "rows" else None
    out = np.full((20,) if n is None else (20, n), 7.0, np.float32)
    assert cpu.matmul(m, x, out=out, twin=twin) is out
    np.testing.assert_allclose(out, dense_reference(codes, codebook, x), rtol=1e-5, atol=1e-5)


def test_fewer_threads_than_row_chunks(monkeypatch):
    # the row kernels split rows into ROW_CHUNKS chunks whatever the thread count
    monkeypatch.setattr(cpu, "SERIAL_WORK", 0)
    codes, codebook, x = random_case(101, 300, 0.1, 1.0, seed=5)
    m, twin = cpu.pack(codes, codebook), cpu.pack_rows(codes, codebook)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = cpu.matmul(m, x, twin=twin)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_allclose(y1, dense_reference(codes, codebook, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y1, cpu.matmul(m, x, twin=twin))


def test_memory_is_a_fraction_of_dense_at_eie_densities():
    codes, codebook, _ = random_case(1000, 1024, 0.1, 1.0)
    m = cpu.pack(codes, codebook, partitions=2)
    assert m.nbytes * 6 <= 4 * codes.size
    assert m.nbytes == m.entries.nbytes + m.colptr.nbytes + m.row_start.nbytes + m.codebook.nbytes


def test_bad_input_is_rejected():
    codes, codebook, x = random_case(6, 5, 0.5, 1.0)
    m = cpu.pack(codes, codebook)
    with pytest.raises(ValueError, match="shape"):
        cpu.matmul(m, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        cpu.matmul(m, np.ones(5, np.int32))
    with pytest.raises(ValueError, match="contiguous"):
        cpu.matmul(m, np.ones((2, 5), np.float32).T)
    with pytest.raises(ValueError, match="out must be"):
        cpu.matmul(m, np.ones(5, np.float32), out=np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="codebook\\[0\\]"):
        cpu.pack(codes, np.ones(16, np.float32))
    with pytest.raises(ValueError, match="codes must lie"):
        cpu.pack(codes + 20, codebook)
    with pytest.raises(ValueError, match="2-D"):
        cpu.pack(codes.ravel(), codebook)
    with pytest.raises(ValueError, match="entry_bits"):
        cpu.pack(codes, codebook, entry_bits=12)


def test_row_twin_is_the_transposed_layout():
    codes, codebook, x = random_case(40, 70, 0.2, 1.0)
    twin = cpu.pack_rows(codes, codebook, entry_bits=16, pad_to=1)
    assert twin.shape == (70, 40) and twin.partitions == 1
    np.testing.assert_array_equal(cpu.unpack(twin), codes.T)
    np.testing.assert_array_equal(np.diff(twin.colptr[0]), np.count_nonzero(codes, axis=1))
    padded = cpu.pack_rows(codes, codebook, entry_bits=16)
    np.testing.assert_array_equal(cpu.unpack(padded), codes.T)
    assert np.all(np.diff(padded.colptr[0]) % 4 == 0)
    with pytest.raises(ValueError, match="twin"):
        cpu.matmul(cpu.pack(codes, codebook), x, twin=cpu.pack(codes, codebook))


def test_lookup_twin_hand_worked():
    # W (2×3): row 0 holds codes 2 at column 0 and 1 at column 2; row 1 holds 3 at column 1
    codes = np.array([[2, 0, 1], [0, 3, 0]])
    codebook = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    twin = cpu.pack_rows(codes, codebook, lookup=True, pad_to=1)
    assert twin.absolute and twin.shape == (3, 2) and twin.code_bits == 2
    # entry = (column << code_bits) | code, which indexes codebook[code] · x[column] in the table
    assert list(twin.entries) == [(0 << 2) | 2, (2 << 2) | 1, (1 << 2) | 3]
    assert twin.colptr.tolist() == [[0, 2, 3]]
    np.testing.assert_array_equal(cpu.unpack(twin), codes.T)
    padded = cpu.pack_rows(codes, codebook, lookup=True)
    assert list(padded.entries) == [2, 9, 0, 0, 7, 0, 0, 0] and padded.colptr.tolist() == [[0, 4, 8]]
    x = np.array([2.0, -1.0, 4.0], np.float32)
    m = cpu.pack(codes, codebook)
    # (−2.0·2 + 1.5·4, 0.25·−1) = (2.0, −0.25), on the lookup kernel (all activations nonzero)
    np.testing.assert_allclose(cpu.matmul(m, x, twin=padded), [2.0, -0.25])
    np.testing.assert_allclose(cpu.matmul(m, np.stack([x, 2 * x], 1), twin=padded), [[2.0, 4.0], [-0.25, -0.5]])


@pytest.mark.parametrize("n", [None, 1, 5, 64])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lookup_twin_matches_dense_math(n, threads, dtype, monkeypatch):
    monkeypatch.setattr(cpu, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    for rows, cols, density in [(1, 1, 1.0), (37, 1000, 0.1), (300, 203, 0.3), (64, 64, 0.0)]:
        codes, codebook, x = random_case(rows, cols, density, 0.9, n=n, seed=rows + cols)
        m, twin = cpu.pack(codes, codebook), cpu.pack_rows(codes, codebook, lookup=True)
        assert twin.absolute and twin.words.size == 0
        np.testing.assert_array_equal(cpu.unpack(twin), codes.T)
        y = cpu.matmul(m, x.astype(dtype), twin=twin)
        tol = 1e-5 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(y, dense_reference(codes, codebook, x), rtol=tol, atol=tol)


def test_twin_format_follows_the_table_size():
    codebook = np.concatenate([[0.0], np.ones(15)]).astype(np.float32)
    rng = np.random.default_rng(0)
    sparse = lambda rows, cols: np.where(rng.random((rows, cols)) < 0.1, rng.integers(1, 16, (rows, cols)), 0)
    # 10% density: relative entries would be 16-bit, the same bytes as lookup entries
    assert cpu.pack_rows(sparse(50, 1200), codebook).absolute              # 1200 · 16 · 4 B = 75 KB table
    assert not cpu.pack_rows(sparse(50, 4096), codebook).absolute          # 256 KB: too big to stay near the core
    assert not cpu.pack_rows(sparse(50, 1200), codebook, entry_bits=16).absolute
    with pytest.raises(ValueError, match="lookup"):
        cpu.pack_rows(sparse(5, 5000), codebook, lookup=True)
    with pytest.raises(ValueError, match="lookup twin"):
        twin = cpu.pack_rows(sparse(5, 20), codebook, lookup=True)
        cpu.matmul(twin, np.ones(5, np.float32))


@pytest.mark.parametrize("rows,cols,block_columns", [(33, 17, 5), (64, 300, 64), (5, 1000, 512), (40, 1025, 512),
                                                     (7, 8, 100)])
@pytest.mark.parametrize("n", [2, 9, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_blocks_match_dense_math(rows, cols, block_columns, n, dtype):
    codes, codebook, x = random_case(rows, cols, 0.2, 0.6, n=n, seed=cols)
    blocks = cpu.pack_row_blocks(codes, codebook, block_columns)
    assert blocks.bounds.tolist() == list(range(0, cols, block_columns)) + [cols]
    assert sum(b.shape[0] for b in blocks.blocks) == cols          # every column in exactly one block
    y = cpu.matmul(cpu.pack(codes, codebook), x.astype(dtype), blocks=blocks)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, dense_reference(codes, codebook, x.astype(dtype)), rtol=1e-5, atol=1e-5)


def test_column_blocks_of_another_matrix_are_refused():
    codes, codebook, x = random_case(10, 20, 0.3, 1.0, n=3)
    with pytest.raises(ValueError, match="column-blocked twin of shape"):
        cpu.matmul(cpu.pack(codes, codebook), x, blocks=cpu.pack_row_blocks(codes[:, :10], codebook))
    with pytest.raises(ValueError, match="block_columns"):
        cpu.pack_row_blocks(codes, codebook, 0)
