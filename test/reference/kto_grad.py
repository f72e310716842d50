"""Independent float64 KTO gradient: the KTO loss of ONE batch of unpaired examples through reference.py's float64
forward pass with torch autograd, compared with the weight change of one SGD step (lr 1, no clipping) that
torch-dpo made, which must equal minus the gradient.

  /usr/bin/python3 kto_grad.py --policy INIT_DIR --reference REF_DIR --examples EX.jsonl --after TRAINED_DIR
      --beta B [--desirable-weight WD] [--undesirable-weight WU] [--max-length L]

EX.jsonl: one {"prompt_ids", "completion_ids", "label"} per line, in batch order. The KL estimate pairs prompt i
with completion i-1 (mod N), cut to max_length - len(prompt) tokens (at least 1):
  z0 = max(0, mean_i(log π(c_{i-1}|x_i) − log πref(c_{i-1}|x_i))), detached
  loss = mean_i w_i (1 − σ(β(Δ_i − z0))) for desirable i, w_i (1 − σ(β(z0 − Δ_i))) for undesirable i.
Prints {"loss", "kl", "rel_err", "max_tensor_rel_err", "worst", "grad_norm"} (see dpo_grad.py).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpo_grad  # noqa: E402
import reference  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--desirable-weight", type=float, default=1.0)
    p.add_argument("--undesirable-weight", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1.0)
    a = p.parse_args()
    with open(a.examples) as f:
        ex = [json.loads(line) for line in f if line.strip()]
    n = len(ex)
    pol = reference.Model(a.policy)
    ref = reference.Model(a.reference)
    for v in pol.w.values():
        v.requires_grad_(True)
    kl_pairs = []
    for i, e in enumerate(ex):
        room = max(1, a.max_length - len(e["prompt_ids"]))
        kl_pairs.append((e["prompt_ids"], ex[(i - 1) % n]["completion_ids"][:room]))
    with torch.no_grad():
        kl = torch.stack([dpo_grad.seq_logp(pol, pr, c) - dpo_grad.seq_logp(ref, pr, c) for pr, c in kl_pairs]).mean()
        z0 = max(0.0, kl.item())
        ref_lp = [dpo_grad.seq_logp(ref, e["prompt_ids"], e["completion_ids"]) for e in ex]
    losses = []
    for e, r in zip(ex, ref_lp):
        d = dpo_grad.seq_logp(pol, e["prompt_ids"], e["completion_ids"]) - r
        if e["label"]:
            losses.append(a.desirable_weight * (1 - torch.sigmoid(a.beta * (d - z0))))
        else:
            losses.append(a.undesirable_weight * (1 - torch.sigmoid(a.beta * (z0 - d))))
    total = torch.stack(losses).mean()
    total.backward()
    print(json.dumps({"kl": z0}))
    dpo_grad.report(a, pol, total)


if __name__ == "__main__":
    main()
