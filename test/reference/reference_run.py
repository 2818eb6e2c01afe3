"""Runs the transformers + PEFT oracle on a GGUF and writes logits, summed loss and LoRA gradients.

usage: python reference_run.py REQUEST.json OUTPUT_PREFIX

REQUEST.json:
  { "gguf": path, "ggufPy": path of llama.cpp's gguf-py, "dtype": "float32" | "float64",
    "rows": [{"tokens": [...], "targets": [... -1 where no loss], "seqStarts": [0, ...]}],
    "logits": true | false,
    "lora": null | {"rank": r, "alpha": a, "targets": ["q", ...], "file": path of float32 little-endian data,
                    "tensors": [{"name": "blk.0.attn_q.weight.lora_a", "shape": [r, in], "offset": elements}]} }

Writes OUTPUT_PREFIX.json and OUTPUT_PREFIX.f64 (float64 little-endian; the JSON gives each array's
shape and offset in elements):
  { "lossSum": Σ over rows and positions with target ≥ 0 of -log softmax(logits)[target],
    "tokens": count of those positions,
    "rows": [{"lossSum", "tokens", "logits": {"shape", "offset"} | null}],
    "gradients": [{"name", "shape", "offset"}]  (d lossSum / d LoRA tensor, llama.cpp names) }
Errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_to_hf import (  # noqa: E402
    ReferenceError,
    attach_lora,
    build_hf_model,
    import_gguf,
    lora_gradients,
    read_gguf,
    row_logits,
)


def read_lora(spec: dict) -> dict[str, np.ndarray]:
    data = np.fromfile(spec["file"], dtype="<f4")
    tensors = {}
    for entry in spec["tensors"]:
        count = int(np.prod(entry["shape"]))
        offset = int(entry["offset"])
        if offset + count > data.size:
            raise ReferenceError(f"{spec['file']}: LoRA tensor {entry['name']} runs past the end of the data")
        tensors[entry["name"]] = data[offset : offset + count].reshape(entry["shape"]).astype(np.float32)
    return tensors


def run(request: dict, output_prefix: str) -> None:
    dtype = {"float32": torch.float32, "float64": torch.float64}[request.get("dtype", "float32")]
    torch.manual_seed(0)
    gguf = import_gguf(request["ggufPy"])
    model = read_gguf(request["gguf"], gguf)
    network = build_hf_model(model, dtype)
    lora = request.get("lora")
    targets: list[str] = []
    if lora:
        targets = list(lora["targets"])
        network = attach_lora(network, model, int(lora["rank"]), float(lora["alpha"]), targets, read_lora(lora), dtype)

    want_grad = bool(lora)
    chunks: list[np.ndarray] = []
    offset = 0

    def store(array: np.ndarray) -> dict:
        nonlocal offset
        flat = np.ascontiguousarray(array, dtype="<f8").reshape(-1)
        chunks.append(flat)
        entry = {"shape": list(array.shape), "offset": offset}
        offset += flat.size
        return entry

    rows_out = []
    total_loss = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    with torch.set_grad_enabled(want_grad):
        for index, row in enumerate(request["rows"]):
            tokens = np.asarray(row["tokens"], dtype=np.int64)
            targets_row = np.asarray(row["targets"], dtype=np.int64)
            if tokens.size == 0 or targets_row.size != tokens.size:
                raise ReferenceError(f"row {index}: {tokens.size} tokens and {targets_row.size} targets")
            if tokens.min() < 0 or tokens.max() >= model.n_vocab:
                raise ReferenceError(f"row {index}: a token id is outside the vocabulary of {model.n_vocab}")
            if targets_row.max() >= model.n_vocab or targets_row.min() < -1:
                raise ReferenceError(f"row {index}: a target is neither -1 nor a token id below {model.n_vocab}")
            logits = row_logits(network, tokens, np.asarray(row.get("seqStarts", [0]), dtype=np.int64))
            mask = torch.from_numpy(targets_row >= 0)
            picked = torch.from_numpy(np.where(targets_row >= 0, targets_row, 0))
            log_probs = torch.log_softmax(logits, dim=-1)
            nll = -log_probs.gather(1, picked.unsqueeze(1)).squeeze(1)
            row_loss = (nll * mask.to(nll.dtype)).sum()
            row_tokens = int(mask.sum())
            total_loss = total_loss + row_loss.to(torch.float64)
            total_tokens += row_tokens
            rows_out.append(
                {
                    "lossSum": float(row_loss),
                    "tokens": row_tokens,
                    "logits": store(logits.detach().to(torch.float64).numpy()) if request.get("logits") else None,
                }
            )
        gradients = []
        if want_grad:
            total_loss.backward()
            for name, grad in lora_gradients(network, model, targets).items():
                gradients.append({"name": name, **store(grad)})

    result = {"lossSum": float(total_loss), "tokens": total_tokens, "rows": rows_out, "gradients": gradients}
    data = np.concatenate(chunks) if chunks else np.zeros(0, dtype="<f8")
    # temp + rename, so a reader never sees half a file
    data.tofile(output_prefix + ".f64.tmp")
    os.replace(output_prefix + ".f64.tmp", output_prefix + ".f64")
    with open(output_prefix + ".json.tmp", "w") as handle:
        json.dump(result, handle)
    os.replace(output_prefix + ".json.tmp", output_prefix + ".json")


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python reference_run.py REQUEST.json OUTPUT_PREFIX", file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1]) as handle:
            request = json.load(handle)
        run(request, sys.argv[2])
    except (ReferenceError, KeyError, OSError, ValueError) as error:
        print(f"reference_run: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
