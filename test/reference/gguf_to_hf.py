"""A GGUF model rebuilt as transformers' Qwen2ForCausalLM / LlamaForCausalLM, with a PEFT LoRA.

This is the reference tier's independent oracle: the GGUF is read and dequantized by llama.cpp's own
gguf-py (its directory is passed in, from a clone of node-llama-cpp's llama.cpp bundle), the network is
transformers' eager implementation, and the adapter is PEFT's. Nothing here shares code with thinktune.

Conventions that cross the boundary:
- GGUF dims are ggml order (dims[0] contiguous); gguf-py hands back row-major numpy arrays with the
  dims reversed, which is torch's nn.Linear [out, in] layout.
- llama.cpp's converter permutes the rows of llama's Q and K weights (convert_hf_to_gguf.py,
  LlamaModel.permute) so that its "normal" RoPE rotates adjacent pairs; transformers rotates halves.
  The permutation is undone here for the base weights and for LoRA B rows of q and k (LoRA B's rows
  live in the same output space as the weight's rows; A is unaffected). Qwen2 uses NEOX RoPE: no
  permutation.
- LoRA tensors use llama.cpp's adapter names, `blk.{i}.attn_q.weight.lora_a` [rank, in] and
  `.lora_b` [out, rank]; the effective weight is W + (alpha / rank) * B @ A, as in PEFT.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# llama.cpp tensor name of each LoRA target, and the transformers module path inside one decoder layer.
LORA_TARGETS: dict[str, tuple[str, str]] = {
    "q": ("attn_q", "self_attn.q_proj"),
    "k": ("attn_k", "self_attn.k_proj"),
    "v": ("attn_v", "self_attn.v_proj"),
    "o": ("attn_output", "self_attn.o_proj"),
    "gate": ("ffn_gate", "mlp.gate_proj"),
    "up": ("ffn_up", "mlp.up_proj"),
    "down": ("ffn_down", "mlp.down_proj"),
}

# llama.cpp block tensor → transformers parameter inside model.layers[i].
BLOCK_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class ReferenceError(Exception):
    """Input the oracle cannot rebuild; the message names the file, key or tensor."""


def import_gguf(gguf_py_dir: str) -> Any:
    """Imports llama.cpp's gguf-py package from its source directory (…/llama.cpp/gguf-py)."""
    if gguf_py_dir not in sys.path:
        sys.path.insert(0, gguf_py_dir)
    try:
        return importlib.import_module("gguf")
    except ImportError as error:
        raise ReferenceError(f"cannot import gguf-py from {gguf_py_dir}: {error}") from error


@dataclass
class GgufModel:
    path: str
    arch: str
    metadata: dict[str, Any]
    # name → float32 array, row-major, shape = reversed ggml dims
    tensors: dict[str, np.ndarray]
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    context_length: int
    rope_base: float
    rms_eps: float


def read_gguf(path: str, gguf: Any) -> GgufModel:
    """Reads metadata and dequantizes every tensor with gguf-py (each by its own type)."""
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # gguf-py raises ValueError/struct.error on malformed files
        raise ReferenceError(f"{path}: gguf-py cannot read the file: {error}") from error
    metadata = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = metadata.get("general.architecture")
    if arch not in ("qwen2", "llama"):
        raise ReferenceError(f"{path}: general.architecture is {arch!r}; the reference covers qwen2 and llama")

    def number(key: str, default: float | None = None) -> float:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ReferenceError(f"{path}: metadata key {arch}.{key} is missing")
        return value

    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:
            raise ReferenceError(f"{path}: tensor {tensor.name}: {error}") from error
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        # a copy: F32/F16 tensors come back as views of the read-only memory map
        tensors[tensor.name] = np.array(values, dtype=np.float32, copy=True).reshape(shape)
    if "token_embd.weight" not in tensors:
        raise ReferenceError(f"{path}: tensor token_embd.weight is missing")

    n_embd = int(number("embedding_length"))
    n_head = int(number("attention.head_count"))
    return GgufModel(
        path=path,
        arch=arch,
        metadata=metadata,
        tensors=tensors,
        n_layer=int(number("block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(number("attention.head_count_kv", n_head)),
        head_dim=int(number("attention.key_length", n_embd // n_head)),
        n_ff=int(number("feed_forward_length")),
        n_vocab=int(tensors["token_embd.weight"].shape[0]),
        context_length=int(number("context_length")),
        rope_base=float(number("rope.freq_base", 10000.0)),
        rms_eps=float(number("attention.layer_norm_rms_epsilon")),
    )


def unpermute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's LlamaModel.permute on the first axis (rows of Q or K, or LoRA B of them).

    permute reshapes to (n_head, 2, head_dim/2, …) and swaps axes 1 and 2; the inverse reshapes to
    (n_head, head_dim/2, 2, …) and swaps them back.
    """
    out = rows.shape[0]
    return rows.reshape(n_head, out // n_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (rows of HF Q/K → GGUF order)."""
    out = rows.shape[0]
    return rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _qk_heads(model: GgufModel, target: str) -> int | None:
    """Heads whose rows llama.cpp permuted for this target (None: no permutation)."""
    if model.arch != "llama":
        return None
    if target == "q":
        return model.n_head
    if target == "k":
        return model.n_head_kv
    return None


def build_hf_model(model: GgufModel, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """transformers' model of the GGUF's architecture holding its dequantized weights (eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tensors = model.tensors
    tied = "output.weight" not in tensors
    has_qkv_bias = "blk.0.attn_q.bias" in tensors
    common = dict(
        vocab_size=model.n_vocab,
        hidden_size=model.n_embd,
        intermediate_size=model.n_ff,
        num_hidden_layers=model.n_layer,
        num_attention_heads=model.n_head,
        num_key_value_heads=model.n_head_kv,
        head_dim=model.head_dim,
        max_position_embeddings=model.context_length,
        rms_norm_eps=model.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_base},
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    if model.arch == "qwen2":
        config = Qwen2Config(**common)
        network_class = Qwen2ForCausalLM
    else:
        config = LlamaConfig(**common, attention_bias=has_qkv_bias, mlp_bias=False)
        network_class = LlamaForCausalLM
    torch.manual_seed(0)
    network = network_class(config).to(dtype)

    state: dict[str, torch.Tensor] = {}
    expected_shapes = {name: tuple(value.shape) for name, value in network.state_dict().items()}

    def put(name: str, values: np.ndarray) -> None:
        state[name] = torch.from_numpy(np.ascontiguousarray(values)).to(dtype)

    put("model.embed_tokens.weight", tensors["token_embd.weight"])
    put("model.norm.weight", tensors["output_norm.weight"])
    put("lm_head.weight", tensors["output.weight"] if not tied else tensors["token_embd.weight"])
    for layer in range(model.n_layer):
        for gguf_suffix, hf_suffix in BLOCK_TENSORS.items():
            name = f"blk.{layer}.{gguf_suffix}"
            hf_name = f"model.layers.{layer}.{hf_suffix}"
            if name not in tensors:
                if gguf_suffix.endswith(".bias"):
                    # transformers' Qwen2 always has q/k/v biases, and Llama's attention_bias adds one to
                    # o_proj too: a bias the network has and the file lacks is zero.
                    if hf_name in expected_shapes:
                        put(hf_name, np.zeros(expected_shapes[hf_name], dtype=np.float32))
                    continue
                raise ReferenceError(f"{model.path}: tensor {name} is missing")
            values = tensors[name]
            heads = _qk_heads(model, gguf_suffix.split(".")[0].removeprefix("attn_"))
            if heads is not None:
                values = unpermute_rows(values, heads)
            put(hf_name, values)

    missing = set(expected_shapes) - set(state.keys())
    if missing:
        raise ReferenceError(f"{model.path}: no GGUF tensor for {sorted(missing)[:5]}")
    network.load_state_dict(state, strict=True)

    if "rope_freqs.weight" in tensors:
        # llama3 frequency scaling: llama.cpp divides each rotation frequency by rope_freqs[i].
        factors = torch.from_numpy(tensors["rope_freqs.weight"].reshape(-1)).to(torch.float32)
        rotary = network.model.rotary_emb
        if factors.numel() != rotary.inv_freq.numel():
            raise ReferenceError(
                f"{model.path}: rope_freqs.weight has {factors.numel()} values, expected head_dim/2 = {rotary.inv_freq.numel()}"
            )
        rotary.inv_freq = rotary.inv_freq / factors
        rotary.original_inv_freq = rotary.inv_freq.clone()
    network.eval()
    return network


def attach_lora(
    network: torch.nn.Module,
    model: GgufModel,
    rank: int,
    alpha: float,
    targets: list[str],
    lora: dict[str, np.ndarray],
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Wraps the network in a PEFT LoRA (dropout 0) whose A and B are the given llama.cpp-named tensors."""
    from peft import LoraConfig, get_peft_model

    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ReferenceError(f"unknown LoRA targets {unknown}; expected some of {list(LORA_TARGETS)}")
    module_names = [LORA_TARGETS[t][1].split(".")[-1] for t in targets]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=module_names, lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(network, config)
    layers = peft_model.base_model.model.model.layers
    for layer in range(model.n_layer):
        for target in targets:
            gguf_name, hf_path = LORA_TARGETS[target]
            base = f"blk.{layer}.{gguf_name}.weight"
            module = layers[layer].get_submodule(hf_path)
            a = lora.get(f"{base}.lora_a")
            b = lora.get(f"{base}.lora_b")
            if a is None or b is None:
                raise ReferenceError(f"LoRA tensor {base}.lora_a or .lora_b is missing")
            expected_a = tuple(module.lora_A["default"].weight.shape)
            expected_b = tuple(module.lora_B["default"].weight.shape)
            if a.shape != expected_a or b.shape != expected_b:
                raise ReferenceError(
                    f"{base}: lora_a {a.shape} / lora_b {b.shape}, expected {expected_a} / {expected_b}"
                )
            heads = _qk_heads(model, target)
            if heads is not None:
                b = unpermute_rows(b, heads)
            with torch.no_grad():
                module.lora_A["default"].weight.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(dtype))
                module.lora_B["default"].weight.copy_(torch.from_numpy(np.ascontiguousarray(b)).to(dtype))
    # PEFT may keep adapter weights in fp32 while the base is float64: match the base.
    peft_model.to(dtype)
    return peft_model


def lora_gradients(peft_model: torch.nn.Module, model: GgufModel, targets: list[str]) -> dict[str, np.ndarray]:
    """Gradients of every LoRA tensor under llama.cpp names (q/k lora_b rows back in GGUF order)."""
    layers = peft_model.base_model.model.model.layers
    out: dict[str, np.ndarray] = {}
    for layer in range(model.n_layer):
        for target in targets:
            gguf_name, hf_path = LORA_TARGETS[target]
            base = f"blk.{layer}.{gguf_name}.weight"
            module = layers[layer].get_submodule(hf_path)
            grad_a = module.lora_A["default"].weight.grad
            grad_b = module.lora_B["default"].weight.grad
            if grad_a is None or grad_b is None:
                raise ReferenceError(f"{base}: PEFT computed no gradient (is the target on the loss path?)")
            b = grad_b.detach().to(torch.float64).numpy()
            heads = _qk_heads(model, target)
            if heads is not None:
                b = permute_rows(b, heads)
            out[f"{base}.lora_a"] = grad_a.detach().to(torch.float64).numpy()
            out[f"{base}.lora_b"] = b
    return out


def row_logits(network: torch.nn.Module, tokens: np.ndarray, seq_starts: np.ndarray) -> torch.Tensor:
    """[len(tokens), vocab] logits of one packed row: each sequence runs on its own (positions restart,
    attention stays inside it), which is what packing must be equivalent to."""
    n = len(tokens)
    starts = [int(s) for s in seq_starts] if len(seq_starts) else [0]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= max(n, 1):
        raise ReferenceError(f"seqStarts {starts} must start at 0, increase, and stay below the row length {n}")
    ends = starts[1:] + [n]
    pieces = []
    for start, end in zip(starts, ends):
        ids = torch.from_numpy(np.asarray(tokens[start:end], dtype=np.int64)).unsqueeze(0)
        output = network(input_ids=ids, use_cache=False)
        pieces.append(output.logits[0])
    return torch.cat(pieces, dim=0)
