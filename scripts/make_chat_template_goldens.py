#!/usr/bin/env python3
"""Real chat templates and transformers' renderings of them (tests/fixtures/chat_templates/).

    python3 scripts/make_chat_template_goldens.py
        rewrites tests/fixtures/chat_templates/{tokenizer.json,goldens.json} from the committed
        templates/*.jinja and sources.json
    python3 scripts/make_chat_template_goldens.py --import TOKENIZER_CONFIGS_PY COMMIT [--all]
        (re)writes templates/*.jinja and sources.json from openvino.genai's
        tests/python_tests/data/tokenizer_configs.py (real Hugging Face tokenizer_config.json
        fields: chat_template and the bos/eos/unk/pad tokens of each model) at COMMIT

Every template is rendered by transformers' own `tokenizer.apply_chat_template(messages,
add_generation_prompt=..., tokenize=False)` and `tokenize=True` in a model dir holding the shared
tokenizer (the byte-level BPE of tests/fixtures/llama3_bf16_tied plus, as special tokens, every
control token the templates use), a tokenizer_config.json with the model's bos/eos/unk/pad tokens
and the template as chat_template.jinja. The goldens record the text and ids, or the error the
template raised, for a set of message lists, and the pref/base contexts DESIGN §4 builds from text
(`rear tokenize --prompt X --preference P [--preference-in user]`). `strftime_now` is frozen at
2024-07-26 13:20:00 (unix 1722000000) so date-dependent templates give stable goldens;
tests/chat_templates.rs renders with the same frozen clock. Goldens come from transformers only;
never edit them by hand. Deterministic: a rerun gives byte-identical files.
"""

import ast
import datetime as _dt
import json
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jinja2
import tokenizers
import transformers
import transformers.utils.chat_template_utils as ctu
from tokenizers import AddedToken, Tokenizer
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
# CHAT_TEMPLATE_FIXTURES=DIR writes (and reads) DIR instead: a scratch sweep over more templates,
# checked by `CHAT_TEMPLATE_FIXTURES=DIR cargo test --test chat_templates`.
ROOT = os.environ.get("CHAT_TEMPLATE_FIXTURES") or os.path.join(HERE, "..", "tests", "fixtures", "chat_templates")
BASE_TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "llama3_bf16_tied", "tokenizer.json")

OV_REPO = "openvinotoolkit/openvino.genai"
OV_PATH = "tests/python_tests/data/tokenizer_configs.py"

# Hugging Face model id -> fixture name. Models whose template is byte-identical to an earlier one
# are listed under that one's name.
MODELS = [
    ("meta-llama/Llama-2-7b-chat-hf", "llama-2-chat"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-instruct"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-instruct"),
    ("meta-llama/Llama-3.2-3B-Instruct", "llama-3.2-instruct"),
    ("mistralai/Mistral-7B-Instruct-v0.1", "mistral-7b-instruct-v0.1"),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct-v0.1"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-instruct-v0.3"),
    ("mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo-instruct-2407"),
    ("Qwen/Qwen1.5-4B-Chat", "qwen1.5-chat"),
    ("Qwen/Qwen2-7B-Instruct", "qwen2-instruct"),
    ("Qwen/Qwen2.5-3B-Instruct", "qwen2.5-instruct"),
    ("Qwen/Qwen3-1.7B", "qwen3"),
    ("Qwen/QwQ-32B", "qwq-32b"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-r1-distill-llama"),
    ("deepseek-ai/DeepSeek-R1", "deepseek-r1"),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "tinyllama-chat"),
    ("stabilityai/stablelm-zephyr-3b", "stablelm-zephyr"),
    ("microsoft/Phi-3-mini-4k-instruct", "phi-3-mini"),
    ("microsoft/Phi-3.5-mini-instruct", "phi-3.5-mini"),
    ("microsoft/phi-4", "phi-4"),
    ("microsoft/Phi-4-mini-instruct", "phi-4-mini"),
    ("google/gemma-7b-it", "gemma-it"),
    ("google/gemma-3-1b-it", "gemma-3-it"),
    ("ibm-granite/granite-3.2-2b-instruct", "granite-3.2-instruct"),
    ("allenai/OLMo-7B-0724-Instruct-hf", "olmo-instruct"),
    ("NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO", "nous-hermes-2-chatml"),
    ("01-ai/Yi-1.5-34B-Chat", "yi-1.5-chat"),
    ("internlm/internlm2-chat-7b", "internlm2-chat"),
    ("tiiuae/Falcon3-3B-Instruct", "falcon3-instruct"),
    ("CohereLabs/c4ai-command-r-v01", "command-r"),
    ("CohereLabs/c4ai-command-r7b-12-2024", "command-r7b"),
    ("LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "exaone-3.5-instruct"),
    ("THUDM/glm-4-9b-chat", "glm-4-chat"),
    ("openbmb/MiniCPM3-4B", "minicpm3"),
]
SPECIAL_KEYS = ["bos_token", "eos_token", "unk_token", "pad_token"]

# The frozen clock (transformers' strftime_now calls datetime.now()).
FROZEN_NOW = _dt.datetime(2024, 7, 26, 13, 20, 0)
FROZEN_UNIX = 1722000000

PREFERENCE = "Talk like a pirate."
PROMPT = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."
UNICODE = (
    "  Line one\nLine two\n\n\tTabbed — café, naïve, 日本語, emoji 🙂, quotes ' \" \\ "
    "and {{ braces }} {% raw %} <b>html</b>  \n"
)
MESSAGE_SETS = [
    # (name, messages, add_generation_prompt, kwargs)
    ("user", [("user", "Hello!")], True, {}),
    ("system_user", [("system", SYSTEM), ("user", "Hello!")], True, {}),
    ("pref", [("system", PREFERENCE), ("user", PROMPT)], True, {}),
    ("base", [("user", PROMPT)], True, {}),
    ("pref_in_user", [("user", PREFERENCE + "\n\n" + PROMPT)], True, {}),
    ("multi_turn", [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")], True, {}),
    (
        "system_multi_turn",
        [("system", SYSTEM), ("user", "Hi"), ("assistant", " Hello!\n"), ("user", "Tell me a joke.")],
        True,
        {},
    ),
    ("closed_conversation", [("system", SYSTEM), ("user", "Hi"), ("assistant", "Hello!")], False, {}),
    ("unicode_multiline", [("user", UNICODE)], True, {}),
    ("unicode_system", [("system", UNICODE), ("user", "Hello!")], True, {}),
    ("empty_system", [("system", ""), ("user", "Hello!")], True, {}),
    ("assistant_first", [("assistant", "Hi"), ("user", "Hello!")], True, {}),
    ("two_users", [("user", "One"), ("user", "Two")], True, {}),
    ("thinking_off", [("user", "Hello!")], True, {"enable_thinking": False}),
    ("date_string", [("user", "Hello!")], True, {"date_string": "01 Jan 2025"}),
]


def _ov_configs(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "get_tokenizer_configs":
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return):
                    return ast.literal_eval(ret.value)
    raise SystemExit(f"{path}: no get_tokenizer_configs() literal")


def import_templates(path, commit, everything=False):
    configs = _ov_configs(path)
    models = MODELS
    if everything:  # every model of the file (sweeps), named after the model id
        models = [(m, re.sub(r"[^A-Za-z0-9._-]+", "_", m)) for m in configs]
    tdir = os.path.join(ROOT, "templates")
    shutil.rmtree(tdir, ignore_errors=True)
    os.makedirs(tdir)
    sources = []
    by_text = {}
    for model, name in models:
        cfg = configs[model]
        tpl = cfg["chat_template"]
        if not tpl:
            continue
        field = "['chat_template']"
        if isinstance(tpl, dict):  # named templates (Cohere): the "default" one is rendered
            tpl, field = tpl["default"], "['chat_template']['default']"
        specials = {k: cfg.get(k) for k in SPECIAL_KEYS}
        key = (tpl, json.dumps(specials, sort_keys=True))
        if key in by_text:
            by_text[key]["models"].append(model)
            continue
        entry = {
            "name": name,
            "models": [model],
            "repo": OV_REPO,
            "path": OV_PATH,
            "commit": commit,
            "field": f"get_tokenizer_configs()[{model!r}]{field}",
            "special_tokens": specials,
        }
        by_text[key] = entry
        sources.append(entry)
        with open(os.path.join(tdir, name + ".jinja"), "w", encoding="utf-8", newline="") as f:
            f.write(tpl)
    with open(os.path.join(ROOT, "sources.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(" " + _line(e) for e in sources) + "\n]\n")
    print(f"imported {len(sources)} templates for {len(models)} models")


CONTROL_RE = re.compile(
    r"<\|[A-Za-z0-9_./ -]{1,40}\|>|<｜[^｜<>]{1,40}｜>|\[\|[a-z]+\|\]|"
    r"<(?:start_of_turn|end_of_turn|bos|eos|pad|unk|BOS_TOKEN|PAD|UNK)>|\[/?INST\]|\[/?AVAILABLE_TOOLS\]|"
    r"\[/?TOOL_RESULTS\]|\[TOOL_CALLS\]|\[BOS\]|\[PAD\]|\[UNK\]"
)


def special_tokens(sources, templates):
    found = set()
    for s in sources:
        found.update(v for v in s["special_tokens"].values() if v)
    for text in templates.values():
        found.update(CONTROL_RE.findall(text))
    found.discard("")
    return sorted(found)


def build_tokenizer(specials):
    tok = Tokenizer.from_file(BASE_TOKENIZER)
    have = {t.content for t in tok.get_added_tokens_decoder().values()}
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials if s not in have])
    tok.save(os.path.join(ROOT, "tokenizer.json"), pretty=False)


def model_dir(tmp, source, template):
    d = os.path.join(tmp, source["name"])
    os.makedirs(d)
    shutil.copy(os.path.join(ROOT, "tokenizer.json"), d)
    cfg = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "clean_up_tokenization_spaces": False}
    for k, v in source["special_tokens"].items():
        if v is not None:
            cfg[k] = v
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1, ensure_ascii=False)
    with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8", newline="") as f:
        f.write(template)
    return d


def render(tok, messages, add_generation_prompt, kwargs):
    """(text, ids) or the error: {"error": message, "raised": raise_exception was called}."""
    msgs = [{"role": r, "content": c} for r, c in messages]
    try:
        text = tok.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)
        ids = tok.apply_chat_template(
            msgs, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False, **kwargs
        )
    except Exception as e:  # any template failure (UndefinedError, TypeError, ...)
        return {"error": f"{type(e).__name__}: {e}" if type(e) is not jinja2.exceptions.TemplateError else str(e),
                "raised": type(e) is jinja2.exceptions.TemplateError}
    if re.search(r" at 0x[0-9a-f]+>", text):
        return None  # prints a Python object's address: no stable golden
    assert isinstance(text, str) and isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert ids == tok(text, add_special_tokens=False)["input_ids"], (text, ids)
    return {"text": text, "ids": ids}


def contexts(cases):
    """DESIGN §4 contexts for `--prompt PROMPT --preference PREFERENCE [--preference-in user]`: the
    names of the cases that are the pref and base contexts, and the system-message fallback taken
    (None, "raises": the template raised on the system message, "drops": it rendered without the
    preference text)."""
    if any(k not in cases for k in ("pref", "base", "pref_in_user")):
        return None
    out = {"base": "base"}
    out["user"] = {"pref": "pref_in_user", "fallback": None}
    sys_placed = cases["pref"]
    if "error" in sys_placed:
        if sys_placed["raised"]:
            out["system"] = {"pref": "pref_in_user", "fallback": "raises"}
        else:
            out["system"] = {"pref": "pref", "fallback": None}
    elif PREFERENCE.strip() not in sys_placed["text"]:
        out["system"] = {"pref": "pref_in_user", "fallback": "drops"}
    else:
        out["system"] = {"pref": "pref", "fallback": None}
    return out


def _line(v):
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def make_goldens():
    sources = json.load(open(os.path.join(ROOT, "sources.json"), encoding="utf-8"))
    templates = {}
    for s in sources:
        with open(os.path.join(ROOT, "templates", s["name"] + ".jinja"), encoding="utf-8", newline="") as f:
            templates[s["name"]] = f.read()
    specials = special_tokens(sources, templates)
    build_tokenizer(specials)

    class FrozenDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return FROZEN_NOW

    ctu.datetime = FrozenDatetime
    head = {
        "versions": {
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "frozen_unix_time": FROZEN_UNIX,
        "preference": PREFERENCE,
        "prompt": PROMPT,
        "added_special_tokens": specials,
    }
    sets = {
        name: {"messages": [{"role": r, "content": c} for r, c in messages], "add_generation_prompt": agp,
               "kwargs": kwargs}
        for name, messages, agp, kwargs in MESSAGE_SETS
    }
    lines = ["{"]
    for k, v in head.items():
        lines.append(f" {_line(k)}: {_line(v)},")
    lines.append(' "message_sets": {')
    lines.append(",\n".join(f"  {_line(k)}: {_line(v)}" for k, v in sets.items()))
    lines.append(" },")
    lines.append(' "templates": [')
    blocks = []
    n = errs = 0
    with tempfile.TemporaryDirectory() as tmp:
        for s in sources:
            d = model_dir(tmp, s, templates[s["name"]])
            tok = AutoTokenizer.from_pretrained(d)
            cases = {}
            for name, messages, agp, kwargs in MESSAGE_SETS:
                # kwargs cases only where the template reads the variable.
                if any(k not in templates[s["name"]] for k in kwargs):
                    continue
                got = render(tok, messages, agp, kwargs)
                if got is not None:
                    cases[name] = got
            n += len(cases)
            errs += sum("error" in c for c in cases.values())
            block = ["  {"]
            block.append(f'   "name": {_line(s["name"])},')
            block.append(f'   "special_tokens_map": {_line(tok.special_tokens_map)},')
            block.append(f'   "contexts": {_line(contexts(cases))},')
            block.append('   "cases": {')
            block.append(",\n".join(f"    {_line(k)}: {_line(v)}" for k, v in cases.items()))
            block.append("   }")
            block.append("  }")
            blocks.append("\n".join(block))
    lines.append(",\n".join(blocks))
    lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    with open(os.path.join(ROOT, "goldens.json"), "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{len(sources)} templates, {n} cases ({errs} errors)")


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--import":
        import_templates(sys.argv[2], sys.argv[3], everything=sys.argv[4:] == ["--all"])
    elif len(sys.argv) == 1:
        make_goldens()
    else:
        raise SystemExit(__doc__)
