"""The pickle check must not refuse safetensors files whose header length begins with 0x80."""

import json
import pickle
import struct

import pytest

from fmn_desktop.registry.errors import RegistryError
from fmn_desktop.registry.header import parse_header


def _safetensors_bytes(header_len_low_byte: int) -> bytes:
    tensors = {"lora_unet_x.diff": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    for pad in range(600):
        header = json.dumps({"__metadata__": {"pad": "x" * pad}, **tensors}).encode()
        if len(header) % 256 == header_len_low_byte:
            return struct.pack("<Q", len(header)) + header + b"\0\0\0\0"
    raise AssertionError("no padding gives that length")


def test_header_length_starting_with_pickle_magic_parses():
    data = _safetensors_bytes(0x80)
    assert data[:1] == b"\x80"
    assert "lora_unet_x.diff" in parse_header(data).tensors


def test_real_pickles_are_still_refused():
    with pytest.raises(RegistryError, match="pickled"):
        parse_header(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(RegistryError, match="pickled"):
        parse_header(b"PK\x03\x04" + b"\0" * 100)
