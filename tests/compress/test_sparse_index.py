"""Tests of relative sparse indices with filler zeros (Deep Compression, Figure 2)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from efficientdl.compress.coding.sparse_index import relative_index_decode, relative_index_encode
from efficientdl.errors import FormatError


def reference_encode(positions, index_bits):
    """Entry-by-entry encoder written from the paper's rule, for comparison."""
    limit = 2**index_bits - 1
    deltas, fillers = [], []
    previous = -1
    for position in positions:
        while position - previous - 1 > limit:
            previous += limit + 1  # a filler zero at previous + 2**index_bits
            deltas.append(limit)
            fillers.append(True)
        deltas.append(position - previous - 1)
        fillers.append(False)
        previous = position
    return deltas, fillers


def test_hand_worked_three_bit_example():
    # Nonzeros at 1, 4, 15: skip 1 zero; skip 2; the 10-zero gap exceeds 7, so a
    # filler at 4 + 8 = 12 (z = 7) and then 15 (z = 2).
    deltas, is_filler = relative_index_encode(np.array([1, 4, 15]), 3)
    assert deltas.dtype == np.uint8
    assert deltas.tolist() == [1, 2, 7, 2]
    assert is_filler.tolist() == [False, False, True, False]
    assert relative_index_decode(deltas).tolist() == [1, 4, 12, 15]


def test_gap_of_exactly_the_span_from_the_start():
    # Position 8 from position -1 skips 8 zeros: a filler at -1 + 8 = 7, then z = 0.
    deltas, is_filler = relative_index_encode(np.array([0, 9]), 3)
    assert deltas.tolist() == [0, 7, 0]
    assert is_filler.tolist() == [False, True, False]
    deltas, is_filler = relative_index_encode(np.array([8]), 3)
    assert deltas.tolist() == [7, 0]
    assert relative_index_decode(deltas).tolist() == [7, 8]


def test_long_gap_needs_several_fillers():
    # 0 -> 40 skips 39 zeros: fillers at 8, 16, 24, 32, then 40 with z = 7.
    deltas, is_filler = relative_index_encode(np.array([0, 40]), 3)
    assert deltas.tolist() == [0, 7, 7, 7, 7, 7]
    assert is_filler.tolist() == [False, True, True, True, True, False]
    assert relative_index_decode(deltas).tolist() == [0, 8, 16, 24, 32, 40]


def test_one_bit_indices():
    # z may only be 0 or 1: every second position of a gap becomes a filler.
    deltas, is_filler = relative_index_encode(np.array([5]), 1)
    assert deltas.tolist() == [1, 1, 1]
    assert relative_index_decode(deltas).tolist() == [1, 3, 5]
    assert is_filler.tolist() == [True, True, False]


def test_empty_and_wide_indices():
    deltas, is_filler = relative_index_encode(np.zeros(0, dtype=np.int64), 5)
    assert deltas.size == 0 and is_filler.size == 0
    assert relative_index_decode(deltas, total_length=0).size == 0
    deltas, _ = relative_index_encode(np.array([70000]), 16)
    assert deltas.dtype == np.uint16
    assert deltas.tolist() == [65535, 70000 - 65536]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("index_bits", [2, 3, 5, 8])
def test_random_sparse_arrays_match_flatnonzero(seed, index_bits):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(37, 29)) * (rng.random((37, 29)) < rng.uniform(0.01, 0.5))
    positions = np.flatnonzero(dense)
    deltas, is_filler = relative_index_encode(positions, index_bits)
    assert deltas.max(initial=0) <= 2**index_bits - 1
    decoded = relative_index_decode(deltas, total_length=dense.size)
    np.testing.assert_array_equal(decoded[~is_filler], positions)
    assert np.all(dense.reshape(-1)[decoded[is_filler]] == 0)
    expected_deltas, expected_fillers = reference_encode(positions.tolist(), index_bits)
    assert deltas.tolist() == expected_deltas
    assert is_filler.tolist() == expected_fillers


@settings(max_examples=80, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=200), st.integers(1, 16))
def test_roundtrip_property(position_set, index_bits):
    positions = np.array(sorted(position_set), dtype=np.int64)
    deltas, is_filler = relative_index_encode(positions, index_bits)
    expected_deltas, expected_fillers = reference_encode(positions.tolist(), index_bits)
    assert deltas.tolist() == expected_deltas
    assert is_filler.tolist() == expected_fillers
    decoded = relative_index_decode(deltas, total_length=5001)
    assert decoded[~is_filler].tolist() == positions.tolist()


def test_decode_past_total_length_raises():
    with pytest.raises(FormatError):
        relative_index_decode(np.array([1, 2, 7, 2], dtype=np.uint8), total_length=15)
    assert relative_index_decode(np.array([1, 2, 7, 2], dtype=np.uint8), total_length=16)[-1] == 15


def test_decode_rejects_negative_or_huge_deltas():
    with pytest.raises(FormatError):
        relative_index_decode(np.array([3, -2, 4]))
    with pytest.raises(FormatError):
        relative_index_decode(np.array([2**63 - 1, 2**63 - 1], dtype=np.uint64))


@pytest.mark.parametrize("index_bits", [0, 17, -3, 2.5, True])
def test_index_bits_out_of_range(index_bits):
    with pytest.raises(ValueError):
        relative_index_encode(np.array([1, 2]), index_bits)


@pytest.mark.parametrize(
    "positions", [np.array([3, 3]), np.array([5, 2]), np.array([-1, 4]), np.array([0.0, 1.0]), np.ones((2, 2))]
)
def test_encode_rejects_bad_positions(positions):
    with pytest.raises(ValueError):
        relative_index_encode(positions, 4)
