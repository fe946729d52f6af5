"""Tests of the canonical Huffman coder against hand-worked codes and textbook Huffman."""

import heapq
import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from efficientdl.compress.coding.huffman import (
    canonical_codes,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
    huffman_size_bits,
)
from efficientdl.errors import FormatError


def textbook_huffman_cost(counts):
    """Total bits of an unconstrained Huffman code: the sum of all merged weights."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]  # one symbol still costs one bit per occurrence
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def kraft_sum(lengths):
    from fractions import Fraction

    return sum(Fraction(1, 2 ** int(x)) for x in lengths if x > 0)


def fibonacci(n):
    out = [1, 1]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return np.array(out[:n], dtype=np.int64)


# --- code lengths -------------------------------------------------------------


def test_lengths_and_codes_of_textbook_example():
    # CLRS 16.3: a:45 b:13 c:12 d:16 e:9 f:5 gives f,e -> 4 bits; c,b,d -> 3 bits; a -> 1 bit.
    counts = np.array([5, 9, 12, 13, 16, 45])
    lengths = huffman_code_lengths(counts)
    assert lengths.dtype == np.uint8
    assert lengths.tolist() == [4, 4, 3, 3, 3, 1]
    # Canonical by (length, symbol): 5 -> 0; 2,3,4 -> 100,101,110; 0,1 -> 1110,1111.
    assert canonical_codes(lengths).tolist() == [0b1110, 0b1111, 0b100, 0b101, 0b110, 0b0]
    assert huffman_size_bits(counts, lengths) == 224


def test_zero_counts_get_no_code_and_single_symbol_gets_one_bit():
    assert huffman_code_lengths(np.array([0, 0, 0])).tolist() == [0, 0, 0]
    assert huffman_code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert huffman_code_lengths(np.array([3, 0, 1])).tolist() == [1, 0, 1]
    assert huffman_code_lengths(np.zeros(0, dtype=np.int64)).tolist() == []


@pytest.mark.parametrize("seed", range(8))
def test_lengths_match_textbook_huffman_cost(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 300))
    counts = rng.geometric(0.05, size) * (rng.random(size) < 0.7)
    counts[:2] = [1, 2]  # at least two used symbols
    lengths = huffman_code_lengths(counts)
    assert huffman_size_bits(counts, lengths) == textbook_huffman_cost(counts)
    assert kraft_sum(lengths) <= 1
    assert np.all((lengths == 0) == (counts == 0))


def test_length_limit_is_optimal_by_brute_force():
    counts = fibonacci(8)  # unconstrained Huffman is a chain of depth 7
    best = min(
        sum(c * x for c, x in zip(counts, combo))
        for combo in itertools.product(range(1, 5), repeat=8)
        if sum(2.0 ** -x for x in combo) <= 1
    )
    lengths = huffman_code_lengths(counts, max_length=4)
    assert lengths.max() <= 4
    assert kraft_sum(lengths) <= 1
    assert huffman_size_bits(counts, lengths) == best


@pytest.mark.parametrize("limit", [5, 12, 24])
def test_length_limit_on_fibonacci_counts(limit):
    counts = fibonacci(30)
    unlimited = huffman_code_lengths(counts, max_length=32)
    assert huffman_size_bits(counts, unlimited) == textbook_huffman_cost(counts)
    assert unlimited.max() > 24  # every limit below is binding
    lengths = huffman_code_lengths(counts, max_length=limit)
    assert lengths.max() <= limit
    assert kraft_sum(lengths) <= 1
    assert np.all(lengths > 0)


def test_length_limit_too_short_raises():
    with pytest.raises(ValueError):
        huffman_code_lengths(np.ones(5, dtype=np.int64), max_length=2)
    with pytest.raises(ValueError):
        huffman_code_lengths(np.array([1, -1]))


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = np.array([3, 0, 2, 4, 4, 3, 2, 3])  # Kraft: 3/8 + 2/4 + 2/16 = 1
    codes = canonical_codes(lengths)
    words = {s: format(int(codes[s]), f"0{lengths[s]}b") for s in range(8) if lengths[s]}
    assert words == {2: "00", 6: "01", 0: "100", 5: "101", 7: "110", 3: "1110", 4: "1111"}
    for a, b in itertools.permutations(words.values(), 2):
        assert not b.startswith(a)


# --- encoding and round trips -------------------------------------------------


def test_encode_hand_worked_bits():
    # counts [3,1,1] -> lengths [1,2,2] -> codes 0:'0', 1:'10', 2:'11'.
    lengths, payload, bit_length = huffman_encode(np.array([0, 0, 0, 1, 2]), 3)
    assert lengths.tolist() == [1, 2, 2]
    assert bit_length == 7
    assert payload == bytes([0b00010110])  # '0001011' then one padding zero
    assert huffman_decode(lengths, payload, 5).tolist() == [0, 0, 0, 1, 2]


def roundtrip(symbols, num_symbols):
    lengths, payload, bit_length = huffman_encode(symbols, num_symbols)
    assert lengths.shape == (num_symbols,)
    assert len(payload) == (bit_length + 7) // 8
    decoded = huffman_decode(lengths, payload, symbols.size)
    np.testing.assert_array_equal(decoded, symbols)
    return lengths, payload, bit_length


def test_roundtrip_uniform():
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 256, 5000)
    lengths, _, bit_length = roundtrip(symbols, 256)
    assert bit_length == textbook_huffman_cost(np.bincount(symbols, minlength=256))


def test_roundtrip_geometric_with_long_codes():
    rng = np.random.default_rng(2)
    counts = fibonacci(22)  # codes up to 21 bits: exercises the slow path beyond the table
    symbols = rng.permutation(np.repeat(np.arange(22), counts))
    lengths, _, _ = roundtrip(symbols, 22)
    assert lengths.max() > 11
    skewed = np.minimum(rng.geometric(0.4, 20000) - 1, 31)
    roundtrip(skewed, 32)


def test_roundtrip_one_symbol_stream():
    symbols = np.full(100, 7)
    lengths, payload, bit_length = roundtrip(symbols, 32)
    assert lengths[7] == 1 and lengths.sum() == 1
    assert bit_length == 100
    assert payload == bytes(13)


def test_roundtrip_two_symbols_and_wide_alphabet():
    symbols = np.array([3, 9, 9, 3, 9])
    lengths, payload, bit_length = roundtrip(symbols, 10)
    assert bit_length == 5
    # symbol 3 -> '0', symbol 9 -> '1'
    assert payload == bytes([0b01101000])
    wide = np.array([0, 300, 65535, 300])
    decoded = huffman_decode(*huffman_encode(wide, 65536)[:2], 4)
    assert decoded.dtype == np.uint16 and decoded.tolist() == [0, 300, 65535, 300]


def test_empty_stream():
    lengths, payload, bit_length = huffman_encode(np.zeros(0, dtype=np.int64), 4)
    assert lengths.tolist() == [0, 0, 0, 0] and payload == b"" and bit_length == 0
    out = huffman_decode(lengths, payload, 0)
    assert out.size == 0


def test_encode_rejects_out_of_range_symbols():
    with pytest.raises(ValueError):
        huffman_encode(np.array([0, 4]), 4)
    with pytest.raises(ValueError):
        huffman_encode(np.array([-1]), 4)
    with pytest.raises(ValueError):
        huffman_encode(np.array([0.5]), 4)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), max_size=400))
    )
)
def test_roundtrip_property(case):
    num_symbols, values = case
    symbols = np.array(values, dtype=np.int64)
    _, _, bit_length = roundtrip(symbols, num_symbols)
    if values:
        assert bit_length == textbook_huffman_cost(np.bincount(symbols, minlength=num_symbols))


# --- hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [
        np.array([1, 1, 1]),  # Kraft sum 3/2
        np.array([2, 2, 2, 2, 3]),  # Kraft sum 9/8
        np.array([1, 33]),  # longer than any codeword allowed
        np.array([1, -1]),
        np.array([[1, 1]]),
        np.array([1.0, 1.0]),
    ],
)
def test_bad_lengths_raise(lengths):
    with pytest.raises(FormatError):
        huffman_decode(lengths, b"\x00", 1)


def test_all_zero_lengths_with_symbols_raise():
    with pytest.raises(FormatError):
        huffman_decode(np.zeros(4, dtype=np.uint8), b"\x00", 1)
    assert huffman_decode(np.zeros(4, dtype=np.uint8), b"", 0).size == 0


def test_bad_count_raises():
    with pytest.raises(FormatError):
        huffman_decode(np.array([1, 1]), b"\x00", -1)
    with pytest.raises(FormatError):
        huffman_decode(np.array([1, 1]), b"\x00", 9)  # 9 symbols need at least 9 bits


def test_invalid_codeword_raises():
    # Only '0' is a codeword; a leading '1' is not.
    with pytest.raises(FormatError, match="invalid"):
        huffman_decode(np.array([1, 0]), b"\x80", 1)
    # Codes '0', '10'; '11' is unassigned.
    with pytest.raises(FormatError, match="invalid"):
        huffman_decode(np.array([1, 2, 0]), bytes([0b01100000]), 3)
    # Long incomplete code: 1 + 1/4 + ... none assigned to '1111...'.
    lengths = np.array([1, 2, 3, 13, 14])
    with pytest.raises(FormatError, match="invalid"):
        huffman_decode(lengths, b"\xff\xff\xff", 1)


def test_truncated_payload_raises_and_stays_in_bounds():
    rng = np.random.default_rng(3)
    symbols = np.minimum(rng.geometric(0.3, 4000) - 1, 31)
    lengths, payload, _ = huffman_encode(symbols, 32)
    # The bytes after the cut are valid data: reading past the view would succeed.
    buffer = bytearray(payload)
    view = memoryview(buffer)[: len(payload) - 2]
    with pytest.raises(FormatError, match="ended"):
        huffman_decode(lengths, view, symbols.size)
    with pytest.raises(FormatError):
        huffman_decode(lengths, payload[:-1], symbols.size)


def test_corrupted_payloads_raise_or_decode_and_never_hang():
    rng = np.random.default_rng(4)
    symbols = np.minimum(rng.geometric(0.2, 3000) - 1, 40)
    lengths, payload, _ = huffman_encode(symbols, 48)
    incomplete = lengths.copy()
    incomplete[incomplete == incomplete.max()] = 0  # remove longest codes: unassigned prefixes
    start = time.perf_counter()
    raised = 0
    for trial in range(200):
        data = bytearray(payload)
        for index in rng.integers(0, len(data), 3):
            data[index] = int(rng.integers(0, 256))
        cut = int(rng.integers(0, len(data) + 1))
        use = incomplete if trial % 2 else lengths
        try:
            out = huffman_decode(use, bytes(data[:cut]), symbols.size)
        except FormatError as error:
            assert "\n" not in str(error)
            raised += 1
        else:
            assert out.shape == symbols.shape
    assert raised > 100
    assert time.perf_counter() - start < 20
