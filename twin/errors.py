"""Errors a user can cause. Each message is one line naming the file, the variable and the fix.

The CLI prints ``str(error)`` and exits with status 2; no traceback is shown.
"""


class TwinError(Exception):
    """Base class of every error caused by user input (files, flags, configs)."""


class SessionError(TwinError):
    """A session store or recording file does not follow the session schema."""


class ConfigError(TwinError):
    """A config file or command-line value is invalid."""


class RunError(TwinError):
    """A run directory is missing, incomplete, or does not match the data it is used with."""


class StimulusError(TwinError):
    """Exported stimuli, manifests or rig responses do not match each other."""


class OutputError(TwinError):
    """An output path cannot or must not be written (exists, parent missing, not writable)."""


class TwinWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints one line)."""
