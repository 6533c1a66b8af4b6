"""Tensor descriptions shared by ONNX Runtime and the Open Inference Protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Open Inference Protocol datatype -> numpy dtype.
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPES = {dtype: name for name, dtype in NUMPY_TYPES.items()}

# ONNX Runtime's type strings -> Open Inference Protocol datatype.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, OIP datatype and shape (-1 for a free dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_ort(cls, node) -> "TensorSpec":
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
        return cls(node.name, _ORT_TYPES.get(node.type, node.type), shape)

    @property
    def dtype(self) -> np.dtype:
        return NUMPY_TYPES[self.datatype]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
