"""Errors shared across calib_lib.

``UserError`` marks an anticipated failure that the user can fix: bad input, a file that cannot be read
or written, a damaged store. The ``calib`` command prints its message on one line and exits with code 2;
any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An anticipated failure; the message names the path or field at fault and how to fix it."""


class InvalidInput(UserError, ValueError):
    """A value or file the user supplied cannot be used (also a ValueError, as it always was)."""


class FieldError(InvalidInput):
    """A value is missing, of the wrong type or out of range; ``field`` names it, so run specs and
    grids can report the field's full path (``method.sparsity``, ``calibration.num_samples``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class StoreError(UserError):
    """The results store cannot be opened, read or written (missing, not a store, damaged, unwritable)."""


class Unavailable(UserError, RuntimeError):
    """Something a request needs is not available here (a source, a task's data, a GPU); the message says
    how to make it available or what to use instead."""


class Unsupported(UserError, RuntimeError):
    """A request that cannot be carried out for this model or data (a block order that needs uniform
    batches, a Hessian that never factors); the message says what would work."""


class RunsFailed(UserError, RuntimeError):
    """Runs of a grid failed; the message names the first failure, and finished runs are kept."""
