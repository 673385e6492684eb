#!/usr/bin/env python3
"""Reference dequantization with the PyPI `gguf` package (llama.cpp's own Python port).

  gguf_ref.py blocks TYPE_ID IN.bin OUT.bin ROW_BYTES
      dequantize raw blocks of one ggml type; write little-endian f32.
  gguf_ref.py hashes MODEL.gguf OUT.json
      dequantize every tensor of a GGUF file; write {name: sha256 of its f32 bytes}.
  gguf_ref.py quantize TYPE_ID IN.f32 OUT.bin ROW_LEN
      quantize little-endian f32 rows with gguf-py's port of llama.cpp's reference encoder.
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize


def main():
    cmd = sys.argv[1]
    if cmd == "blocks":
        qtype = GGMLQuantizationType(int(sys.argv[2]))
        raw = np.fromfile(sys.argv[3], dtype=np.uint8)
        row_bytes = int(sys.argv[5])
        out = dequantize(raw.reshape(-1, row_bytes), qtype)
        np.ascontiguousarray(out, dtype="<f4").tofile(sys.argv[4])
    elif cmd == "hashes":
        reader = GGUFReader(sys.argv[2])
        hashes = {}
        for t in reader.tensors:
            out = dequantize(t.data, t.tensor_type)
            hashes[t.name] = hashlib.sha256(np.ascontiguousarray(out, dtype="<f4").tobytes()).hexdigest()
        with open(sys.argv[3], "w") as f:
            json.dump(hashes, f)
    elif cmd == "quantize":
        qtype = GGMLQuantizationType(int(sys.argv[2]))
        x = np.fromfile(sys.argv[3], dtype="<f4").reshape(-1, int(sys.argv[5]))
        np.ascontiguousarray(quantize(x, qtype)).tofile(sys.argv[4])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
