"""Validation and one-time conversion of user arrays to the contiguous float64 / int64 arrays
that go on the wire."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import InvalidArgument


def as_points(values: Any, name: str, columns: int = 0) -> np.ndarray:
    """A C-contiguous float64 (n, d) copy of `values` (any real dtype and layout; a copy is made
    only when needed), with every value finite. `columns` > 0: d must equal it."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise InvalidArgument(f"{name}: expected a 2-D array (n, d), got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise InvalidArgument(f"{name}: expected real numbers, got dtype {array.dtype}")
    if columns and array.shape[1] != columns:
        raise InvalidArgument(f"{name}: expected {columns} columns, got {array.shape[1]}")
    if array.shape[1] < 1:
        raise InvalidArgument(f"{name}: rows need at least one column")
    array = np.ascontiguousarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise InvalidArgument(
            f"{name}: value {array[row, column]} at point {row}, column {column} is not finite")
    return array


def as_vector(values: Any, name: str, length: int) -> np.ndarray:
    """A contiguous float64 vector of `length` finite values."""
    array = np.ascontiguousarray(np.asarray(values, dtype=np.float64).reshape(-1))
    if array.shape[0] != length:
        raise InvalidArgument(f"{name}: expected {length} values, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{name}: values must be finite")
    return array


def as_ids(values: Any, name: str) -> np.ndarray:
    """A contiguous int64 vector of ids (any integer dtype)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InvalidArgument(f"{name}: expected a 1-D array of ids, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise InvalidArgument(f"{name}: expected integers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)
