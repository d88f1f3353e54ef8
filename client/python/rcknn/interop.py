"""Neighbour layouts of other Vecchia tools, from an rcknn answer (ids shaped (n, k), padded with
-1, as Index.neighbors() and vecchia_neighbors() return)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._errors import InvalidArgument


def _check_ids(ids: Any) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or (ids.size and ids.dtype.kind not in "iu"):
        raise InvalidArgument(f"ids: expected an (n, k) integer array, got shape {ids.shape} "
                              f"dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def gpgp_nnarray(ids: Any) -> np.ndarray:
    """GpGp's NNarray (the layout of GpGp::find_ordered_nn, as vecchia_meanzero_loglik and the
    other GpGp likelihoods take it) from a predecessor-mode answer of every point in order
    (Index.neighbors(k, predecessor=True), or vecchia_neighbors()).

    Returns an (n, k + 1) float64 array: row i is observation i + 1 (R counts from 1); its first
    column is i + 1 itself, then the 1-based ids of its neighbours, nearest first, and NaN where
    the answer has padding (row 1 has only itself, row i <= k has i entries). NaN is R's NA
    for this purpose (is.na(NaN) is TRUE); numpy has no integer NA.

    rcknn.InvalidArgument if a row holds an id that is not a predecessor (j >= i), as GpGp's
    ordering requires.
    """
    ids = _check_ids(ids)
    n, k = ids.shape
    rows = np.arange(n, dtype=np.int64)[:, None]
    valid = ids >= 0
    if np.any(valid & (ids >= rows)):
        row = int(np.argwhere(valid & (ids >= rows))[0][0])
        raise InvalidArgument(f"ids: row {row} holds an id >= {row}; GpGp's NNarray needs the "
                              "predecessor answer of every point in order (predecessor=True)")
    out = np.full((n, k + 1), np.nan, dtype=np.float64)
    out[:, 0] = np.arange(1, n + 1)
    out[:, 1:] = np.where(valid, ids + 1, np.nan)
    return out


def sparse_pattern(ids: Any, *, num_points: Optional[int] = None,
                   query_ids: Any = None, include_self: bool = False,
                   distances: Any = None) -> Any:
    """The neighbour sets as a scipy.sparse CSR matrix (needs scipy): row q has a stored entry
    in column ids[q, j] for every neighbour (padding -1 skipped), with value 1.0, or the
    distance when `distances` (same shape as ids) is given. Column indices are sorted within a
    row. The shape is (len(ids), num_points); num_points defaults to len(ids) (the square
    pattern of an all-points answer). `include_self` adds the diagonal entry (q, query_ids[q])
    (query_ids defaults to 0..len(ids)-1), as the sparsity pattern of a Vecchia factor has it.
    """
    import scipy.sparse  # pylint: disable=import-outside-toplevel

    ids = _check_ids(ids)
    nq, k = ids.shape
    columns = nq if num_points is None else int(num_points)
    valid = ids >= 0
    if np.any(ids[valid] >= columns):
        raise InvalidArgument(f"ids: an id >= num_points = {columns}")
    if distances is not None:
        values = np.asarray(distances, dtype=np.float64)
        if values.shape != ids.shape:
            raise InvalidArgument(f"distances: expected shape {ids.shape}, got {values.shape}")
    else:
        values = np.ones(ids.shape, dtype=np.float64)
    row_index = np.repeat(np.arange(nq, dtype=np.int64), k).reshape(nq, k)
    rows, cols, data = row_index[valid], ids[valid], values[valid]
    if include_self:
        selves = (np.arange(nq, dtype=np.int64) if query_ids is None
                  else np.asarray(query_ids, dtype=np.int64))
        if selves.shape != (nq,):
            raise InvalidArgument(f"query_ids: expected {nq} ids, got shape {selves.shape}")
        rows = np.concatenate([rows, np.arange(nq, dtype=np.int64)])
        cols = np.concatenate([cols, selves])
        data = np.concatenate([data, np.zeros(nq) if distances is not None else np.ones(nq)])
    matrix = scipy.sparse.csr_matrix((data, (rows, cols)), shape=(nq, columns))
    matrix.sort_indices()
    return matrix
