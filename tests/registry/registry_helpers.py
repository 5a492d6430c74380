"""Registry test helpers (importable from subprocesses too)."""

import json
import struct


def patch_bytes(concepts=("castle",), kind="forget", n=4, extra=None, fill=b"\0") -> bytes:
    """A small valid safetensors patch file built without torch (the registry needs none)."""
    meta = {
        "fmn.concepts": json.dumps(list(concepts)),
        "fmn.kind": kind,
        "fmn.format": "diff",
        "fmn.base_fingerprint": "base-fp",
        "fmn.method": "resteer",
        "fmn.family": "sd1",
    }
    meta.update(extra or {})
    header = {
        "__metadata__": meta,
        "lora_unet_mid_block_attn2_to_k.diff": {
            "dtype": "F32",
            "shape": [n],
            "data_offsets": [0, 4 * n],
        },
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + (fill * (4 * n))[: 4 * n]
