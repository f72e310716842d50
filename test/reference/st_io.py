"""Minimal safetensors reader/writer (json + raw bytes), independent of the C++ implementation and of the
`safetensors` package. Little-endian hosts only."""
import json
import os
import struct
import sys

import torch

assert sys.byteorder == "little", "safetensors data is little-endian"

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


def tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_file(path, tensors, metadata=None):
    """tensors: list of (name, tensor). Contiguous data in the given order, data start 8-byte aligned."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, t in tensors:
        b = tensor_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_file(path):
    """-> (dict name -> tensor (a copy), metadata dict, header-ordered names)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: shorter than 8 bytes" % path)
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError("%s: header length %d past end of file" % (path, n))
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    out, names = {}, []
    meta = header.pop("__metadata__", {}) or {}
    for name, e in header.items():
        dt = DTYPES[e["dtype"]]
        b, end = e["data_offsets"]
        numel = 1
        for d in e["shape"]:
            numel *= d
        chunk = bytearray(data[b:end])
        esize = torch.empty((), dtype=dt).element_size()
        if len(chunk) != numel * esize:
            raise ValueError("%s: tensor %s has %d bytes, expected %d" % (path, name, len(chunk), numel * esize))
        if numel == 0:
            t = torch.empty(e["shape"], dtype=dt)
        elif dt == torch.bfloat16:
            t = torch.frombuffer(chunk, dtype=torch.int16).view(torch.bfloat16).reshape(e["shape"])
        else:
            t = torch.frombuffer(chunk, dtype=dt).reshape(e["shape"])
        out[name] = t
        names.append(name)
    return out, meta, names


def read_model_dir(d):
    """All tensors of a HF model folder (model.safetensors, or an index with shards)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(wm.values())):
            t, _, _ = read_file(os.path.join(d, shard))
            tensors.update(t)
        return {k: tensors[k] for k in wm}
    t, _, _ = read_file(os.path.join(d, "model.safetensors"))
    return t
