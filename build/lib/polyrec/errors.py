"""The errors polyrec raises for input the user can fix.

Each message names the file or table, the column or key, and the rows where it applies,
and says what to do. The command line prints these as one line on stderr (exit code 2);
any other exception is a bug in polyrec and keeps its traceback.
"""


class PolyrecError(Exception):
    """Base class: a problem with the user's input, files or request, not with polyrec."""


class ConfigError(PolyrecError, ValueError):
    """The configuration is malformed; the message says which key and why."""


class DataError(PolyrecError, ValueError):
    """The data does not match the configuration; the message says what and where."""


class UnknownIdError(DataError):
    """A user or item id the run does not know (the service answers 404)."""


class RunError(PolyrecError):
    """A run directory cannot be read (missing, incomplete, corrupt) or may not be written."""


class TextModelError(PolyrecError, RuntimeError):
    """The language model could not be loaded; the message says what to install or fix."""


class TrainingError(PolyrecError, FloatingPointError):
    """Training diverged (a loss became NaN or infinite); the message says which setting to change."""


class MissingExtraError(PolyrecError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def optional_import(module: str, extra: str):
    """``module`` imported, or a :class:`MissingExtraError` naming the extra that installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"this needs the Python package '{module}': pip install 'polyrec[{extra}]'") from None
