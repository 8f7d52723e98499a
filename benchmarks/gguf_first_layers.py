#!/usr/bin/env python3
"""A GGUF with only a model's first N transformer blocks, for carrying to a machine that
can download nothing (benchmarks/gpu_prepare.sh: SmolLM2-135M's 96 MB file is over the
64 MiB carry; its first 8 of 30 blocks make about 37 MB).

    python benchmarks/gguf_first_layers.py IN.gguf OUT.gguf --layers 8

Metadata and tensors are copied byte for byte (quantized as they are), with
``<arch>.block_count`` set to N and the tensors of later blocks left out. Its answers are
not the model's: it is for speed, memory and offload checks (every layer it has is a real
layer of the real model, so a decode step does that fraction of the real work).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import gguf


def first_layers(src: Path, dst: Path, n: int) -> None:
    reader = gguf.GGUFReader(str(src), "r")
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = n if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    block = re.compile(r"^blk\.(\d+)\.")
    kept = [t for t in reader.tensors if not (m := block.match(t.name)) or int(m.group(1)) < n]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    first_layers(args.src, args.dst, args.layers)


if __name__ == "__main__":
    main()
