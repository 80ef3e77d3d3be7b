"""The one exception type for bad user input.

Every reader, writer and script raises `InputError` for input a user can fix (a missing file, a
corrupt micrograph, a malformed annotation, an unknown config key). Its message is one line that
names the file and says what to do; scripts print it as `error: <message>` and exit with status 2,
never with a traceback.
"""


class InputError(ValueError):
    """Bad input a user can fix. The message names the file and the fix, on one line."""
