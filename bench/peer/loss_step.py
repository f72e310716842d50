"""The Python peers of bench/loss_step.ts: the DPO loss alone (lm-head matmul + log-probs + sigmoid DPO loss,
forward + backward) on random inputs of the same shape, timed the way torch-dpo's lossBenchmark times its own.

Variants:
  naive    full (2P, T, V) logits, log_softmax in float32, gather, masked sum, DPO loss (what an eager PyTorch loop does)
  compile  the naive function under torch.compile (compile time reported separately, not in the step time)
  liger    Liger-Kernel's LigerFusedLinearDPOLoss (chunked, torch.compile'd), when liger_kernel is installed
Prints one JSON line: {"variant", "ms_median", "ms_min", "peak_bytes", "loss", "matmul_flop", "note"?}.

  python3 bench/peer/loss_step.py --variant naive [--pairs 4 --seq 1024 --prompt 0 --hidden 2048 --vocab 128256
      --iters 10 --warmup 3 --device cuda --dtype bfloat16 --seed 0]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def inputs(a, device, dtype):
    g = torch.Generator().manual_seed(a.seed)
    n = 2 * a.pairs
    hidden = torch.randn(n, a.seq, a.hidden, generator=g).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(a.vocab, a.hidden, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    labels = torch.randint(0, a.vocab, (n, a.seq), generator=g)
    labels[:, : a.prompt] = -100
    labels = labels.to(device)
    with torch.no_grad():
        ref = (naive_logps(hidden, weight, labels).float().cpu() + torch.randn(n, generator=g)).to(device)
    return hidden, weight, labels, ref


def naive_logps(hidden, weight, labels):
    logits = (hidden @ weight.t()).float()  # (N, T, V)
    logp = logits.log_softmax(-1)
    mask = labels != -100
    tok = logp.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(1)


def dpo(logps, ref, beta):
    p = logps.shape[0] // 2
    margin = (logps[:p] - ref[:p]) - (logps[p:] - ref[p:])
    return -F.logsigmoid(beta * margin).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True, choices=["naive", "compile", "liger"])
    for k, d in [("pairs", 4), ("seq", 1024), ("prompt", 0), ("hidden", 2048), ("vocab", 128256), ("iters", 10), ("warmup", 3), ("seed", 0), ("threads", 0)]:
        ap.add_argument("--" + k, type=int, default=d)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--beta", type=float, default=0.1)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    hidden, weight, labels, ref = inputs(a, device, dtype)
    out = {"variant": a.variant, "matmul_flop": 6.0 * 2 * a.pairs * (a.seq - a.prompt) * a.hidden * a.vocab}

    if a.variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss  # raises when Liger is not installed

        fn = LigerFusedLinearDPOLoss(beta=a.beta, use_ref_model=False)
        p = a.pairs
        try:  # recent Liger takes precomputed reference log-probs
            fn(weight, hidden, labels, None, ref_chosen_logps=ref[:p], ref_rejected_logps=ref[p:])
            call = lambda: fn(weight, hidden, labels, None, ref_chosen_logps=ref[:p], ref_rejected_logps=ref[p:])
        except TypeError:  # older releases: no such arguments; reference-free (the same work)
            call = lambda: fn(weight, hidden, labels, None)
            out["note"] = "this Liger takes no reference log-probs: reference-free"

        def loss_fn():
            r = call()
            return r[0] if isinstance(r, tuple) else r
    else:
        f = lambda: dpo(naive_logps(hidden, weight, labels), ref, a.beta)
        if a.variant == "compile":
            f = torch.compile(f)
            t0 = time.perf_counter()
            f().backward()
            sync()
            out["compile_s"] = time.perf_counter() - t0
        loss_fn = f

    def one():
        hidden.grad = None
        weight.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    for _ in range(a.warmup):
        one()
    sync()
    hidden.grad = weight.grad = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    ms = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        loss = one()
        sync()
        ms.append((time.perf_counter() - t0) * 1000)
    out.update(ms_median=sorted(ms)[len(ms) // 2], ms_min=min(ms), loss=float(loss),
               peak_bytes=(torch.cuda.max_memory_allocated(device) - before) if cuda else 0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
