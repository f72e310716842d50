"""Prints {name: {dtype, shape, sum, sumsq}} (float64 sums) for a safetensors file or a HF model folder, read with
the Python parser in st_io.py; with several paths, {path: that object}. Used by the C++ tests to cross-check the two
implementations."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


def dump(path):
    tensors = st_io.read_model_dir(path) if os.path.isdir(path) else st_io.read_file(path)[0]
    out = {}
    for name, t in tensors.items():
        d = t.to(torch.float64)
        out[name] = {"dtype": st_io.NAMES[t.dtype], "shape": list(t.shape),
                     "sum": float(d.sum()), "sumsq": float((d * d).sum())}
    return out


def main():
    paths = sys.argv[1:]
    out = dump(paths[0]) if len(paths) == 1 else {p: dump(p) for p in paths}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
