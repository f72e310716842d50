"""The Python PyTorch peer of bench/cpu_step.ts: the same Llama checkpoint and the same pre-tokenized pairs, trained
by a DPO step written the usual eager way (transformers-style modules, full logits -> log_softmax -> gather, cached
reference log-probs, torch.optim.AdamW). Prints one JSON line: {"ms_per_step", "tokens_per_second", "peak_rss_mib"}.

  /usr/bin/python3 bench/peer/llama_dpo_step.py --model DIR --pairs PAIRS.jsonl --batch-size B --steps N --warmup W --threads K
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "reference"))
import st_io  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, self.nh, self.nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c.get("head_dim") or h // self.nh
        self.q_proj = nn.Linear(h, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, h, bias=False)
        i = c["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        self.input_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(h, c["rms_norm_eps"])

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(y).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(y).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / self.hd ** 0.5 + mask
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o_proj(o)
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        if c.get("tie_word_embeddings"):
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids, attn):
        B, T = ids.shape
        hd = self.layers[0].hd
        pos = (attn.cumsum(-1) - 1).clamp(min=0).to(torch.float32)
        inv = 1.0 / (self.c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = pos[..., None] * inv  # (B, T, hd/2)
        emb = torch.cat((ang, ang), -1)[:, None]  # (B, 1, T, hd)
        cos, sin = emb.cos(), emb.sin()
        causal = torch.full((T, T), float("-inf")).triu(1)
        mask = causal[None, None] + torch.where(attn[:, None, None, :] > 0, 0.0, float("-inf"))
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))  # (B, T, V): the full logits, as TRL's default path


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    m = Llama(c)
    w = st_io.read_model_dir(model_dir)
    sd = {}
    for k, v in w.items():
        sd[k.replace("model.", "", 1).replace("self_attn.", "").replace("mlp.", "")] = v.float()
    if c.get("tie_word_embeddings"):
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    m.load_state_dict(sd)
    return m


def collate(pairs, pad):
    rows = [p["prompt_ids"] + p["chosen_ids"] for p in pairs] + [p["prompt_ids"] + p["rejected_ids"] for p in pairs]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        P = len(pairs[i % len(pairs)]["prompt_ids"])
        labels[i, P - 1 : len(r) - 1] = torch.tensor(r[P:])
    return ids, attn, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--beta", type=float, default=0.1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load(a.model)
    with open(a.pairs) as f:
        pairs = [json.loads(l) for l in f if l.strip()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    B = a.batch_size
    times, tokens = [], 0
    for step in range(a.warmup + a.steps):
        batch = [pairs[(step * B + i) % len(pairs)] for i in range(B)]
        ids, attn, labels = collate(batch, 0)
        ref = torch.zeros(2 * B)  # cached reference log-probs (values do not change the cost)
        t0 = time.perf_counter()
        logits = model(ids, attn)
        lp = logits.float().log_softmax(-1)
        mask = labels != -100
        per = lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * mask
        seq = per.sum(-1)
        h = (seq[:B] - ref[:B]) - (seq[B:] - ref[B:])
        loss = -F.logsigmoid(a.beta * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
            tokens += int(attn.sum())
    ms = 1000 * sorted(times)[len(times) // 2]
    print(json.dumps({"ms_per_step": ms, "tokens_per_second": tokens / sum(times),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
