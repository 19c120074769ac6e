#!/usr/bin/env python3
"""Tokenizer-class fixtures: tiny trained tokenizers saved the way real Llama / Mistral / Qwen2 /
Qwen3 checkpoints ship them (tokenizer.json + tokenizer_config.json + config.json with only
`model_type`), with golden ids and text from transformers' `AutoTokenizer.from_pretrained(dir)`.

    python3 scripts/make_tokenizer_fixtures.py          # rewrites tests/fixtures/tokenizers/

Each directory is one variant: a tokenizer style (Llama-3 byte-level, Qwen byte-level, GPT-2
byte-level, Llama-2 legacy normalizer form, Metaspace form) crossed with the `tokenizer_class`,
`legacy`, `add_prefix_space`, `add_bos_token`... that checkpoints write, and the config's
`model_type`. transformers 5 picks the tokenizer class from these (AutoTokenizer) and classes with
their own `__init__` (LlamaTokenizer, Qwen2Tokenizer, GPT2Tokenizer, CodeLlamaTokenizer,
GemmaTokenizer) rebuild the backend from tokenizer.json's vocab and merges with their own
normalizer / pre-tokenizer / decoder. `golden.json` records the class transformers chose and, for
a list of tricky strings, `tokenizer(text)` with and without special tokens and `decode` of the
ids with and without `skip_special_tokens`. tests/tokenizer_classes.rs checks `rear` against it.

Deterministic: a rerun gives byte-identical files (no randomness; the `tokenizers` trainer is
deterministic for a fixed corpus). Goldens come from transformers only; never edit them by hand.
"""

import json
import os
import re
import shutil
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizers")

CORPUS = """Hello world! The quick brown fox jumps over the lazy dog.
It's a test: don't stop, we'll see; they're here and I'm fine, you've won, she'd go.
Numbers 0 1 2 3 4 5 6 7 8 9, 10, 42, 123, 2024 and 3.14159 or 1,000,000.
Ça va? Très bien, merci. naïve café résumé, Größe, Straße.
    indented line with spaces
\tTabs\tand  double  spaces   and trailing   
Line one
Line two

Paragraph after a blank line. Hello hello HELLO world world.
def main():\n    return x + y * 2  # comment
"""

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

STYLES = {
    # Llama-3: regex Split + ByteLevel(use_regex=False), no normalizer.
    "llama3": dict(kind="bytelevel_split", split=LLAMA3_SPLIT, nfc=False,
                   specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                             "<|end_header_id|>", "<|eot_id|>"]),
    # Qwen2: its own Split regex (single digits) and NFC.
    "qwen": dict(kind="bytelevel_split", split=QWEN_SPLIT, nfc=True,
                 specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], nonspecial=["<think>", "</think>"]),
    # GPT-2 / SmolLM: ByteLevel(use_regex=True).
    "gpt2": dict(kind="bytelevel_gpt2",
                 specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    # Llama-2 / Mistral v0.1 tokenizer.json: Prepend + Replace normalizer, no pre-tokenizer.
    "llama2": dict(kind="sp_legacy", specials=["<unk>", "<s>", "</s>"]),
    # Newer SentencePiece-BPE conversions: Metaspace(prepend_scheme=first) pre-tokenizer.
    "metaspace": dict(kind="sp_metaspace", specials=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]),
}

_TRAINED = {}

# Chat templates (small transcriptions of the Llama-2 and ChatML ones); they use the named special
# tokens, so a class default (e.g. CodeLlamaTokenizer's bos_token) shows in the rendered text.
TEMPLATES = {
    "llama2": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
               "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}"
               "{% endif %}{% endfor %}"),
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
               "{{ eos_token if false else '' }}"),
}
CHAT_PROMPT = " Hello  world\nsecond line: 1234 café"


def train(style):
    if style in _TRAINED:
        return Tokenizer.from_str(_TRAINED[style])
    st = STYLES[style]
    kind = st["kind"]
    specials = st["specials"]
    lines = CORPUS.splitlines(keepends=True) * 3
    if kind.startswith("bytelevel"):
        tok = Tokenizer(models.BPE())
        if kind == "bytelevel_split":
            tok.normalizer = normalizers.NFC() if st["nfc"] else None
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(st["split"]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=360, min_frequency=2, special_tokens=specials[:1],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(lines, trainer)
        tok.add_special_tokens(specials[1:])
    else:
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        bytes_toks = [f"<0x{i:02X}>" for i in range(256)]
        if kind == "sp_legacy":
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.pre_tokenizer = None
        else:
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([
            decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=380, min_frequency=2, special_tokens=specials[:3] + bytes_toks,
                                      show_progress=False)
        tok.train_from_iterator(lines, trainer)
        tok.add_special_tokens(specials[3:])
        # Byte tokens are plain vocabulary entries in real checkpoints, not added tokens.
        j = json.loads(tok.to_str())
        j["added_tokens"] = [t for t in j["added_tokens"] if not re.fullmatch(r"<0x[0-9A-F]{2}>", t["content"])]
        tok = Tokenizer.from_str(json.dumps(j))
    for t in st.get("nonspecial", []):
        tok.add_tokens([t])
    _TRAINED[style] = tok.to_str()
    return Tokenizer.from_str(_TRAINED[style])


def added_token_json(t):
    return {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
            "single_word": t.single_word, "special": t.special}


# name, style, config model_type, tokenizer_class, options
#   post:  "bos" (TemplateProcessing adding BOS), "none" (no post-processor), default: ByteLevel for
#          byte-level styles, none otherwise
#   cfg:   extra tokenizer_config.json entries; tokens: bos/eos/unk/pad tokens of the config
#   chat:  a chat template (TEMPLATES) put in tokenizer_config.json; golden.json then has the ids of
#          apply_chat_template([user: CHAT_PROMPT], add_generation_prompt=True)
#   legacy_files: no added_tokens_decoder in tokenizer_config.json, tokens in special_tokens_map.json
FIXTURES = [
    # Llama-3 style: LlamaTokenizerFast on a ByteLevel tokenizer.json -> TokenizersBackend.
    dict(name="llama3_llamafast", style="llama3", model_type="llama", cls="LlamaTokenizerFast", post="bos",
         tokens=dict(bos="<|begin_of_text|>", eos="<|eot_id|>"), cfg=dict(add_bos_token=True, add_eos_token=False)),
    dict(name="llama3_ptf", style="llama3", model_type="llama", cls="PreTrainedTokenizerFast", post="bos",
         tokens=dict(bos="<|begin_of_text|>", eos="<|end_of_text|>"), cfg=dict(clean_up_tokenization_spaces=True)),
    # DeepSeek-R1-Distill-Qwen: LlamaTokenizerFast for model_type qwen2 -> Qwen2Tokenizer.
    dict(name="qwen2_llamafast", style="llama3", model_type="qwen2", cls="LlamaTokenizerFast", post="bos",
         tokens=dict(bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|end_of_text|>"),
         cfg=dict(add_bos_token=True, add_eos_token=False, legacy=True)),
    dict(chat="chatml", name="qwen2_tb", style="qwen", model_type="qwen2", cls="TokenizersBackend",
         tokens=dict(eos="<|im_end|>", pad="<|endoftext|>"), cfg=dict(split_special_tokens=False)),
    dict(name="qwen3_tb", style="qwen", model_type="qwen3", cls="TokenizersBackend",
         tokens=dict(eos="<|im_end|>", pad="<|endoftext|>")),
    dict(chat="chatml", name="qwen3_qwen2fast", style="qwen", model_type="qwen3", cls="Qwen2TokenizerFast",
         tokens=dict(eos="<|im_end|>", pad="<|endoftext|>", bos=None),
         cfg=dict(errors="replace", additional_special_tokens=["<|im_start|>", "<|im_end|>"])),
    dict(name="qwen3_qwen2_prefix", style="llama3", model_type="qwen3", cls="Qwen2Tokenizer",
         tokens=dict(eos="<|eot_id|>"), cfg=dict(add_prefix_space=True)),
    dict(name="qwen2_nocls", style="qwen", model_type="qwen2", cls=None,
         tokens=dict(eos="<|im_end|>"), legacy_files=True),
    # Qwen2Tokenizer named for a Llama config.
    dict(name="llama_qwen2tok", style="gpt2", model_type="llama", cls="Qwen2Tokenizer",
         tokens=dict(eos="<|im_end|>", pad="<|endoftext|>")),
    # SmolLM-style: GPT2Tokenizer on a Llama config.
    dict(chat="chatml", name="llama_gpt2", style="gpt2", model_type="llama", cls="GPT2Tokenizer",
         tokens=dict(bos="<|im_start|>", eos="<|im_end|>", unk="<|endoftext|>", pad="<|im_end|>")),
    dict(name="llama_gpt2fast_prefix", style="gpt2", model_type="llama", cls="GPT2TokenizerFast",
         tokens=dict(bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>"),
         cfg=dict(add_prefix_space=True, add_bos_token=True)),
    # Llama-2 style tokenizer.json (legacy normalizer form) with LlamaTokenizer(Fast).
    dict(chat="llama2", name="llama2_llamafast", style="llama2", model_type="llama", cls="LlamaTokenizerFast", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), cfg=dict(add_bos_token=True, add_eos_token=False)),
    dict(chat="llama2", name="llama2_legacy_true", style="llama2", model_type="llama", cls="LlamaTokenizer", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), cfg=dict(legacy=True)),
    dict(name="llama2_legacy_false", style="llama2", model_type="llama", cls="LlamaTokenizer", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>", pad="</s>"), cfg=dict(legacy=False, add_eos_token=True)),
    dict(name="llama2_noprefix", style="llama2", model_type="llama", cls="LlamaTokenizerFast", post="none",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), cfg=dict(legacy=False, add_prefix_space=False)),
    dict(name="llama2_oldfiles", style="llama2", model_type="llama", cls="LlamaTokenizer", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), legacy_files=True),
    # Mistral: always TokenizersBackend (mistral_common not installed).
    dict(name="mistral_llamafast", style="llama2", model_type="mistral", cls="LlamaTokenizerFast", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), cfg=dict(legacy=False)),
    dict(name="mistral_metaspace_llama", style="metaspace", model_type="mistral", cls="LlamaTokenizer", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), cfg=dict(add_prefix_space=True)),
    # Metaspace tokenizer.json with LlamaTokenizer on a Llama config.
    dict(name="llama_metaspace_llama", style="metaspace", model_type="llama", cls="LlamaTokenizerFast", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>"), cfg=dict(legacy=True, add_prefix_space=None)),
    dict(chat="llama2", name="llama_codellama", style="metaspace", model_type="llama", cls="CodeLlamaTokenizer", post="none",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>")),
    dict(chat="llama2", name="llama_gemma", style="metaspace", model_type="llama", cls="GemmaTokenizerFast", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>", pad="</s>", mask=None)),
    # Classes transformers does not know, or knows as the plain backend.
    dict(name="llama_unknown_class", style="metaspace", model_type="llama", cls="FancyTokenizer", post="bos",
         tokens=dict(bos="<s>", eos="</s>", unk="<unk>")),
    dict(name="qwen3_bloomfast", style="qwen", model_type="qwen3", cls="BloomTokenizerFast",
         tokens=dict(eos="<|im_end|>")),
    dict(name="nomodeltype_qwen2fast", style="gpt2", model_type=None, cls="Qwen2TokenizerFast",
         tokens=dict(eos="<|im_end|>")),
]

STRINGS = [
    "Hello world",
    " Hello  world",
    "   three leading spaces",
    "trailing spaces   ",
    "Line one\nLine two\n\n  indented\n",
    "\tTabs\tand  double  spaces",
    "Numbers 1234567890, 3.14159 and 1,000,000.",
    "It's fine, don't stop: we'll see; they're here.",
    "café naïve résumé Größe",
    "cafe\u0301 nai\u0308ve (decomposed)",
    "Ünïcödé 日本語 🙂 ✨",
    "▁literal▁metaspace ▁x",
    "Hello , world . It 's",
    "",
    " ",
    "\n",
    "  \n  ",
    "x",
]


def special_strings(specials, nonspecial):
    toks = specials + nonspecial
    a, b = toks[0], toks[-1]
    mid = toks[len(toks) // 2]
    return [
        f"{a}Hello{b}",
        f"{a} Hello {b} world{mid}\n{mid}user\nhi {b}",
        f"text {mid}{mid}  {a}",
        "<s>[INST] hi [/INST]</s><unk><|im_start|><|endoftext|>",
    ]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def make(fx):
    st = STYLES[fx["style"]]
    d = os.path.join(ROOT, fx["name"])
    os.makedirs(d)
    tok = train(fx["style"])
    kind = st["kind"]
    tokens = fx.get("tokens", {})
    post = fx.get("post")
    bos = tokens.get("bos")
    if post == "bos":
        bid = tok.token_to_id(bos)
        tp = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                           special_tokens=[(bos, bid)])
        tok.post_processor = (processors.Sequence([processors.ByteLevel(trim_offsets=False), tp])
                              if kind.startswith("bytelevel") else tp)
    elif post == "none" or not kind.startswith("bytelevel"):
        tok.post_processor = None
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)

    added = tok.get_added_tokens_decoder()
    cfg = {}
    for k in ("add_bos_token", "add_eos_token", "add_prefix_space"):
        if k in fx.get("cfg", {}):
            cfg[k] = fx["cfg"][k]
    if not fx.get("legacy_files"):
        cfg["added_tokens_decoder"] = {str(i): added_token_json(t) for i, t in sorted(added.items())}
    for k in ("bos", "eos", "pad", "unk", "mask"):
        if k in tokens:
            cfg[f"{k}_token"] = tokens[k]
    cfg["clean_up_tokenization_spaces"] = False
    cfg["model_max_length"] = 4096
    for k, v in fx.get("cfg", {}).items():
        if k not in cfg:
            cfg[k] = v
    if fx.get("chat"):
        cfg["chat_template"] = TEMPLATES[fx["chat"]]
    if fx["cls"] is not None:
        cfg["tokenizer_class"] = fx["cls"]
    if fx.get("legacy_files"):
        stm = {f"{k}_token": {"content": v, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False} for k, v in tokens.items() if v is not None}
        write_json(os.path.join(d, "special_tokens_map.json"), stm)
    write_json(os.path.join(d, "tokenizer_config.json"), cfg)
    config = {"model_type": fx["model_type"]} if fx["model_type"] else {}
    write_json(os.path.join(d, "config.json"), config)

    hf = AutoTokenizer.from_pretrained(d)
    cases = []
    for text in STRINGS + special_strings(st["specials"], st.get("nonspecial", [])):
        ids = hf(text)["input_ids"]
        plain = hf(text, add_special_tokens=False)["input_ids"]
        cases.append(dict(text=text, ids=ids, ids_plain=plain,
                          decode=hf.decode(ids), decode_skip=hf.decode(ids, skip_special_tokens=True),
                          decode_plain=hf.decode(plain)))
    golden = dict(
        tokenizer_class=type(hf).__name__,
        len=len(hf),
        special_tokens={k: [v, hf.convert_tokens_to_ids(v)] for k, v in hf.special_tokens_map.items()},
        cases=cases,
    )
    if fx.get("chat"):
        msgs = [{"role": "user", "content": CHAT_PROMPT}]
        out = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        golden["chat"] = dict(prompt=CHAT_PROMPT,
                              text=hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                              ids=list(out["input_ids"] if not isinstance(out, list) else out))
    write_json(os.path.join(d, "golden.json"), golden)
    if os.environ.get("DUMP_BACKEND"):
        b = json.loads(hf.backend_tokenizer.to_str())
        b["model"].pop("vocab", None)
        b["model"].pop("merges", None)
        print(fx["name"], json.dumps(b, ensure_ascii=False))
    return type(hf).__name__


def main():
    if transformers.__version__ != "5.25.0":
        print(f"warning: goldens were made with transformers 5.25.0, this is {transformers.__version__}",
              file=sys.stderr)
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    for fx in FIXTURES:
        cls = make(fx)
        print(f"{fx['name']:28} {fx['model_type'] or '-':8} {fx['cls'] or '-':24} -> {cls}")
    with open(os.path.join(ROOT, "README.md"), "w", encoding="utf-8") as f:
        f.write("# Tokenizer-class fixtures\n\n"
                "Generated by `python3 scripts/make_tokenizer_fixtures.py` (transformers "
                f"{transformers.__version__}, tokenizers {tokenizers.__version__}); see the script for what each "
                "directory covers. `golden.json`: the class `AutoTokenizer` picked, `len(tokenizer)`, the special "
                "tokens and their ids, and per string the ids of `tokenizer(text)` with (`ids`) and without "
                "(`ids_plain`) special tokens and `decode` of them. Checked by `tests/tokenizer_classes.rs`.\n")


if __name__ == "__main__":
    main()
