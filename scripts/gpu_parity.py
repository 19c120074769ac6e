#!/usr/bin/env python3
"""Parity of `rear ... --device cuda` with transformers running on the same GPU (issue 5).

For a few fixture models (tests/fixtures), using the prompts of their golden.json:
  - per-token log-probs of a given response: `rear score --device cuda` vs transformers
    (float32 compute, TF32 off), within 1e-4 (f32-stored) / 2e-3 (bf16/f16-stored);
  - greedy continuation (EOS ignored) and guided greedy (CFG: base + λ·(pref − base) over
    log-softmax): `rear generate --device cuda` tokens equal to transformers' argmax loop;
  - beam search B=2/4: `rear generate --algo beam --device cuda` sequences equal to the
    transformers num_beams sequences recorded in golden.json, scores within 10× the tolerance.
Prints one line per case and a final `PARITY: n/m cases ok` line; exit 1 on any mismatch.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

DEVICE = "cuda"
MODELS = ["llama_f32", "qwen3_f32", "llama3_bf16_tied", "qwen2_bf16", "mistral_f16_sharded"]


def tol(name):
    return 1e-4 if ("f32" in name or "legacy" in name) else 2e-3


def load_model(d):
    """The fixture in float32 on DEVICE. The fixtures' config.json files are transformers 5's
    (`rope_parameters`); transformers 4 reads `rope_theta` / `rope_scaling` instead, so map them."""
    cfg = AutoConfig.from_pretrained(d)
    raw = json.load(open(os.path.join(d, "config.json")))
    rp = raw.get("rope_parameters")
    if rp and int(transformers.__version__.split(".")[0]) < 5:
        cfg.rope_theta = rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        kind = rp.get("rope_type", "default")
        cfg.rope_scaling = None if kind == "default" else {k: v for k, v in rp.items() if k != "rope_theta"}
    return AutoModelForCausalLM.from_pretrained(d, config=cfg, torch_dtype=torch.float32).to(DEVICE).eval()


def rear(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr.strip()


def ids_arg(ids):
    return ",".join(str(i) for i in ids)


@torch.no_grad()
def hf_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response], device=DEVICE)
    lp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return [lp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response)]


@torch.no_grad()
def hf_greedy(model, contexts, lam, n):
    """Argmax of the REAR / CFG score, recomputing each context's full sequence every step."""
    out = []
    for _ in range(n):
        lps = []
        for c in contexts:
            ids = torch.tensor([c + out], device=DEVICE)
            lps.append(torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1))
        s = lps[0] if len(lps) == 1 else lps[1] + lam * (lps[0] - lps[1])
        out.append(int(torch.argmax(s).item()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rear", required=True)
    ap.add_argument("--fixtures", default="tests/fixtures")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to test this script")
    ap.add_argument("--rear-device", default=None,
                    help="rear's --device (default: --device); cuda with --device cpu runs rear on "
                         "the kernel emulator (LD_LIBRARY_PATH=target/rear-emu) against CPU torch")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    REAR_DEVICE = a.rear_device or a.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ok = total = 0
    for name in a.models.split(","):
        d = os.path.join(a.fixtures, name)
        g = json.load(open(os.path.join(d, "golden.json")))
        model = load_model(d)
        t = tol(name)
        for case in g["logprobs"]:
            total += 1
            want = hf_logprobs(model, case["prompt_ids"], case["response_ids"])
            rc, out, err = rear(a.rear, "score", "--model", d, "--device", REAR_DEVICE, "--json",
                                "--prompt-ids", ids_arg(case["prompt_ids"]),
                                "--response-ids", ids_arg(case["response_ids"]))
            if rc != 0:
                print(f"FAIL {name} score: rear exit {rc}: {err}")
                continue
            got = json.loads(out)["token_logprobs_pref"]
            worst = max(abs(x - y) for x, y in zip(got, want))
            good = worst <= t and len(got) == len(want)
            ok += good
            print(f"{'ok  ' if good else 'FAIL'} {name} log-probs: max |Δ| {worst:.2e} (tolerance {t:g})")
        for case in g["greedy"] + g["cfg"]:
            total += 1
            n = case["max_new_tokens"]
            guided = "base_ids" in case
            ctx = [case["prompt_ids"]] + ([case["base_ids"]] if guided else [])
            lam = case.get("lambda", 1.0)
            want = hf_greedy(model, ctx, lam, n)
            args = ["generate", "--model", d, "--device", REAR_DEVICE, "--json", "--ignore-eos",
                    "--max-new-tokens", str(n), "--prompt-ids", ids_arg(case["prompt_ids"])]
            if guided:
                args += ["--base-prompt-ids", ids_arg(case["base_ids"]), "--lambda", str(lam)]
            rc, out, err = rear(a.rear, *args)
            what = f"guided greedy λ={lam}" if guided else "greedy"
            if rc != 0:
                print(f"FAIL {name} {what}: rear exit {rc}: {err}")
                continue
            got = json.loads(out.splitlines()[0])["token_ids"]
            good = got == want
            ok += good
            print(f"{'ok  ' if good else 'FAIL'} {name} {what}: rear {got} transformers {want}")
        for case in g.get("beam", []):
            # Plain beam search (no base context) against transformers' num_beams=B sequences and
            # scores recorded in golden.json (EOS ignored, length_penalty 1).
            total += 1
            b, n = case["num_beams"], case["max_new_tokens"]
            rc, out, err = rear(a.rear, "generate", "--model", d, "--device", REAR_DEVICE, "--json",
                                "--ignore-eos", "--algo", "beam", "--beams", str(b),
                                "--max-new-tokens", str(n), "--prompt-ids", ids_arg(case["prompt_ids"]))
            if rc != 0:
                print(f"FAIL {name} beam B={b}: rear exit {rc}: {err}")
                continue
            cands = [json.loads(line) for line in out.splitlines()]
            got, want = [c["token_ids"] for c in cands], case["sequences"]
            worst = max(abs(c["score"] - w) for c, w in zip(cands, case["sequence_logprobs"]))
            good = got == want and worst <= 10 * t
            ok += good
            seqs = "equal" if got == want else f"rear {got} transformers {want}"
            print(f"{'ok  ' if good else 'FAIL'} {name} beam B={b}: sequences {seqs}, "
                  f"max |Δ score| {worst:.2e}")
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"PARITY: {ok}/{total} cases ok (rear --device {REAR_DEVICE} vs transformers on {where})")
    sys.exit(0 if ok == total else 1)


if __name__ == "__main__":
    main()
