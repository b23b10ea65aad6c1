"""Vector helpers shared by every stage: one definition of "unit length"."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def row_norms(x: np.ndarray) -> np.ndarray:
    """The Euclidean norm of each row (of the last axis), without the (m, d) temporary ``linalg.norm`` makes."""
    return np.sqrt(np.einsum("...i,...i->...", x, x))


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows (or a single vector) scaled to unit length as float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(row_norms(x)[..., None], np.float32(EPS))
