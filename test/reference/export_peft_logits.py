"""Logits of a thinktune PEFT export as transformers + peft compute them, and checks that the export's
config.json describes the base GGUF.

usage: python export_peft_logits.py REQUEST.json OUTPUT.f32

REQUEST.json: { "gguf": base model path, "ggufPy": llama.cpp's gguf-py dir, "peft": export folder,
                "tokens": [token ids of one sequence] }
The base is dequantized by gguf-py and rebuilt by gguf_to_hf (the reference tier's loader). A second
network is then built from the export's own config.json with AutoConfig / AutoModelForCausalLM and
given the same weights (strict: every parameter name and shape must match), and PEFT's
PeftModel.from_pretrained loads the adapter onto it from the export folder. OUTPUT.f32 receives the
[len(tokens), vocab] logits as float32 little-endian. Errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_to_hf import ReferenceError, build_hf_model, import_gguf, read_gguf  # noqa: E402


def run(request: dict, output: str) -> None:
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    gguf = import_gguf(request["ggufPy"])
    model = read_gguf(request["gguf"], gguf)
    reference = build_hf_model(model, torch.float32)

    config = AutoConfig.from_pretrained(request["peft"])
    config._attn_implementation = "eager"
    network = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    if type(network) is not type(reference):
        raise ReferenceError(f"config.json builds {type(network).__name__}, the GGUF is {type(reference).__name__}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings"):
        ours, theirs = getattr(config, key), getattr(reference.config, key)
        if ours != theirs and not (isinstance(ours, float) and abs(ours - theirs) <= 1e-9 * abs(theirs)):
            raise ReferenceError(f"config.json {key} = {ours}, the GGUF says {theirs}")
    network.load_state_dict(reference.state_dict(), strict=True)
    # RoPE frequencies come from config.json (rope_theta, llama3 rope_scaling): they must equal the GGUF's
    ours_freq = network.model.rotary_emb.inv_freq
    theirs_freq = reference.model.rotary_emb.inv_freq
    if not torch.allclose(ours_freq, theirs_freq, rtol=1e-5, atol=0):
        raise ReferenceError(f"config.json RoPE frequencies differ from the GGUF's: {ours_freq[:4]} vs {theirs_freq[:4]}")
    network.eval()

    peft_model = PeftModel.from_pretrained(network, request["peft"])
    peft_model.eval()
    ids = torch.tensor([request["tokens"]], dtype=torch.int64)
    with torch.no_grad():
        logits = peft_model(input_ids=ids, use_cache=False).logits[0]
    np.ascontiguousarray(logits.to(torch.float32).numpy()).astype("<f4").tofile(output)


def main() -> None:
    if len(sys.argv) != 3:
        print("usage: python export_peft_logits.py REQUEST.json OUTPUT.f32", file=sys.stderr)
        sys.exit(2)
    try:
        with open(sys.argv[1], encoding="utf8") as file:
            request = json.load(file)
        run(request, sys.argv[2])
    except (ReferenceError, OSError, ValueError, KeyError) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
