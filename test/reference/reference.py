"""Independent float64 forward pass of Hugging Face Llama / Mistral / Qwen2 / GPT-2 causal LMs, written from the
semantics of transformers' modeling code, reading config.json and safetensors with its own parser (st_io.py).

  /usr/bin/python3 reference.py --model DIR --input IN.json --out OUT.json

IN:  {"sequences": [[ids]...], "generate": {"prompts": [[ids]...], "max_new_tokens": n, "eos_token_id": optional}}
OUT: {"token_logps": [[log p(x_t | x_<t) for t = 1..len-1] per sequence], "logits_last": [[V floats] per
      sequence], "greedy": [[new ids] per prompt]}   (all float64; each sequence on its own, no padding)

Conventions: RoPE with the rotate_half layout (pairs (i, i + d/2)); sliding window: query i sees keys j with
0 <= i - j < window (the current transformers mask); greedy decoding takes the argmax and runs exactly max_new_tokens
steps unless eos_token_id (given in IN) is produced, which is kept and ends that prompt.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

F64 = torch.float64


class Config:
    """The fields the forward pass needs, from a 4.x or 5.x config.json."""

    def __init__(self, c):
        self.model_type = c["model_type"]
        if self.model_type not in ("llama", "mistral", "qwen2", "gpt2"):
            raise ValueError("unsupported model_type %r" % self.model_type)
        self.vocab = c["vocab_size"]
        if self.model_type == "gpt2":
            self.hidden = c["n_embd"]
            self.layers = c["n_layer"]
            self.heads = c["n_head"]
            self.kv_heads = self.heads
            self.head_dim = self.hidden // self.heads
            self.max_pos = c["n_positions"]
            self.eps = c.get("layer_norm_epsilon", 1e-5)
            self.act = c.get("activation_function", "gelu_new")
            self.tied = c.get("tie_word_embeddings", True)
            return
        self.hidden = c["hidden_size"]
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads") or self.heads
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.max_pos = c["max_position_embeddings"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.tied = c.get("tie_word_embeddings", False)
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        self.rope_type = rope.get("rope_type", rope.get("type", "default"))
        self.rope = rope
        self.theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        self.attention_bias = c.get("attention_bias", False)
        self.mlp_bias = c.get("mlp_bias", False)
        # Per-layer sliding window (0 = none).
        self.windows = [0] * self.layers
        if self.model_type == "mistral":
            w = c.get("sliding_window", 4096) if "sliding_window" in c else 4096
            self.windows = [w or 0] * self.layers
        elif self.model_type == "qwen2" and c.get("use_sliding_window", False):
            w = c.get("sliding_window") or 0
            first = c.get("max_window_layers", 28)
            self.windows = [w if i >= first else 0 for i in range(self.layers)]


def inv_freq(cfg):
    """(head_dim/2,) rotary frequencies in float64, as transformers' rope init functions define them."""
    d = cfg.head_dim
    base = torch.arange(0, d, 2, dtype=F64) / d
    f = 1.0 / (cfg.theta ** base)
    if cfg.rope_type == "default":
        return f
    factor = float(cfg.rope["factor"])
    if cfg.rope_type == "linear":
        return f / factor
    if cfg.rope_type == "llama3":
        lo, hi = float(cfg.rope["low_freq_factor"]), float(cfg.rope["high_freq_factor"])
        old = float(cfg.rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / f
        scaled = torch.where(wavelen > low_wavelen, f / factor, f)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError("unsupported rope type %r" % cfg.rope_type)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, pos, freqs):
    """x (heads, T, d), pos (T,) -> rotated x."""
    ang = pos.to(F64)[:, None] * freqs[None, :]  # (T, d/2)
    emb = torch.cat([ang, ang], dim=-1)  # (T, d)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def attention(q, k, v, window):
    """q (Hq, T, d), k/v (Hkv, T, d) -> (T, Hq*d); causal, optional sliding window, GQA by repeating kv heads."""
    hq, t, d = q.shape
    rep = hq // k.shape[0]
    k = k.repeat_interleave(rep, dim=0)  # query head h uses kv head h // rep
    v = v.repeat_interleave(rep, dim=0)
    s = q @ k.transpose(1, 2) / math.sqrt(d)  # (Hq, T, T)
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    allowed = j <= i
    if window:
        allowed = allowed & (i - j < window)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return (p @ v).transpose(0, 1).reshape(t, hq * d)


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x, kind):
    if kind in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if kind == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise ValueError("unsupported activation %r" % kind)


class Model:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = Config(json.load(f))
        raw = st_io.read_model_dir(model_dir)
        # GPT-2 checkpoints saved from GPT2Model lack the "transformer." prefix.
        self.w = {}
        for k, v in raw.items():
            if self.cfg.model_type == "gpt2" and not k.startswith("transformer.") and k != "lm_head.weight":
                k = "transformer." + k
            self.w[k] = v.to(F64)
        if self.cfg.model_type != "gpt2":
            self.freqs = inv_freq(self.cfg)

    def get(self, name, optional=False):
        if name in self.w:
            return self.w[name]
        if optional:
            return None
        raise KeyError("checkpoint has no tensor %s" % name)

    def linear(self, x, prefix, bias):
        y = x @ self.get(prefix + ".weight").T
        b = self.get(prefix + ".bias", optional=True)
        if bias and b is None:
            raise KeyError("checkpoint has no tensor %s.bias" % prefix)
        return y + b if bias else y

    def logits(self, ids):
        """ids: list of ints -> (T, V) float64 logits."""
        c = self.cfg
        if not ids:
            raise ValueError("empty sequence")
        if min(ids) < 0 or max(ids) >= c.vocab:
            raise ValueError("token id out of [0, %d)" % c.vocab)
        if len(ids) > c.max_pos:
            raise ValueError("sequence of %d tokens exceeds max positions %d" % (len(ids), c.max_pos))
        t = torch.tensor(ids)
        pos = torch.arange(len(ids))
        if c.model_type == "gpt2":
            return self._gpt2(t, pos)
        return self._llama(t, pos)

    def _llama(self, ids, pos):
        c = self.cfg
        T, d = len(ids), c.head_dim
        qkv_bias = c.model_type == "qwen2" or c.attention_bias
        o_bias = c.model_type != "qwen2" and c.attention_bias
        x = self.get("model.embed_tokens.weight")[ids]  # (T, H)
        for l in range(c.layers):
            p = "model.layers.%d." % l
            h = rms_norm(x, self.get(p + "input_layernorm.weight"), c.eps)
            q = self.linear(h, p + "self_attn.q_proj", qkv_bias).view(T, c.heads, d).transpose(0, 1)
            k = self.linear(h, p + "self_attn.k_proj", qkv_bias).view(T, c.kv_heads, d).transpose(0, 1)
            v = self.linear(h, p + "self_attn.v_proj", qkv_bias).view(T, c.kv_heads, d).transpose(0, 1)
            q, k = apply_rope(q, pos, self.freqs), apply_rope(k, pos, self.freqs)
            x = x + self.linear(attention(q, k, v, c.windows[l]), p + "self_attn.o_proj", o_bias)
            h = rms_norm(x, self.get(p + "post_attention_layernorm.weight"), c.eps)
            gate = self.linear(h, p + "mlp.gate_proj", c.mlp_bias)
            up = self.linear(h, p + "mlp.up_proj", c.mlp_bias)
            x = x + self.linear(gate * torch.sigmoid(gate) * up, p + "mlp.down_proj", c.mlp_bias)
        x = rms_norm(x, self.get("model.norm.weight"), c.eps)
        head = self.get("model.embed_tokens.weight") if c.tied else self.get("lm_head.weight")
        return x @ head.T

    def _gpt2(self, ids, pos):
        c = self.cfg
        T, H, d = len(ids), c.hidden, c.head_dim
        g = self.get
        x = g("transformer.wte.weight")[ids] + g("transformer.wpe.weight")[pos]
        for l in range(c.layers):
            p = "transformer.h.%d." % l
            h = layer_norm(x, g(p + "ln_1.weight"), g(p + "ln_1.bias"), c.eps)
            qkv = h @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")  # Conv1D: (T, 3H)
            q, k, v = (qkv[:, i * H:(i + 1) * H].reshape(T, c.heads, d).transpose(0, 1) for i in range(3))
            a = attention(q, k, v, 0)
            x = x + a @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
            h = layer_norm(x, g(p + "ln_2.weight"), g(p + "ln_2.bias"), c.eps)
            m = gelu(h @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias"), c.act)
            x = x + m @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
        x = layer_norm(x, g("transformer.ln_f.weight"), g("transformer.ln_f.bias"), c.eps)
        head = g("transformer.wte.weight") if c.tied else g("lm_head.weight")
        return x @ head.T

    def token_logps(self, ids):
        if len(ids) < 2:
            return []
        lp = torch.log_softmax(self.logits(ids)[:-1], dim=-1)  # (T-1, V)
        return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()

    def greedy(self, prompt, n, eos=None):
        seq, new = list(prompt), []
        for _ in range(n):
            nxt = int(torch.argmax(self.logits(seq)[-1]))
            new.append(nxt)
            seq.append(nxt)
            if eos is not None and nxt == eos:
                break
        return new


def run(model_dir, inp):
    m = Model(model_dir)
    out = {"token_logps": [], "logits_last": [], "greedy": []}
    for s in inp.get("sequences", []):
        out["token_logps"].append(m.token_logps(s))
        out["logits_last"].append(m.logits(s)[-1].tolist())
    gen = inp.get("generate")
    if gen:
        for p in gen["prompts"]:
            out["greedy"].append(m.greedy(p, int(gen["max_new_tokens"]), gen.get("eos_token_id")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.input) as f:
        inp = json.load(f)
    out = run(a.model, inp)
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
