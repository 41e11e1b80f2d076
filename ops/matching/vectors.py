"""Unit vectors: the two ways crossmatch makes embeddings unit length, each with its own contract.

``normalise`` is for matching: a NaN, infinite or zero row has no direction to compare, so it is refused (matching
sets such rows aside first, with a reason: ``invalid_rows``). ``unit_or_zero`` is for writing embeddings: a
degenerate vector is kept as it is (zero stays zero) so that the row is written and reported later, never lost.
"""

from __future__ import annotations

import numpy as np

from ops.io.errors import SearchError


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows; refuses NaN, infinite and zero vectors (they have no direction to compare)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise SearchError(f"embeddings must be a 2-d array, not shape {vectors.shape}")
    bad = invalid_rows(vectors)
    if bad.any():
        raise SearchError(f"{int(bad.sum())} embeddings are NaN, infinite or zero (first at row {int(bad.argmax())})")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    return (vectors / norms).astype(np.float32)


def invalid_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows that cannot be normalised: any NaN or infinity, or all zeros."""
    vectors = np.asarray(vectors)
    return ~np.isfinite(vectors).all(axis=1) | ~(vectors != 0).any(axis=1)


def unit_or_zero(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (float32) scaled to unit length; a zero row stays zero."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
