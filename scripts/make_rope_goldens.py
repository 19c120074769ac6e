#!/usr/bin/env python3
"""RoPE goldens: inverse frequencies and the cos/sin attention factor that transformers computes
for the rope types rear reads (default, linear, llama3, yarn, dynamic), over a few configs.

    python3 scripts/make_rope_goldens.py     # writes tests/fixtures/rope_goldens.json

Checked by the unit test `model::config::tests::rope_matches_transformers_goldens`.
"""
import json
import os

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

CASES = [
    dict(head_dim=64, max_pos=2048, rope={"rope_type": "default", "rope_theta": 10000.0}),
    dict(head_dim=32, max_pos=512, rope={"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.5}),
    dict(head_dim=64, max_pos=8192, rope={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 1024}),
    # llama3 without original_max_position_embeddings: transformers uses max_position_embeddings
    dict(head_dim=16, max_pos=320, rope={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    dict(head_dim=128, max_pos=32768, rope={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                                            "original_max_position_embeddings": 8192}),
    dict(head_dim=64, max_pos=4096, rope={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                                          "mscale": 1.0, "mscale_all_dim": 0.5,
                                          "original_max_position_embeddings": 512}),
    dict(head_dim=40, max_pos=1024, rope={"rope_type": "yarn", "rope_theta": 100.0, "factor": 2.5,
                                          "attention_factor": 0.9, "beta_fast": 16, "beta_slow": 2,
                                          "truncate": False, "original_max_position_embeddings": 128}),
    dict(head_dim=12, max_pos=320, rope={"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0}),
    dict(head_dim=64, max_pos=1024, rope={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
]


def main():
    out = []
    for c in CASES:
        heads = 4
        cfg = LlamaConfig(hidden_size=c["head_dim"] * heads, num_attention_heads=heads, num_key_value_heads=heads,
                          head_dim=c["head_dim"], max_position_embeddings=c["max_pos"],
                          rope_parameters=dict(c["rope"]), intermediate_size=8, num_hidden_layers=1, vocab_size=8)
        # exactly what the model uses: the rotary module's buffer and factor
        rot = LlamaRotaryEmbedding(cfg)
        inv, scale = rot.inv_freq, rot.attention_scaling
        config = {"architectures": ["LlamaForCausalLM"], "hidden_size": c["head_dim"] * heads,
                  "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": c["head_dim"],
                  "max_position_embeddings": c["max_pos"], "rope_parameters": c["rope"],
                  "intermediate_size": 8, "num_hidden_layers": 1, "vocab_size": 8}
        out.append({"config": config, "inv_freq": [float(x) for x in inv.float().tolist()],
                    "attention_factor": float(scale)})
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "rope_goldens.json")
    with open(path, "w") as f:
        json.dump({"transformers": __import__("transformers").__version__, "cases": out}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} cases to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
