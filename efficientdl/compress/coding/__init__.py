"""Entropy and index coding of the compressed file: canonical Huffman coding and the
relative sparse index (Han et al., ICLR'16, section 3)."""

from .huffman import huffman_decode, huffman_encode
from .sparse_index import relative_index_decode, relative_index_encode

__all__ = ["huffman_decode", "huffman_encode", "relative_index_decode", "relative_index_encode"]
