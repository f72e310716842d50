"""Tests of the float64 reference itself against values derived by hand or by a second, differently written
numpy implementation. Run: /usr/bin/python3 test/reference/selfcheck.py  (exit status 0 = all passed, < 10 s)."""
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixture  # noqa: E402
import reference  # noqa: E402
import st_io  # noqa: E402

FAILED = []


def check(name, got, want, tol=1e-10):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    ok = got.shape == want.shape and err <= tol * (1.0 + float(np.max(np.abs(want))) if want.size else 1.0)
    print("%-58s %s (max abs err %.3g)" % (name, "ok" if ok else "FAILED", err))
    if not ok:
        FAILED.append(name)


def fixture(tmp, name, args, edit=None):
    out = os.path.join(tmp, name)
    make_fixture.make(["--out", out] + args)
    if edit:
        path = os.path.join(out, "model.safetensors")
        tensors, meta, names = st_io.read_file(path)
        edit(tensors)
        st_io.write_file(path, [(n, tensors[n]) for n in names], meta)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    w = {k: v.double().numpy() for k, v in st_io.read_file(os.path.join(out, "model.safetensors"))[0].items()}
    return out, cfg, w


def np_rms(x, w, eps):
    return np.stack([row / math.sqrt(sum(v * v for v in row) / len(row) + eps) for row in x]) * w


def np_ln(x, w, b, eps):
    out = []
    for row in x:
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out.append((row - mu) / math.sqrt(var + eps))
    return np.stack(out) * w + b


def zero(names):
    def edit(t):
        for k in list(t):
            if any(n in k for n in names):
                t[k] = torch.zeros_like(t[k])
    return edit


def main():
    ids = [5, 17, 3, 88, 42, 17]
    with tempfile.TemporaryDirectory() as tmp:
        # 1. Llama with attention and MLP outputs zeroed: logits = rmsnorm(embed[ids]) @ lm_head^T.
        d, cfg, w = fixture(tmp, "llama0", ["--arch", "llama", "--layers", "1"], zero(["o_proj", "down_proj"]))
        want = np_rms(w["model.embed_tokens.weight"][ids], w["model.norm.weight"], cfg["rms_norm_eps"]) @ \
            w["lm_head.weight"].T
        check("llama, zeroed blocks: logits = norm(embed) @ lm_head^T", reference.Model(d).logits(ids), want)

        # 2. Tied qwen2 (qkv biases present), zeroed blocks: the head is the embedding.
        d, cfg, w = fixture(tmp, "qwen0", ["--arch", "qwen2", "--layers", "1", "--tied"], zero(["o_proj", "down_proj"]))
        e = w["model.embed_tokens.weight"]
        want = np_rms(e[ids], w["model.norm.weight"], cfg["rms_norm_eps"]) @ e.T
        check("qwen2 tied, zeroed blocks: logits = norm(embed) @ embed^T", reference.Model(d).logits(ids), want)

        # 3. GPT-2 with attention/MLP output projections zeroed: logits = ln_f(wte[ids] + wpe[pos]) @ wte^T.
        d, cfg, w = fixture(tmp, "gpt0", ["--arch", "gpt2", "--layers", "1", "--tied"], zero(["c_proj"]))
        x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][: len(ids)]
        want = np_ln(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], 1e-5) @ w["transformer.wte.weight"].T
        check("gpt2 tied, zeroed blocks: logits = ln_f(wte + wpe) @ wte^T", reference.Model(d).logits(ids), want)

        # 4. A one-token sequence: attention returns v, RoPE at position 0 is the identity (llama, GQA, biases).
        d, cfg, w = fixture(tmp, "llama1", ["--arch", "llama", "--layers", "1", "--attention-bias", "--mlp-bias"],
                            zero(["down_proj"]))
        p = "model.layers.0."
        x = w["model.embed_tokens.weight"][[7]]
        h = np_rms(x, w[p + "input_layernorm.weight"], 1e-5)
        v = h @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]  # (1, kv*d)
        kvh, hd = cfg["num_key_value_heads"], cfg["head_dim"]
        rep = cfg["num_attention_heads"] // kvh
        attn = np.concatenate([v[:, (hq // rep) * hd:(hq // rep + 1) * hd] for hq in range(cfg["num_attention_heads"])], 1)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T + w[p + "self_attn.o_proj.bias"] + w[p + "mlp.down_proj.bias"]
        want = np_rms(x, w["model.norm.weight"], 1e-5) @ w["lm_head.weight"].T
        check("llama one token: attention = v (GQA head map), biases", reference.Model(d).logits([7]), want)

        # 5. Full attention against a second implementation: per-head loops, RoPE as complex rotation of the pairs
        #    (i, i + d/2), explicit window test; mistral with a window of 3 and a zeroed MLP.
        for arch, extra in (("mistral", ["--sliding-window", "3"]), ("llama", ["--rope-scaling", "llama3"]),
                            ("llama", ["--rope-scaling", "linear", "--transformers", "5"])):
            d, cfg, w = fixture(tmp, "att-" + arch + extra[1], ["--arch", arch, "--layers", "1"] + extra,
                                zero(["down_proj"]))
            m = reference.Model(d)
            freqs = m.freqs.numpy()
            eps = cfg["rms_norm_eps"]
            win = cfg.get("sliding_window") or 0
            x = w["model.embed_tokens.weight"][ids]
            h = np_rms(x, w[p + "input_layernorm.weight"], eps)
            q, k, v = (h @ w[p + "self_attn.%s_proj.weight" % n].T for n in "qkv")
            nh, kvh, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

            def rot(vec, pos):
                z = (vec[: hd // 2] + 1j * vec[hd // 2:]) * np.exp(1j * pos * freqs)
                return np.concatenate([z.real, z.imag])
            out = np.zeros((len(ids), nh * hd))
            for hq in range(nh):
                kv = hq // (nh // kvh)
                for i in range(len(ids)):
                    qi = rot(q[i, hq * hd:(hq + 1) * hd], i)
                    js = [j for j in range(i + 1) if not win or i - j < win]
                    s = np.array([qi @ rot(k[j, kv * hd:(kv + 1) * hd], j) / math.sqrt(hd) for j in js])
                    pr = np.exp(s - s.max())
                    pr /= pr.sum()
                    out[i, hq * hd:(hq + 1) * hd] = sum(pr[n] * v[j, kv * hd:(kv + 1) * hd] for n, j in enumerate(js))
            x = x + out @ w[p + "self_attn.o_proj.weight"].T
            want = np_rms(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T
            check("%s %s: attention vs per-head complex-RoPE numpy" % (arch, " ".join(extra)), m.logits(ids), want)

        # 6. llama3 rope frequencies by hand: head_dim 8, theta 1e4 -> base 1, .1, .01, .001; factor 8,
        #    low/high 1/4, original 64 -> wavelengths 2pi/f: 6.28 (< 16 keep), 62.8 (smooth), 628 and 6283 (/ 8).
        s = (64 / (2 * math.pi / 0.1) - 1.0) / (4.0 - 1.0)
        want = [1.0, (1 - s) * 0.1 / 8 + s * 0.1, 0.01 / 8, 0.001 / 8]
        d, _, _ = fixture(tmp, "rope3", ["--arch", "llama", "--layers", "1", "--rope-scaling", "llama3"])
        check("llama3 inv_freq by hand", reference.Model(d).freqs, want, 1e-15)
        d, _, _ = fixture(tmp, "ropel", ["--arch", "llama", "--layers", "1", "--rope-scaling", "linear"])
        check("linear inv_freq by hand", reference.Model(d).freqs, [1.0 / 2, 0.1 / 2, 0.01 / 2, 0.001 / 2], 1e-15)

        # 7. gelu_new by hand at a few points; token_logps = log_softmax of the logits; greedy = argmax chain.
        xs = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], dtype=torch.float64)
        want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in xs.tolist()]
        check("gelu_new by hand", reference.gelu(xs, "gelu_new"), want, 1e-15)
        d, _, _ = fixture(tmp, "gpt1", ["--arch", "gpt2"])
        m = reference.Model(d)
        lg = m.logits(ids).numpy()
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        check("token_logps = logit - logsumexp", m.token_logps(ids), [lg[t, ids[t + 1]] - lse[t] for t in range(5)])
        new = m.greedy(ids[:2], 3)
        chain = [int(np.argmax(m.logits(ids[:2] + new[:i]).numpy()[-1])) for i in range(3)]
        check("greedy = argmax chain", new, chain, 0)

        # 8. Shards read back equal to one file.
        a, _, _ = fixture(tmp, "one", ["--arch", "qwen2", "--seed", "9"])
        make_fixture.make(["--arch", "qwen2", "--seed", "9", "--shards", "4", "--out", os.path.join(tmp, "four")])
        check("4 shards give the same logits as one file", reference.Model(os.path.join(tmp, "four")).logits(ids),
              reference.Model(a).logits(ids), 0)
    if FAILED:
        print("FAILED:", ", ".join(FAILED))
        sys.exit(1)
    print("all reference self-checks passed")


if __name__ == "__main__":
    main()
