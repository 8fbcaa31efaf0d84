"""The one base class of expected user errors.

A `LopdError` is a problem with the user's inputs (a path, a file, a config value): its message
names what is wrong, where, and the fix, and the CLI prints it as one line. Anything else that
escapes a stage is a bug and keeps its traceback.
"""


class LopdError(Exception):
    """An expected user error; the message says what, where and the fix."""


class ConfigError(LopdError, ValueError):
    """A config value that cannot work (unknown preset, empty required path, zero size...)."""
