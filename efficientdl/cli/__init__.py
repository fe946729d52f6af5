"""The ``edl`` command line: parse arguments, call the public API, render."""
