"""The errors a user can cause (bad config, data, model or artifact): printed as one clear line, exit 2.

They live here, at the bottom of the package, so that every layer can raise them; the modules that first
defined them (config, data.readers, inference.modeling, artifacts) still export them under the same names.
"""


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it."""


class DataError(ValueError):
    """A data file is missing, unreadable or holds a bad record; the message names file and line."""


class ModelError(ValueError):
    """A base model cannot be found or loaded; the message says which and what to do."""


class ArtifactError(ValueError):
    """A run or export dir is missing, incomplete or of an unknown version."""


USER_ERRORS = (ConfigError, DataError, ModelError, ArtifactError)


class CheckFailed(Exception):
    """A check that a command runs did not pass (the export's accuracy gate, the latency regression gate): the
    inputs were valid, what they produced was not good enough. The CLI prints it as one line, exit 1."""


CHECK_FAILURES = (CheckFailed,)
