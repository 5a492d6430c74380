"""Convert OpenAI CLIP's BPE vocabulary (MIT) into the files transformers' CLIPTokenizer reads.

The source `bpe_simple_vocab_16e6.txt.gz` ships inside PyPI wheels (clip-anytorch,
open_clip_torch); fetch it without installing anything:

    pip download --no-deps clip-anytorch==2.6.0 -d /tmp/clip && unzip /tmp/clip/*.whl \
        'clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/clip
    python scripts/build_clip_tokenizer.py /tmp/clip/clip/bpe_simple_vocab_16e6.txt.gz

The vocabulary order follows CLIP's `SimpleTokenizer`: 256 byte symbols, the same with `</w>`,
the 48,894 merges joined, then the two special tokens (ids 49406, 49407).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "fmn_desktop" / "models" / "data" / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python scripts/build_clip_tokenizer.py bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(args[0], "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    )
    (OUT / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        **special,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
