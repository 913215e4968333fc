"""Errors that users see: one line that names the problem and the fix."""


class PWLError(Exception):
    """A user-facing error; entry points print it as one line and exit 2."""


class ConfigError(PWLError, ValueError):
    """A config key or value is wrong."""


class MaskError(PWLError, ValueError):
    """A mask is not a string over {S,T} of the model's block count."""


class DataError(PWLError, FileNotFoundError):
    """A dataset is missing or corrupt."""


class CheckpointError(PWLError, FileNotFoundError):
    """A checkpoint or bundle is missing, corrupt or does not match the config."""
