"""One exception type for every user-facing failure.

The CLI turns a :class:`TinyCLIPError` into a single ``error: ...`` line on stderr and exit code 2, so a
message should say what is wrong *and* what to do about it.
"""


class TinyCLIPError(Exception):
    """A bad input (config, recipe, path, checkpoint, model pair) detected before or during work."""
