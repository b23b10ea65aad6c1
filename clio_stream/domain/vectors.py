"""Vector helpers shared by every stage: one definition of "unit length"."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows (or a single vector) scaled to unit length as float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]  # no (m, d) temporary, unlike linalg.norm
    return x / np.maximum(norms, np.float32(EPS))
