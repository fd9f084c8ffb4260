"""Errors shared across calib_lib."""


class FieldError(ValueError):
    """A value is missing, of the wrong type or out of range; ``field`` names it, so run specs and
    grids can report the field's full path (``method.sparsity``, ``calibration.num_samples``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
