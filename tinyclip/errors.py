"""One exception type for every user-facing failure.

The CLI turns a :class:`TinyCLIPError` into a single ``error: ...`` line on stderr and exit code 2, so a
message should say what is wrong *and* what to do about it.
"""


class TinyCLIPError(Exception):
    """A bad input (config, recipe, path, checkpoint, model pair) detected before or during work."""


def one_line(exc: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """The first line of an exception's message (its type name when the message is empty), cut to ``limit``
    characters: what a TinyCLIPError quotes of the library error behind it."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if with_type and lines:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
