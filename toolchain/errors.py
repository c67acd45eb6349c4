"""The errors a user can cause (bad config, data, model or artifact): printed as one clear line."""
from toolchain.artifacts import ArtifactError
from toolchain.config import ConfigError
from toolchain.data.readers import DataError
from toolchain.modeling import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, ArtifactError)
