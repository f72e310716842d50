"""The Python peers of bench/gpu_step.ts: one DPO training step written the way a transformers + PyTorch user runs it
today (this project's own code, following TRL's DPO semantics), on the same checkpoint, pairs, dtype and device.
Variants (--variant):
  ref-forward  the reference model runs a no-grad forward every step (TRL's default)
  cached       reference log-probs computed once before training (TRL's precompute_ref_log_probs), eager
  liger        cached + Liger's fused linear DPO loss (liger_kernel), when installed
  compile      cached + torch.compile(model) (the compile time is reported, not counted in the step time)
Prints one JSON line: {"variant", "ms_per_step", "tokens_per_second", "peak_above_weights_gib", "first_step_s",
"precompute_tokens_per_second", "loss_first", "error"?}.

  python3 bench/peer/hf_dpo_step.py --model DIR --pairs PAIRS.jsonl --variant cached [--batch-size 4 --steps 10
      --warmup 3 --device cuda --dtype bfloat16 --beta 0.1 --lr 1e-6 --threads N]
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def read_pairs(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def make_batch(pairs, device):
    """Chosen rows then rejected rows, right-padded; labels -100 on the prompt and padding (already not shifted)."""
    seqs, labels = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            ids = p["prompt_ids"] + p[key]
            seqs.append(ids)
            labels.append([-100] * len(p["prompt_ids"]) + p[key])
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    lab = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        lab[i, : len(l)] = torch.tensor(l)
    return ids.to(device), mask.to(device), lab.to(device)


def sequence_logps(logits, labels):
    """Sum over completion tokens of log p(label); one row at a time in float32 (as TRL does for half precision)."""
    labels = labels[:, 1:]
    logits = logits[:, :-1]
    out = []
    for row_logits, row_labels in zip(logits, labels):
        keep = row_labels != -100
        lp = torch.log_softmax(row_logits.float(), dim=-1)
        tok = lp.gather(-1, row_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.append((tok * keep).sum())
    return torch.stack(out)


def dpo_loss(policy, ref, beta):
    B = policy.shape[0] // 2
    logits = beta * ((policy[:B] - ref[:B]) - (policy[B:] - ref[B:]))
    return -F.logsigmoid(logits).mean()


def liger_step(model, ids, mask, lab, ref, beta):
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss  # raises when Liger is not installed

    loss_fn = getattr(model, "_liger_dpo", None)
    if loss_fn is None:
        loss_fn = model._liger_dpo = LigerFusedLinearDPOLoss(beta=beta, use_ref_model=False)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = lab[:, 1:]
    B = ids.shape[0] // 2
    out = loss_fn(model.lm_head.weight, hidden, target, None, ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:])
    return out[0] if isinstance(out, tuple) else out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--variant", required=True, choices=["ref-forward", "cached", "liger", "compile"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    dtype = getattr(torch, a.dtype)
    result = {"variant": a.variant}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def mem():
        return torch.cuda.memory_allocated() if cuda else 0

    try:
        pairs = read_pairs(a.pairs)
        batches = [pairs[i: i + a.batch_size] for i in range(0, len(pairs) - a.batch_size + 1, a.batch_size)]
        t_load = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(a.device)
        weights = mem()
        ref_model = None
        cached = []
        if a.variant == "ref-forward":
            ref_model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(a.device)
            ref_model.eval()
            weights = mem()
        else:
            sync()
            t0 = time.perf_counter()
            tokens = 0
            with torch.no_grad():
                for b in batches:
                    ids, mask, lab = make_batch(b, a.device)
                    cached.append(sequence_logps(model(input_ids=ids, attention_mask=mask).logits, lab))
                    tokens += int(mask.sum())
            sync()
            result["precompute_tokens_per_second"] = tokens / (time.perf_counter() - t0)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, fused=cuda)
        fwd = torch.compile(model) if a.variant == "compile" else model
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(a.warmup + a.steps):
            k = step % len(batches)
            ids, mask, lab = make_batch(batches[k], a.device)
            sync()
            t0 = time.perf_counter()
            if ref_model is not None:
                with torch.no_grad():
                    ref = sequence_logps(ref_model(input_ids=ids, attention_mask=mask).logits, lab)
            else:
                ref = cached[k]
            if a.variant == "liger":
                loss = liger_step(model, ids, mask, lab, ref, a.beta)
            else:
                loss = dpo_loss(sequence_logps(fwd(input_ids=ids, attention_mask=mask).logits, lab), ref, a.beta)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            dt = time.perf_counter() - t0
            if step == 0:
                result["first_step_s"] = time.perf_counter() - t_load
                result["loss_first"] = float(loss)
            if step >= a.warmup:
                times.append((dt, int(mask.sum())))
        ms = statistics.median(t for t, _ in times) * 1000
        result["ms_per_step"] = ms
        result["tokens_per_second"] = sum(n for _, n in times) / sum(t for t, _ in times)
        if cuda:
            result["peak_above_weights_gib"] = (torch.cuda.max_memory_allocated() - weights) / 2**30
        else:
            result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception as e:  # reported in the table, e.g. Liger not installed
        result["error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
