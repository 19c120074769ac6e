#!/usr/bin/env python3
"""Helpers of scripts/gpu-check.sh for the timing part (issue 5).

  gpu_bench_hf.py make DIR      a random-weight Llama-3.2-1B-shaped bf16 checkpoint (safetensors,
                                config.json; no tokenizer: rear is driven with token ids)
  gpu_bench_hf.py cfg DIR       transformers on the GPU: guided (CFG) greedy generate and plain
                                greedy generate, ms per token (two lengths differenced), plus a
                                device-to-device copy bandwidth; prints `HF_JSON {...}`
  gpu_bench_hf.py table --bench LOG --hf LOG [--cli TIMES]
                                the summary table from the two JSON lines
"""
import argparse
import json
import sys
import time

LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

# cuda; GPU_BENCH_DEVICE=cpu only to test this script on a small model.
DEVICE = __import__("os").environ.get("GPU_BENCH_DEVICE", "cuda")
PROMPT = [(i * 7919 + 13) % 128256 for i in range(64)]
BASE = PROMPT[32:]


def make(out):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in LLAMA_32_1B.items() if k not in ("architectures", "model_type")})
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device(DEVICE):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"made {out}: {n / 1e9:.2f} B parameters, bf16")


def cfg_bench(path, n1=32, n2=160, lam=3.0):
    if DEVICE != "cuda":
        n1, n2 = 4, 8
    import torch
    from transformers import AutoModelForCausalLM
    cuda = DEVICE == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    res = {"device": torch.cuda.get_device_name() if cuda else DEVICE}
    if cuda:
        # Device-to-device copy bandwidth (read + write), as tests/cuda_bench.rs measures it.
        a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        b.copy_(a)
        sync()
        t = time.perf_counter()
        for _ in range(20):
            b.copy_(a)
        sync()
        res["copy_bandwidth_gbs"] = 2 * (1 << 30) * 20 / (time.perf_counter() - t) / 1e9
        del a, b
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).to(DEVICE).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[t % vocab for t in PROMPT]], device=DEVICE)
    neg = torch.tensor([[t % vocab for t in BASE]], device=DEVICE)
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)

    def timed(n, **kw):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos, **kw)
        sync()
        assert out.shape[1] == ids.shape[1] + n, out.shape
        return (time.perf_counter() - t0) * 1e3

    for what, kw in [("greedy", {}), ("cfg", {"guidance_scale": lam, "negative_prompt_ids": neg})]:
        try:
            timed(4, **kw)
            t1, t2 = timed(n1, **kw), timed(n2, **kw)
            res[f"{what}_ms_per_token"] = (t2 - t1) / (n2 - n1)
        except Exception as e:  # an API difference of this transformers version
            res[f"{what}_error"] = f"{type(e).__name__}: {e}"
    import transformers
    res["transformers"] = transformers.__version__
    res["torch"] = torch.__version__
    print("HF_JSON " + json.dumps(res))


def last_json(path, tag):
    try:
        lines = [l for l in open(path) if l.startswith(tag + " ")]
    except OSError:
        return None
    return json.loads(lines[-1][len(tag) + 1:]) if lines else None


def table(bench, hf, cli):
    b = last_json(bench, "BENCH_JSON")
    h = last_json(hf, "HF_JSON") or {}
    rows = []

    def row(name, value, vs="", goal=""):
        rows.append((name, value, vs, goal))

    if b:
        floor = b["floor_ms"]
        dev = {int(k): v for k, v in b["device_step_ms"].items()}
        eng = {int(k): v for k, v in b["engine_step_ms"].items()}
        row("weights read per step", f"{b['weight_bytes'] / 1e9:.3f} GB")
        row("copy bandwidth (d2d, this run)", f"{b['copy_bandwidth_gbs']:.0f} GB/s",
            f"torch: {h['copy_bandwidth_gbs']:.0f} GB/s" if "copy_bandwidth_gbs" in h else "")
        row("HBM floor of a decode step", f"{floor:.3f} ms")
        one = dev.get(1)
        if one:
            row("decode step, 1 row (device)", f"{one:.3f} ms", f"{100 * floor / one:.0f}% of floor", ">= 85%")
        if dev.get(2):
            row("guided greedy step, 2 rows (device)", f"{dev[2]:.3f} ms", f"{dev[2] / one:.2f}x 1 row")
        if dev.get(32):
            row("guided beam B=16 step, 32 rows (device)", f"{dev[32]:.3f} ms", f"{dev[32] / one:.2f}x 1 row", "<= 1.3x")
        alt = {int(k): v for k, v in b.get("device_step_other_matmul_ms", {}).items()}
        other = "block" if b.get("warp_matmul", True) else "warp"
        for r in (1, 2):
            if alt.get(r) and dev.get(r):
                row(f"decode step, {r} row(s), {other} matmul", f"{alt[r]:.3f} ms", f"{alt[r] / dev[r]:.2f}x default")
        if b.get("device_step_32_no_mma_ms") and dev.get(32):
            x = b["device_step_32_no_mma_ms"]
            row("guided beam step, 32 rows, no tensor cores", f"{x:.3f} ms", f"{x / dev[32]:.2f}x default")
        unf = {int(k): v for k, v in b.get("device_step_unfused_ms", {}).items()}
        for r in (1, 2, 32):
            if unf.get(r):
                row(f"device step, {r} rows, trait ops (no graph)", f"{unf[r]:.3f} ms", f"{unf[r] / dev[r]:.2f}x fused" if dev.get(r) else "")
        for r in (1, 2, 32):
            if eng.get(r):
                row(f"engine step, {r} rows (logits to host)", f"{eng[r]:.3f} ms", f"{eng[r] / eng[1]:.2f}x 1 row" if r > 1 else "")
        gg = b.get("guided_greedy_ms_per_token")
        if gg:
            row("rear guided greedy (search layer)", f"{gg:.3f} ms/token")
        hc = h.get("cfg_ms_per_token")
        if hc:
            row("transformers CFG generate", f"{hc:.3f} ms/token",
                f"{hc / gg:.1f}x rear (search layer)" if gg else "", ">= 10x")
            if dev.get(2):
                row("  vs rear fused device step (2 rows)", "", f"{hc / dev[2]:.1f}x")
        if h.get("greedy_ms_per_token"):
            row("transformers greedy generate (1 context)", f"{h['greedy_ms_per_token']:.3f} ms/token")
        for k in ("cfg_error", "greedy_error"):
            if k in h:
                row(f"transformers {k}", h[k][:60])
    try:
        t = {int(n): (int(rc), float(s)) for n, rc, s in (l.split() for l in open(cli))}
        if len(t) == 2 and all(rc == 0 for rc, _ in t.values()):
            (n1, (_, s1)), (n2, (_, s2)) = sorted(t.items())
            row("rear generate CLI, guided greedy", f"{(s2 - s1) * 1e3 / (n2 - n1):.3f} ms/token", "(process time differenced)")
        elif t:
            row("rear generate CLI --device cuda", "failed", "see cli_*.err")
    except (OSError, ValueError):
        pass
    if not rows:
        print("(no timings)")
        return
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"{'metric'.ljust(w[0])}  {'value'.rjust(w[1])}  {'ratio'.ljust(w[2])}  goal")
    for r in rows:
        print(f"{r[0].ljust(w[0])}  {r[1].rjust(w[1])}  {r[2].ljust(w[2])}  {r[3]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["make", "cfg", "table"])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--bench")
    ap.add_argument("--hf")
    ap.add_argument("--cli")
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dir)
    elif a.cmd == "cfg":
        cfg_bench(a.dir)
    else:
        table(a.bench, a.hf, a.cli)


if __name__ == "__main__":
    sys.exit(main())
