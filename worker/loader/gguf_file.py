"""A GGUF file's metadata and tensor table, parsed in one pass over its header.

The ``gguf`` package's reader builds a numpy view for every part of every metadata value: for a
model with a 49k-token vocabulary that is ~300k views and about 4 s, on each worker start. This
reader walks the header with ``struct`` (~50 ms), decodes values to plain Python, and maps each
tensor's bytes from the file only as a numpy view, as the package does, for its ``dequantize``.
Little-endian files only (what llama.cpp writes); the format: github.com/ggml-org/ggml docs/gguf.md.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Metadata value types (GGUFValueType) -> struct format of a scalar.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Tensor types stored as plain numbers; every other type is quantized blocks, read as bytes per row.
_PLAIN = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # as GGUF lists it: innermost dimension first
    data: np.ndarray  # a view of the file: values, or for quantized types [rows..., bytes per row]


class _Cursor:
    """Reads the header's values in order; running past the end is a ValueError."""

    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self._buffer):
            raise ValueError(f"the header ends inside a value at byte {self.offset}")
        (value,) = struct.unpack_from("<" + fmt, self._buffer, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        size = self.unpack("Q")
        if self.offset + size > len(self._buffer):
            raise ValueError(f"the header ends inside a string at byte {self.offset}")
        text = bytes(self._buffer[self.offset : self.offset + size]).decode("utf-8")
        self.offset += size
        return text

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            if item_type in _SCALARS:  # one unpack for the whole array
                fmt = f"{count}{_SCALARS[item_type]}"
                if self.offset + struct.calcsize(fmt) > len(self._buffer):
                    raise ValueError(f"the header ends inside an array at byte {self.offset}")
                values = list(struct.unpack_from("<" + fmt, self._buffer, self.offset))
                self.offset += struct.calcsize(fmt)
                return values
            return [self.value(item_type) for _ in range(count)]
        if value_type not in _SCALARS:
            raise ValueError(f"unknown metadata value type {value_type} at byte {self.offset}")
        return self.unpack(_SCALARS[value_type])


class GGUFFile:
    """``fields``: every metadata key and its value; ``tensors``: name -> tensor, in file order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._map = np.memmap(path, mode="r")
        cursor = _Cursor(memoryview(self._map.data))
        if len(self._map) < 4 or bytes(self._map[:4]) != GGUF_MAGIC:
            raise ValueError("GGUF magic invalid")
        cursor.offset = 4
        version = cursor.unpack("I")
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version} is not supported (a big-endian file?)")
        num_tensors, num_fields = cursor.unpack("Q"), cursor.unpack("Q")
        self.fields: dict[str, Any] = {}
        for _ in range(num_fields):
            key = cursor.string()
            self.fields[key] = cursor.value(cursor.unpack("I"))
        infos = [self._tensor_info(cursor) for _ in range(num_tensors)]
        alignment = int(self.fields.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment {alignment} is not a power of two")
        data_start = -(-cursor.offset // alignment) * alignment
        self.tensors: dict[str, GGUFTensor] = {}
        for name, shape, tensor_type, offset in infos:
            if name in self.tensors:
                raise ValueError(f"tensor {name} appears twice")
            self.tensors[name] = GGUFTensor(
                name, tensor_type, shape, self._tensor_data(data_start + offset, shape, tensor_type)
            )

    @staticmethod
    def _tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = cursor.string()
        shape = tuple(cursor.unpack("Q") for _ in range(cursor.unpack("I")))
        return name, shape, GGMLQuantizationType(cursor.unpack("I")), cursor.unpack("Q")

    def _tensor_data(
        self, start: int, shape: tuple[int, ...], tensor_type: GGMLQuantizationType
    ) -> np.ndarray:
        block_size, type_size = GGML_QUANT_SIZES[tensor_type]
        num_bytes = int(np.prod(shape)) * type_size // block_size
        if start + num_bytes > len(self._map):
            raise ValueError(f"the file ends inside a tensor's data ({start + num_bytes} > {len(self._map)})")
        raw = self._map[start : start + num_bytes]
        dims = tuple(reversed(shape))
        if tensor_type in _PLAIN:
            return raw.view(_PLAIN[tensor_type]).reshape(dims)
        return raw.reshape(quant_shape_to_byte_shape(dims, tensor_type))
