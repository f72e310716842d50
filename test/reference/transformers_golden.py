"""Writes the transformers goldens that test/ts/transformers.test.ts checks torch-dpo against in every CI run:
for each fixture checkpoint under test/fixtures/transformers/<name>/ (created with make_fixture.py when missing, then
committed), transformers' float64 token log-probs, last logits and greedy tokens (transformers_ref.py) in
<name>/golden.json; and transformers' tokenizer outputs for the tokenizer fixtures (transformers_tok.py) in
tokenizers.json. Run it where transformers is installed (scripts/check-sid.sh --regenerate-goldens does).

  python3 test/reference/transformers_golden.py [--root REPO]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> make_fixture.py arguments: every architecture, GQA with one KV head, tied and untied heads, both RoPE
# scalings, explicit head_dim, q/k/v and MLP bias, a sliding window shorter than the sequences, bf16 / f16 storage,
# a sharded checkpoint, and both config layouts (transformers 4.x and 5.x).
FIXTURES = {
    "llama-gqa1-llama3rope": ["--arch", "llama", "--kv-heads", "1", "--rope-scaling", "llama3", "--seed", "11"],
    "llama-tied-linear-bias-hd16": ["--arch", "llama", "--tied", "--rope-scaling", "linear", "--attention-bias",
                                    "--mlp-bias", "--head-dim", "16", "--transformers", "5", "--seed", "12"],
    "mistral-window4": ["--arch", "mistral", "--sliding-window", "4", "--seed", "13"],
    "qwen2-tied-bf16-sharded": ["--arch", "qwen2", "--tied", "--dtype", "bfloat16", "--shards", "3", "--kv-heads", "1",
                                "--transformers", "5", "--seed", "14"],
    "gpt2": ["--arch", "gpt2", "--seed", "15"],
    "gpt2-f16": ["--arch", "gpt2", "--dtype", "float16", "--transformers", "5", "--seed", "16"],
}

# Mixed lengths (the test runs them as one padded batch; transformers ran each alone).
SEQUENCES = [[3, 17, 42, 8, 91, 5, 60], [11, 2], [7, 7, 7, 30, 64, 12, 1, 0, 95, 44, 18], [50, 51, 52, 53, 54]]
GENERATE = {"prompts": [[3, 17, 42], [7, 7, 7, 30, 64], [9]], "max_new_tokens": 8}


def run(args):
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (" ".join(args), r.stderr))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(HERE)))
    a = ap.parse_args()
    base = os.path.join(a.root, "test", "fixtures", "transformers")
    os.makedirs(base, exist_ok=True)
    for name, args in FIXTURES.items():
        d = os.path.join(base, name)
        if not os.path.exists(os.path.join(d, "config.json")):
            run([os.path.join(HERE, "make_fixture.py"), "--out", d] + args)
        inp = os.path.join(base, name + ".in.json")
        with open(inp, "w") as f:
            json.dump({"sequences": SEQUENCES, "generate": GENERATE}, f)
        run([os.path.join(HERE, "transformers_ref.py"), "--model", d, "--input", inp,
             "--out", os.path.join(d, "golden.json")])
        os.remove(inp)
        print("golden:", name)
    run([os.path.join(HERE, "transformers_tok.py"), "--fixtures", os.path.join(a.root, "test", "fixtures", "tokenizers"),
         "--out", os.path.join(base, "tokenizers.json")])
    print("golden: tokenizers")


if __name__ == "__main__":
    main()
