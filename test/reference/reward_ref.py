"""Independent float64 Bradley–Terry reward model: rewards, loss and gradient of a …ForSequenceClassification
checkpoint, through reference.py's float64 forward pass with torch autograd.

  /usr/bin/python3 reward_ref.py --model DIR --pairs PAIRS.jsonl [--center C] [--margins m1,m2,...]
      [--after TRAINED_DIR [--lr LR]]

The reward of a sequence is score.weight · h_T, h_T the final normed hidden state of its last token: reference.py's
forward with the (1, H) score matrix in place of the lm-head gives exactly that, (T, 1) "logits".
loss = mean_p −log σ(r(x, y_w) − r(x, y_l) − m_p) + C · mean_p (r_w + r_l)^2.
With --after, the weight change of one SGD step (lr, no clipping) that torch-dpo made from DIR to TRAINED_DIR must
equal −lr · gradient: rel_err = |Δ + lr·g| / |g| over all weights.

PAIRS.jsonl: one {"prompt_ids", "chosen_ids", "rejected_ids"} per line (as `torch-dpo tokenize` prints them).
Prints one JSON object: {"loss", "chosen": [...], "rejected": [...], and with --after "rel_err",
"max_tensor_rel_err", "worst", "grad_norm"}.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpo_grad  # noqa: E402
import reference  # noqa: E402
import st_io  # noqa: E402


def load_reward_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise SystemExit("%s: not a ForSequenceClassification checkpoint (architectures %r)" % (model_dir, archs))
    if len(cfg.get("id2label", {"0": "x"})) != 1:
        raise SystemExit("%s: expected one label" % model_dir)
    m = reference.Model(model_dir)
    if "score.weight" not in m.w:
        raise SystemExit("%s: no score.weight" % model_dir)
    if "lm_head.weight" in m.w:
        raise SystemExit("%s: a reward checkpoint must not hold lm_head.weight" % model_dir)
    # The forward's output head becomes the score head: logits (T, 1) = rewards at every position.
    m.cfg.tied = False
    m.w["lm_head.weight"] = m.w["score.weight"]
    return m


def reward(model, ids):
    return model.logits(ids)[-1, 0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--pairs", required=True)
    p.add_argument("--center", type=float, default=0.0)
    p.add_argument("--margins", default="")
    p.add_argument("--after")
    p.add_argument("--lr", type=float, default=1.0)
    a = p.parse_args()
    with open(a.pairs) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    margins = [float(x) for x in a.margins.split(",")] if a.margins else [0.0] * len(pairs)
    if len(margins) != len(pairs):
        raise SystemExit("%d margins for %d pairs" % (len(margins), len(pairs)))
    m = load_reward_model(a.model)
    for v in m.w.values():
        v.requires_grad_(True)
    rc = torch.stack([reward(m, e["prompt_ids"] + e["chosen_ids"]) for e in pairs])
    rr = torch.stack([reward(m, e["prompt_ids"] + e["rejected_ids"]) for e in pairs])
    z = rc - rr - torch.tensor(margins, dtype=torch.float64)
    loss = -torch.nn.functional.logsigmoid(z).mean()
    if a.center > 0:
        loss = loss + a.center * ((rc + rr) ** 2).mean()
    out = {"loss": loss.item(), "chosen": rc.tolist(), "rejected": rr.tolist()}
    if a.after:
        loss.backward()
        out.update(compare_step(m, a.after, a.lr))
    print(json.dumps(out))


def compare_step(m, after_dir, lr):
    after = {k: v.to(torch.float64) for k, v in st_io.read_model_dir(after_dir).items()}
    err = dpo_grad.step_error(m.w, after, lr, skip={"lm_head.weight"})  # lm_head here is the alias of score.weight
    extra = sorted(set(after) - set(m.w))
    if extra:
        raise SystemExit("trained checkpoint has unexpected tensors %s" % extra)
    return err

if __name__ == "__main__":
    main()
