"""The tensors of a GGUF file without parsing its vocabulary: a reader for loading weights.

`gguf.GGUFReader` builds a numpy view for every element of every metadata array; a 150k-token vocabulary with its
merges is ~300k strings, which takes 10-25 s of Python on a small machine at every start. Loading weights needs
only the tensor table and the scalar metadata, so this walks the header with `struct` (array items are skipped by
their lengths, ~0.1 s) and maps the tensor data once. Its `tensors` carry what the loaders read from a
`gguf.ReaderTensor` (name, tensor_type, shape in ggml order, data shaped as GGUFReader shapes it) and its
`fields` the scalar and string values (`parts[data[0]]`, as GGUFReader's). The tokenizer and config come from
transformers' own GGUF reading (gguf_native.metadata_dir), once per file.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_TYPED = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32,
          "I64": np.int64}


@dataclass
class IndexField:
    parts: list
    data: list


@dataclass
class IndexTensor:
    name: str
    tensor_type: object         # gguf.GGMLQuantizationType
    shape: np.ndarray           # ggml order (row length first), uint64 as GGUFReader gives it
    data: np.ndarray            # typed for float/int tensors, else the raw bytes [rows..., bytes per row]


class GGUFIndex:
    def __init__(self, path: Path):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        self.path = Path(path)
        mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = memoryview(mm)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{self.path}: not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{self.path}: GGUF version {version} is not supported")
        pos = 24
        self.fields: dict[str, IndexField] = {}

        def string(p):
            n, = struct.unpack_from("<Q", buf, p)
            return bytes(buf[p + 8:p + 8 + n]), p + 8 + n

        def skip(vtype, p):
            if vtype == _STRING:
                n, = struct.unpack_from("<Q", buf, p)
                return p + 8 + n
            return p + struct.calcsize(_SCALARS[vtype])

        for _ in range(n_kv):
            key, pos = string(pos)
            vtype, = struct.unpack_from("<I", buf, pos)
            pos += 4
            if vtype == _ARRAY:
                itype, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if itype == _STRING or itype == _ARRAY:
                    for _ in range(count):
                        pos = skip(itype, pos) if itype == _STRING else self._skip_array(buf, pos, skip)
                else:
                    pos += count * struct.calcsize(_SCALARS[itype])
                continue
            if vtype == _STRING:
                raw, pos = string(pos)
                value = np.frombuffer(raw, dtype=np.uint8)
            else:
                fmt = _SCALARS[vtype]
                value = np.array(struct.unpack_from(fmt, buf, pos))
                pos += struct.calcsize(fmt)
            self.fields[key.decode()] = IndexField(parts=[value], data=[0])
        infos = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            n_dims, = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            ttype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name.decode(), dims, ttype, offset))
        align = int(self.fields["general.alignment"].parts[0][0]) if "general.alignment" in self.fields else 32
        start = pos + (-pos) % align
        self.tensors: list[IndexTensor] = []
        for name, dims, ttype, offset in infos:
            kind = GGMLQuantizationType(ttype)
            np_dims = tuple(int(d) for d in reversed(dims))
            n = int(np.prod(np_dims)) if np_dims else 1
            lo = start + offset
            if kind.name in _TYPED:
                dt = np.dtype(_TYPED[kind.name])
                data = mm[lo:lo + n * dt.itemsize].view(dt).reshape(np_dims)
            else:
                block, size = GGML_QUANT_SIZES[kind]
                data = mm[lo:lo + n // block * size].reshape(np_dims[:-1] + (np_dims[-1] // block * size,))
            self.tensors.append(IndexTensor(name, kind, np.array(dims, dtype=np.uint64), data))

    @staticmethod
    def _skip_array(buf, pos, skip):
        itype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if itype in (_STRING, _ARRAY):
            for _ in range(count):
                pos = skip(itype, pos) if itype == _STRING else GGUFIndex._skip_array(buf, pos, skip)
            return pos
        return pos + count * struct.calcsize(_SCALARS[itype])
