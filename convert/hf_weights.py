"""Reading Hugging Face weight files one tensor at a time, and writing safetensors as a stream.

Reading: safetensors (one file, or sharded with `model.safetensors.index.json`) through a small header parser and
positioned reads into a fresh numpy buffer, so bf16 works (safetensors' numpy loader rejects it) and no mmap keeps
the file's pages resident: peak host memory is one tensor. Legacy PyTorch `.bin` files go through
`torch.load(weights_only=True, mmap=True)` when torch is installed.

Writing: the header is computed from the tensors' shapes and dtypes first, then each tensor is written as it is
produced, so the writer never holds more than one tensor either.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import ml_dtypes
import numpy as np

from bolt_jax.runtime.atomic import atomic_file

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024


class WeightsError(ValueError):
    """A weight file that is missing, truncated, or does not hold what the config says; the message names it."""


class TensorSource(Protocol):
    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str) -> np.ndarray: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------ safetensors read
class SafetensorsFile:
    """One .safetensors file: header parsed and checked against the file size on open; tensors read on demand."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise WeightsError(f"{path} is truncated: {size} bytes, not even a safetensors header length")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise WeightsError(f"{path} is truncated or not a safetensors file: header length {header_len}, "
                                   f"file size {size} bytes")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise WeightsError(f"{path}: the safetensors header is not valid JSON ({e})") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        data_len = size - self.data_start
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            code = entry.get("dtype")
            if code not in SAFETENSORS_DTYPES:
                raise WeightsError(f"{path}: tensor {name} has dtype {code!r}, which this reader does not handle")
            dtype, shape = SAFETENSORS_DTYPES[code], tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise WeightsError(f"{path}: tensor {name} spans {end - begin} bytes but its shape {shape} and dtype "
                                   f"{code} need {int(np.prod(shape)) * dtype.itemsize}")
            if end > data_len:
                raise WeightsError(f"{path} is truncated: tensor {name} ends at byte {self.data_start + end}, the file "
                                   f"has {size} bytes (re-download or re-save it)")
            self.entries[name] = (dtype, shape, begin, end)
        self._file = open(path, "rb")

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        out = np.empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        self._file.seek(self.data_start + begin)
        got = 0
        while got < end - begin:
            n = self._file.readinto(view[got:])
            if not n:
                raise WeightsError(f"{self.path} is truncated: tensor {name} could only be read to byte {got}")
            got += n
        return out

    def close(self) -> None:
        self._file.close()


class SafetensorsSource:
    """All tensors of a HF checkpoint directory in safetensors format, single file or sharded."""

    def __init__(self, files: dict[str, str]):  # tensor name -> file path
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        for path in sorted(set(files.values())):
            if not os.path.isfile(path):
                names = sorted(n for n, p in files.items() if p == path)
                raise WeightsError(f"weight file {path} (listed in the index for {names[0]} and {len(names) - 1} "
                                   "more tensors) does not exist")
            self._files[path] = SafetensorsFile(path)
        for name, path in files.items():
            if name not in self._files[path].entries:
                raise WeightsError(f"the index says tensor {name} is in {path}, but that file does not contain it")
            self._where[name] = self._files[path]

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].entries[name][1]

    def read(self, name: str) -> np.ndarray:
        return self._where[name].read(name)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


# ------------------------------------------------------------------------------------------------ torch .bin read
class TorchBinSource:
    """Legacy pytorch_model.bin (single or sharded), loaded lazily with torch.load(weights_only=True, mmap=True)."""

    def __init__(self, files: dict[str, str]):
        try:
            import torch
        except ImportError as e:
            raise WeightsError(
                "this checkpoint has only PyTorch .bin weights, and reading them needs torch, which is not installed. "
                "Either `pip install torch` (CPU build is enough) or re-save the model as safetensors "
                "(`LlamaForCausalLM.from_pretrained(dir).save_pretrained(dir2)` on a machine with torch).") from e
        self._torch = torch
        self._state: dict[str, object] = {}
        for path in sorted(set(files.values())):
            if not os.path.isfile(path):
                raise WeightsError(f"weight file {path} does not exist")
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise WeightsError(f"could not read {path} with torch.load(weights_only=True): {e}") from e
            self._state.update(loaded)

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def read(self, name: str) -> np.ndarray:
        t = self._state[name].detach()
        if t.dtype == self._torch.bfloat16:
            return t.view(self._torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
        return t.numpy().copy()

    def close(self) -> None:
        self._state.clear()


def open_hf_weights(hf_dir: str) -> TensorSource:
    """The tensors of a HF model directory: safetensors preferred, `.bin` only if there is no safetensors."""
    def from_index(index_path: str) -> dict[str, str]:
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index_path} has no weight_map")
        return {name: os.path.join(hf_dir, fname) for name, fname in weight_map.items()}

    if os.path.isfile(os.path.join(hf_dir, INDEX_FILE)):
        return SafetensorsSource(from_index(os.path.join(hf_dir, INDEX_FILE)))
    single = os.path.join(hf_dir, SINGLE_FILE)
    if os.path.isfile(single):
        return SafetensorsSource({name: single for name in SafetensorsFile(single).entries})
    if os.path.isfile(os.path.join(hf_dir, BIN_INDEX_FILE)):
        return TorchBinSource(from_index(os.path.join(hf_dir, BIN_INDEX_FILE)))
    if os.path.isfile(os.path.join(hf_dir, BIN_FILE)):
        return TorchBinSource({"*": os.path.join(hf_dir, BIN_FILE)})
    raise WeightsError(f"no weights in {hf_dir}: expected {SINGLE_FILE}, {INDEX_FILE} (sharded), {BIN_FILE} or "
                       f"{BIN_INDEX_FILE}")


# ------------------------------------------------------------------------------------------------ safetensors write
def write_safetensors(path: str, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                      tensors: Iterator[tuple[str, np.ndarray]] | Callable[[], Iterator[tuple[str, np.ndarray]]],
                      metadata: dict[str, str] | None = None) -> None:
    """Writes `path` (through `path.tmp` + rename) from `specs` (name, shape, dtype, in file order) and a stream of
    (name, array) in the same order; each array is checked against its spec and written immediately."""
    specs = list(specs)
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": DTYPE_CODES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the data start to 8 bytes, as safetensors does
    stream = tensors() if callable(tensors) else tensors
    with atomic_file(path, "wb", fsync=True) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for (name, shape, dtype), (got_name, array) in zip(specs, stream, strict=True):
            if got_name != name or tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
                raise WeightsError(f"writing {path}: expected {name} {tuple(shape)} {np.dtype(dtype)}, got "
                                   f"{got_name} {tuple(array.shape)} {array.dtype}")
            f.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
