"""Numpy arrays in JSON documents: base64 little-endian bytes, so state and deltas read the same on any machine."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def encode_array(a: np.ndarray, dtype: str) -> dict[str, Any]:
    """``{"dtype", "shape", "b64"}`` of ``a`` cast to little-endian ``dtype``."""
    arr = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(doc: Mapping[str, Any] | Sequence[Any], dtype: str) -> np.ndarray:
    """Inverse of :func:`encode_array`; plain nested lists are accepted too (state written with ``encoding="list"``)."""
    if isinstance(doc, Mapping):
        raw = base64.b64decode(doc["b64"])
        arr = np.frombuffer(raw, dtype=np.dtype(doc.get("dtype", dtype)).newbyteorder("<"))
        return arr.reshape(doc["shape"]).astype(dtype)
    return np.asarray(doc, dtype=dtype)
