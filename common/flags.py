"""Command-line flags renamed so that one concept has one name in every script; the old spelling still
works for one release, with a warning."""
import argparse
import warnings

from common.errors import InputError


class RenamedFlag(argparse.Action):
    """Store the value as usual; warn when it was given under one of `old_names`."""

    def __init__(self, option_strings, dest, old_names=(), **kwargs):
        self.old_names = tuple(old_names)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old_names:
            warnings.warn(f"{option_string} is now called {self.option_strings[0]}; the old name goes in the next "
                          f"release", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_renamed_argument(parser, name: str, *old_names: str, **kwargs):
    """`parser.add_argument(name, ...)` that also takes `old_names` (hidden from --help) with a warning."""
    return parser.add_argument(name, *old_names, action=RenamedFlag, old_names=old_names, **kwargs)


def parse_shard(text):
    """'i/N' -> (i, N) with 0 <= i < N (None for None): process every N-th item, starting at item i."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError as exc:
        raise InputError(f"--shard {text} must look like i/N, e.g. 0/4") from exc
    if not 0 <= index < count:
        raise InputError(f"--shard {text}: need 0 <= i < N")
    return index, count
