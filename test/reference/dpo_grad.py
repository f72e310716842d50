"""Independent float64 DPO gradient: the sigmoid DPO loss of a batch of pairs, through reference.py's float64
forward pass with torch autograd, compared with the weight change of one SGD step (lr 1, no clipping) that
torch-dpo made, which must equal minus the gradient.

  /usr/bin/python3 dpo_grad.py --policy INIT_DIR --reference REF_DIR --pairs PAIRS.jsonl --after TRAINED_DIR
      --beta B [--loss sigmoid|ipo|hinge] [--label-smoothing E]

Reference-free losses (no --reference needed), each plus --alpha times the chosen completions' NLL per token
(Σ_p −log π(y_w) / Σ_p n_w, the same for the whole batch):
  --loss orpo  --lambda L : −L log σ(log odds(ℓ̄_w) − log odds(ℓ̄_l)), odds(ℓ̄) = p/(1−p), p = exp(ℓ̄), ℓ̄ = log π / n
  --loss simpo --gamma G  : −(1−ε) log σ(z) − ε log σ(−z), z = β(ℓ̄_w − ℓ̄_l) − G
  --loss cpo              : −(1−ε) log σ(z) − ε log σ(−z), z = β(log π(y_w) − log π(y_l))
  --loss sft              : the NLL term only

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
    p.add_argument("--reference")
    p.add_argument("--pairs", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--loss", default="sigmoid", choices=["sigmoid", "ipo", "hinge", "orpo", "simpo", "cpo", "sft"])
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="ORPO's λ")
    p.add_argument("--gamma", type=float, default=0.5, help="SimPO's γ")
    p.add_argument("--alpha", type=float, default=None, help="weight of the NLL term (default 1 for orpo/sft, else 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1.0)
    a = p.parse_args()
    with open(a.pairs) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    pol = reference.Model(a.policy)
    for v in pol.w.values():
        v.requires_grad_(True)
    if a.loss in ("orpo", "simpo", "cpo", "sft"):
        total = reference_free_loss(a, pol, pairs)
    else:
        total = reference_loss(a, pol, pairs)
    total.backward()
    report(a, pol, total)


def odds_log(avg):
    """log(p / (1 − p)) for p = exp(avg), written plainly in float64."""
    p = torch.exp(avg)
    return torch.log(p / (1 - p))


def reference_free_loss(a, pol, pairs):
    F = torch.nn.functional
    alpha = a.alpha if a.alpha is not None else (1.0 if a.loss in ("orpo", "sft") else 0.0)
    eps = a.label_smoothing
    losses, nll_num, nll_den = [], 0, 0
    for e in pairs:
        pc = seq_logp(pol, e["prompt_ids"], e["chosen_ids"])
        pr = seq_logp(pol, e["prompt_ids"], e["rejected_ids"])
        nw, nl = max(len(e["chosen_ids"]), 1), max(len(e["rejected_ids"]), 1)
        nll_num = nll_num - pc
        nll_den += len(e["chosen_ids"])
        if a.loss == "orpo":
            losses.append(-a.lam * F.logsigmoid(odds_log(pc / nw) - odds_log(pr / nl)))
        elif a.loss == "simpo":
            z = a.beta * (pc / nw - pr / nl) - a.gamma
            losses.append(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z))
        elif a.loss == "cpo":
            z = a.beta * (pc - pr)
            losses.append(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z))
    total = torch.stack(losses).mean() if losses else torch.zeros((), dtype=torch.float64)
    return total + alpha * nll_num / max(nll_den, 1)


def reference_loss(a, pol, pairs):
    if a.reference is None:
        raise SystemExit("--reference is needed for --loss %s" % a.loss)
    ref = reference.Model(a.reference)
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
    return torch.stack(losses).mean()


def report(a, pol, total):
    after = {k: v.to(torch.float64) for k, v in st_io.read_model_dir(a.after).items()}
    print(json.dumps({"loss": total.item(), **step_error(pol.w, after, a.lr)}))


def step_error(weights, after, lr, skip=()):
    """How far one SGD step (after = before - lr * g) is from the autograd gradients g of `weights` (name -> leaf
    tensor holding .grad, still at the values before the step); `after`: name -> float64 trained tensor."""
    num = 0.0
    den = 0.0
    worst, worst_err = None, 0.0
    for k, v in weights.items():
        if k in skip:
            continue
        if k not in after:
            raise SystemExit("trained checkpoint lacks %s" % k)
        g = v.grad if v.grad is not None else torch.zeros_like(v)
        step = -(after[k] - v.detach()) / lr
        d = (step - g).norm().item()
        num += d * d
        den += g.norm().item() ** 2
        rel = d / max(g.norm().item(), 1e-30)
        if g.norm().item() > 1e-8 and rel > worst_err:
            worst, worst_err = k, rel
    return {"rel_err": math.sqrt(num) / max(math.sqrt(den), 1e-30), "max_tensor_rel_err": worst_err, "worst": worst,
            "grad_norm": math.sqrt(den)}

if __name__ == "__main__":
    main()
