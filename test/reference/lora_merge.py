"""PEFT's LoRA merge, written independently of the C++ code, in float64: for every adapter in ADAPTER_DIR
(adapter_config.json + adapter_model.safetensors, keys base_model.model.<module>.lora_A/lora_B.weight) the base
weight <module>.weight of BASE_DIR in its FILE layout gets (lora_alpha / r) * B @ A, transposed when fan_in_fan_out
(GPT-2 Conv1D weights are stored (in, out)). Writes the merged tensors (only the changed ones) to OUT.

usage: /usr/bin/python3 lora_merge.py BASE_DIR ADAPTER_DIR OUT.safetensors"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


def main(base_dir, adapter_dir, out):
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert cfg["peft_type"] == "LORA", cfg["peft_type"]
    scale = float(cfg["lora_alpha"]) / int(cfg["r"])
    base = st_io.read_model_dir(base_dir)
    ad, _, names = st_io.read_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    prefix, a_suffix = "base_model.model.", ".lora_A.weight"
    merged = []
    for name in names:
        if not name.endswith(a_suffix):
            continue
        module = name[len(prefix):-len(a_suffix)]
        A = ad[name].to(torch.float64)
        B = ad[prefix + module + ".lora_B.weight"].to(torch.float64)
        delta = scale * (B @ A)  # (out, in)
        if cfg.get("fan_in_fan_out", False):
            delta = delta.T
        merged.append((module + ".weight", base[module + ".weight"].to(torch.float64) + delta))
    st_io.write_file(out, merged)


if __name__ == "__main__":
    main(*sys.argv[1:4])
