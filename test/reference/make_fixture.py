"""Writes a tiny random Hugging Face style checkpoint (config.json + safetensors, optionally sharded) for
llama / mistral / qwen2 / gpt2, in the transformers 4.x or 5.x config layout.

  /usr/bin/python3 make_fixture.py --arch llama --out DIR [--tied] [--kv-heads N] [--layers L] [--hidden H]
      [--heads N] [--head-dim D] [--vocab V] [--intermediate I] [--dtype float32|bfloat16|float16] [--shards N]
      [--seed S] [--rope-scaling none|linear|llama3] [--attention-bias] [--mlp-bias] [--sliding-window W]
      [--transformers 4|5] [--max-pos P]
  /usr/bin/python3 make_fixture.py --batch < LINES     (one set of the arguments above per line)

Weights are random (std 0.2-0.5, norms near 1) so that logits are far from flat. Tensor names and layouts are the
ones transformers saves: (out, in) nn.Linear weights for the llama family; GPT-2 Conv1D weights (in, out) with one
fused c_attn (q|k|v along the output axis). A tied lm_head is not stored.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ARCH_NAMES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "gpt2": "GPT2LMHeadModel"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=list(ARCH_NAMES))
    p.add_argument("--out", required=True)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=None, help="llama family: explicit head_dim (written to config)")
    p.add_argument("--vocab", type=int, default=96)
    p.add_argument("--intermediate", type=int, default=None, help="default 64 (gpt2: 4*hidden, n_inner null)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rope-scaling", default="none", choices=["none", "linear", "llama3"])
    p.add_argument("--attention-bias", action="store_true")
    p.add_argument("--mlp-bias", action="store_true")
    p.add_argument("--sliding-window", type=int, default=0, help="mistral/qwen2; 0 = none")
    p.add_argument("--transformers", type=int, default=4, choices=[4, 5])
    p.add_argument("--max-pos", type=int, default=128)
    a = p.parse_args(argv)
    if a.arch == "gpt2":
        if a.rope_scaling != "none" or a.sliding_window or a.head_dim:
            p.error("gpt2 has no rope scaling, sliding window or head_dim")
        a.kv_heads = a.heads
    if a.sliding_window and a.arch not in ("mistral", "qwen2"):
        p.error("--sliding-window is for mistral and qwen2")
    if a.heads % a.kv_heads:
        p.error("--kv-heads must divide --heads")
    if a.head_dim is None and a.hidden % a.heads:
        p.error("--heads must divide --hidden when --head-dim is not given")
    if a.shards < 1:
        p.error("--shards must be >= 1")
    return a


def rope_settings(a):
    if a.rope_scaling == "linear":
        return {"rope_type": "linear", "factor": 2.0}
    if a.rope_scaling == "llama3":
        return {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}
    return None


def build_config(a):
    v5 = a.transformers == 5
    c = {"architectures": [ARCH_NAMES[a.arch]], "model_type": a.arch, "vocab_size": a.vocab,
         "transformers_version": "5.0.0" if v5 else "4.46.3", "use_cache": True}
    c["dtype" if v5 else "torch_dtype"] = a.dtype
    if a.arch == "gpt2":
        c.update({"n_embd": a.hidden, "n_layer": a.layers, "n_head": a.heads, "n_positions": a.max_pos,
                  "n_ctx": a.max_pos, "n_inner": a.intermediate, "activation_function": "gelu_new",
                  "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
                  "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                  "reorder_and_upcast_attn": False, "initializer_range": 0.02,
                  "bos_token_id": a.vocab - 1, "eos_token_id": a.vocab - 1, "tie_word_embeddings": a.tied})
        return c
    c.update({"hidden_size": a.hidden, "intermediate_size": a.intermediate or 64, "num_hidden_layers": a.layers,
              "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
              "max_position_embeddings": a.max_pos, "hidden_act": "silu", "initializer_range": 0.02,
              "rms_norm_eps": 1e-5 if a.arch == "llama" else 1e-6, "tie_word_embeddings": a.tied,
              "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": [2, 3] if a.arch == "llama" else 2})
    if a.head_dim:
        c["head_dim"] = a.head_dim
    elif a.arch != "qwen2":
        c["head_dim"] = a.hidden // a.heads
    theta = 10000.0 if a.arch != "qwen2" else 1000000.0
    rs = rope_settings(a)
    if v5:
        rp = dict(rs) if rs else {"rope_type": "default"}
        rp["rope_theta"] = theta
        c["rope_parameters"] = rp
    else:
        c["rope_theta"] = theta
        c["rope_scaling"] = rs
    if a.arch == "llama":
        c["attention_bias"] = a.attention_bias
        c["mlp_bias"] = a.mlp_bias
        c["pretraining_tp"] = 1
    elif a.arch == "mistral":
        c["sliding_window"] = a.sliding_window or None
        if a.attention_bias:
            c["attention_bias"] = True
        if a.mlp_bias:
            c["mlp_bias"] = True
    else:  # qwen2: q/k/v biases always; sliding window on every layer >= max_window_layers (0 here)
        c["use_sliding_window"] = bool(a.sliding_window)
        c["sliding_window"] = a.sliding_window or 4096
        c["max_window_layers"] = 0
    return c


def build_weights(a, cfg):
    g = torch.Generator().manual_seed(a.seed)

    def rnd(*shape, std=0.2):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm(n):
        return 1.0 + rnd(n, std=0.1)

    V, H, L = a.vocab, a.hidden, a.layers
    w = []
    if a.arch == "gpt2":
        I = a.intermediate or 4 * H
        w.append(("transformer.wte.weight", rnd(V, H, std=0.3)))
        w.append(("transformer.wpe.weight", rnd(a.max_pos, H, std=0.1)))
        for i in range(L):
            p = "transformer.h.%d." % i
            w += [(p + "ln_1.weight", norm(H)), (p + "ln_1.bias", rnd(H, std=0.05)),
                  (p + "attn.c_attn.weight", rnd(H, 3 * H)), (p + "attn.c_attn.bias", rnd(3 * H, std=0.1)),
                  (p + "attn.c_proj.weight", rnd(H, H)), (p + "attn.c_proj.bias", rnd(H, std=0.1)),
                  (p + "ln_2.weight", norm(H)), (p + "ln_2.bias", rnd(H, std=0.05)),
                  (p + "mlp.c_fc.weight", rnd(H, I)), (p + "mlp.c_fc.bias", rnd(I, std=0.1)),
                  (p + "mlp.c_proj.weight", rnd(I, H)), (p + "mlp.c_proj.bias", rnd(H, std=0.1))]
        w += [("transformer.ln_f.weight", norm(H)), ("transformer.ln_f.bias", rnd(H, std=0.05))]
        if not a.tied:
            w.append(("lm_head.weight", rnd(V, H, std=0.3)))
    else:
        I = cfg["intermediate_size"]
        hd = a.head_dim or H // a.heads
        nq, nkv = a.heads * hd, a.kv_heads * hd
        qkv_bias = a.arch == "qwen2" or a.attention_bias
        o_bias = a.arch != "qwen2" and a.attention_bias
        w.append(("model.embed_tokens.weight", rnd(V, H, std=0.5)))
        for i in range(L):
            p = "model.layers.%d." % i
            w += [(p + "self_attn.q_proj.weight", rnd(nq, H)), (p + "self_attn.k_proj.weight", rnd(nkv, H)),
                  (p + "self_attn.v_proj.weight", rnd(nkv, H)), (p + "self_attn.o_proj.weight", rnd(H, nq))]
            if qkv_bias:
                w += [(p + "self_attn.q_proj.bias", rnd(nq, std=0.1)), (p + "self_attn.k_proj.bias", rnd(nkv, std=0.1)),
                      (p + "self_attn.v_proj.bias", rnd(nkv, std=0.1))]
            if o_bias:
                w.append((p + "self_attn.o_proj.bias", rnd(H, std=0.1)))
            w += [(p + "mlp.gate_proj.weight", rnd(I, H)), (p + "mlp.up_proj.weight", rnd(I, H)),
                  (p + "mlp.down_proj.weight", rnd(H, I))]
            if a.mlp_bias:
                w += [(p + "mlp.gate_proj.bias", rnd(I, std=0.1)), (p + "mlp.up_proj.bias", rnd(I, std=0.1)),
                      (p + "mlp.down_proj.bias", rnd(H, std=0.1))]
            w += [(p + "input_layernorm.weight", norm(H)), (p + "post_attention_layernorm.weight", norm(H))]
        w.append(("model.norm.weight", norm(H)))
        if not a.tied:
            w.append(("lm_head.weight", rnd(V, H, std=0.3)))
    dt = DTYPES[a.dtype]
    return [(n, t.to(dt)) for n, t in w]


def write_checkpoint(out, weights, shards):
    os.makedirs(out, exist_ok=True)
    meta = {"format": "pt"}
    if shards == 1:
        st_io.write_file(os.path.join(out, "model.safetensors"), weights, meta)
        return
    if shards > len(weights):
        raise SystemExit("--shards %d exceeds the %d tensors" % (shards, len(weights)))
    per, extra = divmod(len(weights), shards)
    weight_map, total, start = {}, 0, 0
    for s in range(shards):
        n = per + (1 if s < extra else 0)
        part = weights[start:start + n]
        start += n
        name = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        st_io.write_file(os.path.join(out, name), part, meta)
        for k, t in part:
            weight_map[k] = name
            total += t.numel() * t.element_size()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def make(argv=None):
    a = parse_args(argv)
    cfg = build_config(a)
    weights = build_weights(a, cfg)
    write_checkpoint(a.out, weights, a.shards)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return a.out


if __name__ == "__main__":
    if sys.argv[1:] == ["--batch"]:  # one fixture per stdin line of arguments (saves interpreter start-ups)
        import shlex
        for line in sys.stdin:
            if line.strip():
                make(shlex.split(line))
    else:
        make()
