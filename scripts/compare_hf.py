#!/usr/bin/env python3
"""Times the same decoding jobs with HF transformers and with `rear` on the same checkpoint and
threads, alternating runs so both see the same machine, and prints ratios (not run by CI).

Jobs (prompt of --prompt-len random token ids per context, exactly --new-tokens generated):
  greedy        HF generate(do_sample=False)                vs rear single-context greedy
  CFG greedy    HF generate(guidance_scale=λ,               vs rear guided greedy (λ)
                            negative_prompt_ids=base)
  beam-4        HF generate(num_beams=4), plain             vs rear guided beam-4 (λ): twice the rows
and, with --llama-cpp DIR and --gguf FILE, `llama-bench` on the GGUF against `rear bench` on it.

rear's figures come from `rear bench --json` (the median over its reps of each whole job: prefill
plus every decode step); HF's from timing `model.generate` (median over --reps). Example:

    cargo build --release
    target/release/rear bench --shape llama-170m --threads 2 --reps 1   # makes the checkpoint
    python3 scripts/compare_hf.py --model ~/.cache/rear/bench/llama-170m-bf16-random-v1 \\
        --threads 2 --reps 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory (config.json + safetensors)")
    p.add_argument("--rear", default="target/release/rear", help="rear binary")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--lambda", dest="lam", type=float, default=3.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--hf-dtype", default="bfloat16", choices=["bfloat16", "float32", "auto"],
                   help="torch dtype HF loads the checkpoint in (default: as stored, bf16)")
    p.add_argument("--gguf", help="a GGUF file for the llama.cpp comparison")
    p.add_argument("--llama-cpp", help="llama.cpp build directory (holding bin/llama-bench)")
    p.add_argument("--skip-hf", action="store_true", help="only the llama.cpp comparison")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    return p.parse_args()


def rear_bench(a, model_args, algo, beams):
    cmd = [a.rear, "bench", *model_args, "--device", "cpu", "--threads", str(a.threads),
           "--prompt-len", str(a.prompt_len), "--new-tokens", str(a.new_tokens),
           "--algo", algo, "--beams", str(beams), "--lambda", str(a.lam),
           "--reps", "1", "--warmup", "1", "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def job_ms(report, name):
    for j in report["jobs"]:
        if j["job"]["name"] == name:
            return j["job_ms"], j["step_ms_median"]
    raise KeyError(name)


def hf_setup(a):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "auto": "auto"}[a.hf_dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    model.eval()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    pref = torch.randint(3, vocab, (1, a.prompt_len), generator=g)
    base = pref.clone()
    base[0, : a.prompt_len // 4] = torch.randint(3, vocab, (a.prompt_len // 4,), generator=g)
    common = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                  pad_token_id=0, attention_mask=torch.ones_like(pref))
    jobs = {
        "greedy": dict(num_beams=1),
        "cfg greedy": dict(num_beams=1, guidance_scale=a.lam, negative_prompt_ids=base),
        "beam": dict(num_beams=a.beams, length_penalty=1.0, early_stopping=False),
    }

    def run(name):
        with torch.inference_mode():
            t = time.perf_counter()
            out = model.generate(pref, **common, **jobs[name])
            dt = time.perf_counter() - t
        assert out.shape[1] == a.prompt_len + a.new_tokens, out.shape
        return dt * 1e3

    return run


def llama_bench(a):
    exe = os.path.join(a.llama_cpp, "bin", "llama-bench")
    if not os.path.exists(exe):
        exe = os.path.join(a.llama_cpp, "llama-bench")
    cmd = [exe, "-m", a.gguf, "-t", str(a.threads), "-p", str(a.prompt_len), "-n", str(a.new_tokens),
           "-r", "1", "-o", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    tg = [r for r in res if r.get("n_gen", 0) > 0]
    pp = [r for r in res if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0]
    return tg[0]["avg_ts"], pp[0]["avg_ts"] if pp else float("nan")


def main():
    a = parse()
    model_args = ["--model", a.model]
    results = {"threads": a.threads, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
               "beams": a.beams, "lambda": a.lam, "hf_dtype": a.hf_dtype, "rows": []}
    if not a.skip_hf:
        run_hf = hf_setup(a)
        for name in ("greedy", "cfg greedy", "beam"):  # warm-up
            run_hf(name)
        rear_bench(a, model_args, "beam", a.beams)  # warm-up (page cache)
        hf = {k: [] for k in ("greedy", "cfg greedy", "beam")}
        rr = {k: [] for k in ("single greedy", "guided greedy", f"guided beam-{a.beams}")}
        steps = {k: [] for k in rr}
        for rep in range(a.reps):
            order = [0, 1] if rep % 2 == 0 else [1, 0]
            for who in order:
                if who == 0:
                    for name in hf:
                        hf[name].append(run_hf(name))
                else:
                    rep_json = rear_bench(a, model_args, "beam", a.beams)
                    for name in rr:
                        ms, st = job_ms(rep_json, name)
                        rr[name].append(ms)
                        steps[name].append(st)
            print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
        med = lambda v: statistics.median(v)
        pairs = [("greedy", "single greedy"), ("cfg greedy", "guided greedy"),
                 ("beam", f"guided beam-{a.beams}")]
        print(f"\n{a.threads} threads, prompt {a.prompt_len} tokens, {a.new_tokens} new tokens, "
              f"λ={a.lam}, HF dtype {a.hf_dtype}, median of {a.reps} alternating reps\n")
        print(f"{'HF job':<14} {'HF ms':>9}   {'rear job':<16} {'rear ms':>9} {'rear step ms':>13}   {'HF/rear':>8}")
        for h, r in pairs:
            hn = h if h != "beam" else f"beam-{a.beams}"
            ratio = med(hf[h]) / med(rr[r])
            print(f"{hn:<14} {med(hf[h]):9.1f}   {r:<16} {med(rr[r]):9.1f} {med(steps[r]):13.2f}   {ratio:8.2f}x")
            results["rows"].append({"hf_job": hn, "hf_ms": med(hf[h]), "rear_job": r,
                                    "rear_ms": med(rr[r]), "rear_step_ms": med(steps[r]),
                                    "hf_over_rear": ratio, "hf_all": hf[h], "rear_all": rr[r]})
    if a.llama_cpp and a.gguf:
        ll, rs, lp = [], [], []
        for rep in range(a.reps):
            tg, pp = llama_bench(a)
            ll.append(tg)
            lp.append(pp)
            rep_json = rear_bench(a, ["--model", a.gguf], "greedy", 1)
            rs.append(1e3 / job_ms(rep_json, "single greedy")[1])
        print(f"\nllama.cpp llama-bench on {a.gguf}: tg{a.new_tokens} {statistics.median(ll):.1f} tok/s "
              f"(pp{a.prompt_len} {statistics.median(lp):.1f} tok/s)")
        print(f"rear single greedy decode: {statistics.median(rs):.1f} tok/s   "
              f"rear/llama.cpp = {statistics.median(rs) / statistics.median(ll):.2f}")
        results["llama_cpp"] = {"tg_tok_s": ll, "pp_tok_s": lp, "rear_decode_tok_s": rs}
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
