"""The one exception type for bad user input.

Every reader, writer and script raises `InputError` for input a user can fix (a missing file, a
corrupt micrograph, a malformed annotation, an unknown config key). Its message is one line that
names the file and says what to do; scripts print it as `error: <message>` and exit with status 2,
never with a traceback.
"""
import sys
from contextlib import contextmanager


class InputError(ValueError):
    """Bad input a user can fix. The message names the file and the fix, on one line."""


@contextmanager
def exit_on_input_error():
    """A script's body: an InputError ends it with `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
