"""The compressed file format: the single owner of the bytes on disk."""

from .container import (FORMAT_VERSION, Container, atomic_write, decode, encode, info, load,
                        load_into, read, save)

__all__ = ["FORMAT_VERSION", "Container", "atomic_write", "decode", "encode", "info", "load",
           "load_into", "read", "save"]
