"""Independent float64 DPO gradient: the sigmoid DPO loss of a batch of pairs, through reference.py's float64
forward pass with torch autograd, compared with the weight change of one SGD step (lr 1, no clipping) that
torch-dpo made, which must equal minus the gradient.

  /usr/bin/python3 dpo_grad.py --policy INIT_DIR --reference REF_DIR --pairs PAIRS.jsonl --after TRAINED_DIR
      --beta B [--loss sigmoid|ipo|hinge] [--label-smoothing E]

PAIRS.jsonl: one {"prompt_ids", "chosen_ids", "rejected_ids"} per line (as `torch-dpo tokenize` prints them).
Prints one JSON object: {"loss": float64 loss, "rel_err": |Δ + lr·g| / |g| over all weights, "max_tensor_rel_err",
"worst": name}.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import st_io  # noqa: E402


def seq_logp(model, prompt, completion):
    ids = prompt + completion
    lp = torch.log_softmax(model.logits(ids)[:-1], dim=-1)  # (T-1, V)
    tgt = torch.tensor(ids[1:])
    per = lp[torch.arange(len(ids) - 1), tgt]
    return per[len(prompt) - 1:].sum()  # completion tokens only


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--pairs", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--loss", default="sigmoid", choices=["sigmoid", "ipo", "hinge"])
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1.0)
    a = p.parse_args()
    with open(a.pairs) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    pol = reference.Model(a.policy)
    ref = reference.Model(a.reference)
    for v in pol.w.values():
        v.requires_grad_(True)
    losses = []
    with torch.no_grad():
        ref_lp = [(seq_logp(ref, e["prompt_ids"], e["chosen_ids"]), seq_logp(ref, e["prompt_ids"], e["rejected_ids"])) for e in pairs]
    for e, (rc, rr) in zip(pairs, ref_lp):
        pc = seq_logp(pol, e["prompt_ids"], e["chosen_ids"])
        pr = seq_logp(pol, e["prompt_ids"], e["rejected_ids"])
        h = (pc - rc) - (pr - rr)
        if a.loss == "sigmoid":
            eps = a.label_smoothing
            loss = -(1 - eps) * torch.nn.functional.logsigmoid(a.beta * h) - eps * torch.nn.functional.logsigmoid(-a.beta * h)
        elif a.loss == "hinge":
            loss = torch.relu(1 - a.beta * h)
        else:  # ipo: length-normalised log-ratios
            hc = (pc - rc) / len(e["chosen_ids"])
            hr = (pr - rr) / len(e["rejected_ids"])
            loss = (hc - hr - 1 / (2 * a.beta)) ** 2
        losses.append(loss)
    total = torch.stack(losses).mean()
    total.backward()
    before = {k: v.detach() for k, v in pol.w.items()}
    after = {k: v.to(torch.float64) for k, v in st_io.read_model_dir(a.after).items()}
    num = 0.0
    den = 0.0
    worst, worst_err = None, 0.0
    for k, v in pol.w.items():
        if k not in after:
            raise SystemExit("trained checkpoint lacks %s" % k)
        g = v.grad if v.grad is not None else torch.zeros_like(v)
        step = -(after[k] - before[k]) / a.lr  # SGD: after = before - lr * g
        d = (step - g).norm().item()
        num += d * d
        den += g.norm().item() ** 2
        rel = d / max(g.norm().item(), 1e-30)
        if g.norm().item() > 1e-8 and rel > worst_err:
            worst, worst_err = k, rel
    print(json.dumps({"loss": total.item(), "rel_err": math.sqrt(num) / max(math.sqrt(den), 1e-30),
                      "max_tensor_rel_err": worst_err, "worst": worst, "grad_norm": math.sqrt(den)}))


if __name__ == "__main__":
    main()
