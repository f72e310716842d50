"""The same forward pass as reference.py, computed by Hugging Face transformers itself (float64, eager attention):
the peer that torch-dpo's models must agree with. Needs a Python with torch and transformers (for example the Debian
sid chroot of scripts/check-sid.sh); the committed goldens under test/fixtures/transformers/ were written by it.

  python3 transformers_ref.py --model DIR --input IN.json --out OUT.json [--task causal-lm|score]

IN / OUT (causal-lm): as reference.py: {"sequences", "generate": {"prompts", "max_new_tokens", "eos_token_id"}} ->
     {"token_logps", "logits_last", "greedy", "versions"}. Greedy decoding is transformers' generate(do_sample=False)
     with exactly max_new_tokens new tokens unless eos_token_id is given (then it stops there, the EOS kept).
IN / OUT (score): {"sequences"} -> {"scores": [float per sequence], "versions"}: an
     AutoModelForSequenceClassification's logit at the last token of each sequence (num_labels 1).
"""
import argparse
import json

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

F64 = torch.float64


def load(cls, model_dir):
    model = cls.from_pretrained(model_dir, dtype=F64, attn_implementation="eager")
    model.eval()
    return model


def causal_lm(model_dir, inp):
    model = load(AutoModelForCausalLM, model_dir)
    out = {"token_logps": [], "logits_last": [], "greedy": []}
    with torch.no_grad():
        for seq in inp.get("sequences", []):
            ids = torch.tensor([seq], dtype=torch.long)
            logits = model(input_ids=ids).logits[0].to(F64)  # (T, V)
            logp = torch.log_softmax(logits, dim=-1)
            out["token_logps"].append(logp[:-1].gather(1, ids[0, 1:, None])[:, 0].tolist())
            out["logits_last"].append(logits[-1].tolist())
        gen = inp.get("generate")
        if gen:
            n = int(gen["max_new_tokens"])
            eos = gen.get("eos_token_id")
            for prompt in gen["prompts"]:
                ids = torch.tensor([prompt], dtype=torch.long)
                kwargs = dict(do_sample=False, max_new_tokens=n, num_beams=1, pad_token_id=0,
                              attention_mask=torch.ones_like(ids))
                if eos is None:
                    kwargs.update(eos_token_id=None, min_new_tokens=n)
                else:
                    kwargs.update(eos_token_id=int(eos))
                res = model.generate(ids, **kwargs)
                out["greedy"].append(res[0, len(prompt):].tolist())
    return out


def score(model_dir, inp):
    model = load(AutoModelForSequenceClassification, model_dir)
    scores = []
    with torch.no_grad():
        for seq in inp["sequences"]:
            ids = torch.tensor([seq], dtype=torch.long)
            scores.append(float(model(input_ids=ids).logits[0, 0]))
    return {"scores": scores}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="causal-lm", choices=["causal-lm", "score"])
    a = ap.parse_args()
    with open(a.input) as f:
        inp = json.load(f)
    out = causal_lm(a.model, inp) if a.task == "causal-lm" else score(a.model, inp)
    out["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
