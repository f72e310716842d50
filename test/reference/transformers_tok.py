"""Token ids and chat-template renderings computed by transformers' own tokenizer stack (AutoTokenizer over
tokenizer.json, Jinja2 chat templates) for the tokenizer fixtures, written as the golden file that
test/ts/transformers.test.ts compares torch-dpo's tokenizer against. Needs a Python with transformers (for example the
Debian sid chroot of scripts/check-sid.sh).

  python3 transformers_tok.py --fixtures test/fixtures/tokenizers --out test/fixtures/transformers/tokenizers.json
"""
import argparse
import json
import os

import tokenizers
import transformers
from transformers import AutoTokenizer

# Fixture directories whose tokenizer.json transformers can load (the others are error fixtures).
DIRS = ["gpt2-tiny", "llama3-tiny", "chatml-tiny", "spm-tiny", "flags-bos-eos", "special-map", "think-template"]

# Byte-level BPE edge cases: unicode (accents, CJK, emoji, combining marks), runs of spaces, tabs, newlines,
# contractions, digits, special tokens inside text, leading/trailing whitespace, the empty string.
TEXTS = [
    "Hi there\n\nOK",
    "the world",
    "  two  spaces   three\tTab\t\ttabs\n\n\nnewlines \n",
    "naïve café — über straße",
    "日本語のテキスト and 中文",
    "emoji 😀👍🏽 and e\u0301 combining",
    "I'm you're we'll they'd it's DON'T",
    "numbers 1234567 3.14159 -42",
    "<|im_start|>user\nhello<|im_end|>",
    "<|begin_of_text|>x<|eot_id|>",
    " leading and trailing ",
    "",
    "\t",
    "a\r\nb",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there\n"},
     {"role": "assistant", "content": "OK"}],
    [{"role": "system", "content": "hello"}, {"role": "user", "content": "the world"},
     {"role": "assistant", "content": "naïve 😀\n\tanswer"}, {"role": "user", "content": "again?"}],
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = {"versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
           "texts": TEXTS, "conversations": CONVERSATIONS, "tokenizers": {}}
    for name in DIRS:
        tok = AutoTokenizer.from_pretrained(os.path.join(a.fixtures, name))
        entry = {
            "encode": [tok(t)["input_ids"] for t in TEXTS],
            "encode_no_special": [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
            "decode": [tok.decode(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS],
        }
        if tok.chat_template:
            entry["chat"] = []
            for conv in CONVERSATIONS:
                for gen in (False, True):
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                    entry["chat"].append({"add_generation_prompt": gen, "text": text,
                                          "ids": tok(text, add_special_tokens=False)["input_ids"]})
        out["tokenizers"][name] = entry
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
