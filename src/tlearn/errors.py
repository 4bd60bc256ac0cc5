"""Errors a user can cause. The CLI prints their message as one line and exits 2."""


def first_line(error: BaseException, limit: int = 120) -> str:
    """An exception's message cut to one short line, for one-line user errors."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class UserError(Exception):
    """A problem with the user's input: bad path, flag value, data or weights file."""


class DataError(UserError):
    """The dataset cannot be used as given (missing folder, no images, class mismatch)."""


class ModelError(UserError):
    """Unknown model name, or weights that do not fit the model."""


class WeightsDownloadError(UserError):
    """Pretrained weights could not be downloaded (usually: no network)."""


class ConfigError(UserError):
    """A flag or setting has an invalid value."""


class RunFolderError(UserError):
    """A run folder is missing, incomplete or damaged."""


class TrainingError(UserError):
    """Training cannot go on (for example a non-finite loss)."""
