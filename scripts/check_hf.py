#!/usr/bin/env python3
"""Black-box parity checker: the `rear` binary against HF transformers (DESIGN.md section 4).

    python3 scripts/check_hf.py --seeds 0-20 --rear target/release/rear

For every seed it writes a random small checkpoint with `save_pretrained` (Llama / Mistral / Qwen2 /
Qwen3, random GQA/MQA, head dims 8..128, 1-4 layers, tied or not, rope default/linear/llama3/yarn/dynamic,
biases, sliding windows, bf16/f16/f32 storage, sometimes sharded, sometimes rewritten in the
transformers-4.x config style), a trained tokenizer in one of several styles (byte-level BPE with
a Llama-3 or Qwen pre-tokenizer, GPT-2 byte-level, SentencePiece-like BPE with byte fallback, in
the newer Metaspace form or the legacy normalizer form, with the tokenizer classes real
checkpoints name) and a realistic chat template; then it drives `rear generate|score|tokenize
--json` and compares with transformers (weights as stored, upcast to float32):

  score        per-token log-probs (1e-4 f32 storage, 2e-3 bf16/f16), base context, lambda mix
  greedy       --ignore-eos vs HF greedy; without it vs HF with the model's own EOS ids
  guided       --base-prompt-ids B --lambda L vs HF CFG (guidance_scale=L, negative_prompt_ids=B)
  beam         --algo beam --beams B --ignore-eos vs HF num_beams=B (all B, in order)
  guided beam  vs a brute-force reference of DESIGN section 2 (no cache)
  tokenize     pref/base ids and text vs apply_chat_template (system fallback per the contract)
  text gen     --prompt T --preference P --lambda 3 vs HF CFG on the templated ids
  sampling     sample/bon/chunk: seeded repeatability and every reported number vs HF
  bad inputs   exit code 2, exactly one stderr line, empty stdout, no panic

Every HF argmax decision used as a reference is checked to have a top-1/top-2 gap > --min-gap
(default 1e-3); a case below that is reported as SKIP (not as a pass or a failure).
Exit status: 0 when no check failed, 1 otherwise. Temporary files live under --workdir.
"""

import argparse
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # noqa: BLE001
    pass
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

CORPUS = """\
The pirate ship sailed out of the harbour at dawn, its black flag snapping in the wind.
Captain Morgan shouted: "Hoist the mainsail! Ready the cannons, ye scurvy dogs!"
Arr, matey, there be treasure buried on the island, forty paces north of the old palm tree.
France is a country in Western Europe. Its capital is Paris, a city famous for the Eiffel Tower.
What is the capital of France? The capital of France is Paris. Answer concisely, please.
You are a helpful assistant. Please answer the question below, step by step.
How many legs does a spider have? A spider has 8 legs. Explain it like I'm five.
Write a short poem about the sea. The sea is wide, the sea is deep.
def greet(name):
    return "Hello, " + name + "!"
for i in range(10):
    print(i * i)  # squares
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 -7 +12 50% $19.99 #1 @home
Punctuation: commas, periods. Questions? Exclamations! Colons: semicolons; dashes - (brackets) [lists] {sets} <tags>.
Quotes: 'single' and "double"; it's, don't, we're, they've, I'm, you'll, he'd.
Ça va? Très bien, merci. Größe, Straße, naïve café, résumé. Español: ¿Dónde está la biblioteca?
日本語のテキスト。中文文本。한국어 텍스트. Emoji: 🏴‍☠️ 🙂 🚀 ✨
Machine learning models predict the next token from the previous tokens in a sequence.
Reward models score responses; preferences such as "talk like a pirate" change the answer.
Always answer in French. Be concise. Use bullet points. Talk like a pirate. Be formal and polite.
	Tabs	and  double  spaces   and trailing spaces   
Line one
Line two

Paragraph after a blank line.
"""

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# style -> specials and the templates / tokenizer classes that real checkpoints of that style use
STYLES = {
    "llama3": dict(
        kind="bytelevel_split", split=LLAMA3_SPLIT, nfc=False,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None, post_bos=[True, True, False],
        templates=["llama3_simple", "llama31"], classes=["TokenizersBackend", "PreTrainedTokenizerFast"],
    ),
    "qwen": dict(
        kind="bytelevel_split", split=QWEN_SPLIT, nfc=True,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], nonspecial=["<think>", "</think>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, post_bos=[False],
        templates=["qwen25", "qwen3", "chatml_raise", "chatml_plain"], classes=["TokenizersBackend", "Qwen2Tokenizer"],
    ),
    "gpt2": dict(
        kind="bytelevel_gpt2",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        bos="<|endoftext|>", eos="<|im_end|>", pad=None, unk="<|endoftext|>", post_bos=[False],
        templates=["smollm", "phi3", "phi3_drops_system"], classes=["TokenizersBackend", "GPT2Tokenizer"],
    ),
    "llama2": dict(
        kind="sp_legacy",
        specials=["<unk>", "<s>", "</s>"],
        bos="<s>", eos="</s>", pad=None, unk="<unk>", post_bos=[True],
        templates=["mistral", "mistral_v3", "llama2", "zephyr"],
        classes=["TokenizersBackend", "LlamaTokenizer", "LlamaTokenizerFast"],
    ),
    "metaspace": dict(
        kind="sp_metaspace",
        specials=["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"],
        bos="<s>", eos="</s>", pad=None, unk="<unk>", post_bos=[True],
        templates=["gemma", "mistral", "mistral_v3"], classes=["TokenizersBackend", "LlamaTokenizer"],
    ),
}

_BASE_TOKENIZERS = {}


def corpus_lines():
    lines = CORPUS.splitlines(keepends=True)
    return lines * 4


def train_base(style_name):
    if style_name in _BASE_TOKENIZERS:
        return _BASE_TOKENIZERS[style_name]
    st = STYLES[style_name]
    kind = st["kind"]
    specials = list(st["specials"])
    if kind.startswith("bytelevel"):
        tok = Tokenizer(models.BPE())
        if kind == "bytelevel_split":
            tok.normalizer = normalizers.NFC() if st.get("nfc") else None
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(st["split"]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=700, min_frequency=2, special_tokens=specials[:1],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus_lines(), trainer)
        tok.add_special_tokens(specials[1:])
    else:
        # SentencePiece-like BPE with byte fallback (Llama-2 / Mistral / Gemma style).
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        bytes_toks = [f"<0x{i:02X}>" for i in range(256)]
        if kind == "sp_legacy":
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.pre_tokenizer = None
            tok.decoder = decoders.Sequence([
                decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
            # trainer must see the normalized form
            trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=2, special_tokens=specials[:3] + bytes_toks,
                                          show_progress=False, limit_alphabet=200)
            tok.train_from_iterator(corpus_lines(), trainer)
        else:
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
            tok.decoder = decoders.Sequence([
                decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
            trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=2, special_tokens=specials[:3] + bytes_toks,
                                          show_progress=False, limit_alphabet=200)
            tok.train_from_iterator(corpus_lines(), trainer)
        tok.add_special_tokens(specials[3:])
    for t in st.get("nonspecial", []):
        tok.add_tokens([t])
    _BASE_TOKENIZERS[style_name] = tok
    return tok


def build_tokenizer(rng, style_name):
    """A transformers tokenizer (saved later) and a description of its variant."""
    st = STYLES[style_name]
    base = train_base(style_name)
    tok = Tokenizer.from_str(base.to_str())
    add_bos = rng.choice(st["post_bos"])
    bos = st["bos"]
    if add_bos and bos:
        bid = tok.token_to_id(bos)
        if st["kind"].startswith("bytelevel"):
            tok.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                              special_tokens=[(bos, bid)])])
        else:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bid)])
    elif st["kind"].startswith("bytelevel"):
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.post_processor = None
    kw = dict(tokenizer_object=tok, clean_up_tokenization_spaces=False, model_max_length=4096)
    for k in ("bos", "eos", "pad", "unk"):
        if st.get(k):
            kw[k + "_token"] = st[k]
    ft = PreTrainedTokenizerFast(**kw)
    variant = dict(style=style_name, add_bos=bool(add_bos and bos),
                   tokenizer_class=rng.choice(st["classes"]),
                   template=rng.choice(st["templates"]),
                   template_storage=rng.choice(["jinja", "tokenizer_config"]))
    if variant["tokenizer_class"].startswith("LlamaTokenizer"):
        variant["legacy"] = rng.choice([True, False, None])
        variant["add_bos_token"] = rng.choice([True, None])
    elif rng.random() < 0.25:
        variant["add_bos_token"] = rng.choice([True, False])
    if rng.random() < 0.25:
        variant["clean_up_tokenization_spaces"] = True
    return ft, variant


def save_tokenizer(ft, d, variant):
    ft.chat_template = TEMPLATES[variant["template"]]
    ft.save_pretrained(d)
    cfg_path = os.path.join(d, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8"))
    jinja = os.path.join(d, "chat_template.jinja")
    if variant["template_storage"] == "tokenizer_config" and os.path.exists(jinja):
        cfg["chat_template"] = open(jinja, encoding="utf-8").read()
        os.remove(jinja)
    cfg["tokenizer_class"] = variant["tokenizer_class"]
    if variant.get("legacy") is not None:
        cfg["legacy"] = variant["legacy"]
    if variant.get("clean_up_tokenization_spaces"):
        cfg["clean_up_tokenization_spaces"] = True
    if variant.get("add_bos_token") is not None:
        cfg["add_bos_token"] = variant["add_bos_token"]
        cfg["add_eos_token"] = False
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# Chat templates (transcriptions of the public templates of real models, and small variants)
# ----------------------------------------------------------------------------------------------

TEMPLATES = {}

TEMPLATES["llama3_simple"] = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = none %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- bos_token }}\n"
    "{%- if system_message is not none %}\n"
    "    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}\n"
    "{%- endif %}\n"
    "{%- for message in loop_messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

TEMPLATES["llama31"] = r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
'''

TEMPLATES["qwen25"] = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
'''

TEMPLATES["qwen3"] = r'''{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' + content }}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}'''

TEMPLATES["chatml_raise"] = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('Unsupported role: ' + message['role'] + '!') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TEMPLATES["chatml_plain"] = (
    "{%- for message in messages %}\n"
    "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

TEMPLATES["smollm"] = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TEMPLATES["phi3"] = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

TEMPLATES["phi3_drops_system"] = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
    "{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\\n'}}{% endif %}{% endfor %}"
)

TEMPLATES["mistral"] = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

TEMPLATES["mistral_v3"] = r'''{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
'''

TEMPLATES["llama2"] = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

TEMPLATES["zephyr"] = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

TEMPLATES["gemma"] = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Write a short poem about the sea.",
    "  Leading and trailing spaces  ",
    "Line one\nLine two\n\nParagraph, with\ttab.",
    "Ça va? Très bien — “quotes” and naïve café.",
    "日本語のテキスト 🏴‍☠️ emoji 🚀",
    "def greet(name):\n    return 'Hello, ' + name",
    "Numbers 3.14159 and $19.99 and 2024!",
    "Tell me a joke about pirates.",
    "a",
    "Explain   multiple    spaces.",
    " [INST] looks like markup [/INST] ",
    "Specials in text: <|im_end|> <s> </s> <|eot_id|> <end_of_turn> done",
    "Decomposed: cafe\u0301 nai\u0308ve, composed: café naïve",
    "   ",
]
PREFERENCES = [
    "Always answer like a pirate.",
    "Be concise.",
    "Réponds en français, s'il te plaît.",
    "  Use bullet points.  ",
    "Answer in exactly three words.\nNo punctuation.",
    "You are a helpful assistant.",
]

# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def pick_dims(rng, arch):
    head_dim = rng.choice([8, 12, 16, 24, 32, 40, 64, 80, 96, 128])
    max_heads = max(1, 256 // head_dim)
    heads = rng.choice([h for h in [1, 2, 3, 4, 6, 8, 12, 16] if h <= max_heads])
    divs = [k for k in range(1, heads + 1) if heads % k == 0]
    kv = rng.choice(divs)
    explicit = arch == "qwen3" or rng.random() < 0.4
    if explicit:
        hidden = rng.choice([h for h in range(32, 257, 8)])
        if arch != "qwen3":  # transformers validates hidden % heads for these even with head_dim given
            hidden = max(heads, hidden - hidden % heads)
    else:
        hidden = heads * head_dim
        if hidden < 16:
            hidden, explicit = 32, True
    return hidden, heads, kv, head_dim, explicit


# the architectures real checkpoints pair with each tokenizer style (Llama 3, Qwen, SmolLM, Llama 2 /
# TinyLlama / Mistral v0.1, Mistral v0.3); a quarter of the seeds pair at random instead
REALISTIC_ARCH = {"llama3": ["llama"], "qwen": ["qwen2", "qwen3"], "gpt2": ["llama"], "llama2": ["llama", "mistral"],
                  "metaspace": ["mistral", "llama"]}


def random_spec(rng, vocab, style=None):
    arch = rng.choice(["llama", "llama", "mistral", "qwen2", "qwen3"])
    if style in REALISTIC_ARCH and rng.random() < 0.75:
        arch = rng.choice(REALISTIC_ARCH[style])
    hidden, heads, kv, head_dim, explicit = pick_dims(rng, arch)
    inter = rng.choice([32, 48, 64, 100, 128, 160, 200, 256, 384])
    layers = rng.randint(1, 4)
    extra_vocab = rng.choice([0, 0, 0, 5, 64 - (vocab % 64)])
    spec = dict(
        arch=arch, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        explicit_head_dim=explicit, intermediate_size=inter, num_hidden_layers=layers,
        vocab_size=vocab + extra_vocab, rms_norm_eps=rng.choice([1e-5, 1e-6]),
        rope_theta=rng.choice([10000.0, 500000.0, 1000000.0, 100.0]),
        tie=rng.random() < 0.4, dtype=rng.choice(["float32", "bfloat16", "float16"]),
        max_pos=rng.choice([512, 1024, 320]), std=rng.uniform(0.2, 0.5),
        shard=rng.random() < 0.3, legacy_config=rng.random() < 0.35,
    )
    if arch == "llama":
        spec["rope"] = rng.choice(["default", "linear", "llama3", "llama3_noorig", "yarn", "dynamic"])
        spec["attention_bias"] = rng.random() < 0.35
        spec["mlp_bias"] = rng.random() < 0.3
    else:
        spec["rope"] = rng.choice(["default", "default", "default", "yarn", "dynamic"])
    if arch == "qwen3":
        spec["attention_bias"] = rng.random() < 0.2
    if arch == "mistral":
        spec["sliding_window"] = rng.choice([4, 8, 8, 16, 32, None])
    if arch in ("qwen2", "qwen3") and rng.random() < 0.3:
        spec["sliding_window"] = rng.choice([4, 8, 16])
        spec["max_window_layers"] = rng.randint(0, layers)
    return spec


def build_model(spec, bos_id, eos_id, pad_id):
    common = dict(
        vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"], num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"], max_position_embeddings=spec["max_pos"],
        rms_norm_eps=spec["rms_norm_eps"], tie_word_embeddings=spec["tie"], initializer_range=spec["std"],
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, hidden_act="silu",
    )
    if spec["explicit_head_dim"]:
        common["head_dim"] = spec["head_dim"]
    rope = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    if spec.get("rope") == "linear":
        rope = {"rope_type": "linear", "rope_theta": spec["rope_theta"], "factor": 2.5}
    elif spec.get("rope") == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": spec["rope_theta"], "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    elif spec.get("rope") == "llama3_noorig":
        # transformers defaults original_max_position_embeddings to max_position_embeddings
        rope = {"rope_type": "llama3", "rope_theta": spec["rope_theta"], "factor": 4.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0}
    elif spec.get("rope") == "yarn":
        # factor, attention factor (explicit, from mscale/mscale_all_dim, or from the factor), betas
        # and truncate vary with the head dim and theta; max_pos // 8 as the pretraining length
        rope = {"rope_type": "yarn", "rope_theta": spec["rope_theta"], "factor": 4.0,
                "original_max_position_embeddings": spec["max_pos"] // 8}
        v = spec["head_dim"] % 4
        if v == 1:
            rope.update(attention_factor=0.9, beta_fast=16, beta_slow=2, truncate=False)
        elif v == 2:
            rope.update(mscale=1.0, mscale_all_dim=0.5, factor=8.0)
        elif v == 3:
            rope.update(truncate=False, factor=2.5)
    elif spec.get("rope") == "dynamic":
        rope = {"rope_type": "dynamic", "rope_theta": spec["rope_theta"], "factor": 2.0}
    common["rope_parameters"] = rope
    a = spec["arch"]
    if a == "llama":
        cfg = LlamaConfig(**common, attention_bias=spec["attention_bias"], mlp_bias=spec["mlp_bias"])
        m = LlamaForCausalLM(cfg)
    elif a == "mistral":
        cfg = MistralConfig(**common, sliding_window=spec.get("sliding_window"))
        m = MistralForCausalLM(cfg)
    elif a == "qwen2":
        sw = spec.get("sliding_window")
        cfg = Qwen2Config(**common, use_sliding_window=sw is not None, sliding_window=sw,
                          max_window_layers=spec.get("max_window_layers", common["num_hidden_layers"]))
        m = Qwen2ForCausalLM(cfg)
    else:
        sw = spec.get("sliding_window")
        cfg = Qwen3Config(**common, attention_bias=spec.get("attention_bias", False), use_sliding_window=sw is not None,
                          sliding_window=sw, max_window_layers=spec.get("max_window_layers", common["num_hidden_layers"]))
        m = Qwen3ForCausalLM(cfg)
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in sorted(m.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.3 * torch.randn(p.shape, generator=g)
            else:
                v = spec["std"] * torch.randn(p.shape, generator=g)
            p.copy_(v)
    return m.to(getattr(torch, spec["dtype"])).eval()


def to_legacy_config(path, spec):
    """Rewrite config.json the transformers-4.x way (top-level rope_theta / rope_scaling, torch_dtype)."""
    c = json.load(open(path))
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = rp.get("rope_theta", spec["rope_theta"])
    rt = rp.get("rope_type", "default")
    if rt == "default":
        c["rope_scaling"] = None
    else:
        sc = {k: v for k, v in rp.items() if k != "rope_theta"}
        if rt == "linear" and random.Random(spec["seed"]).random() < 0.5:
            sc.pop("rope_type")
            sc["type"] = "linear"
        c["rope_scaling"] = sc
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    c.pop("layer_types", None)
    if not spec["explicit_head_dim"]:
        c.pop("head_dim", None)
    c["transformers_version"] = "4.46.0"
    json.dump(c, open(path, "w"), indent=2)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


class Results:
    def __init__(self, verbose):
        self.counts = {}  # name -> [pass, fail, skip, warn]
        self.failures = []
        self.skips = []
        self.notes = []
        self.verbose = verbose
        self.seed = None

    def _c(self, name):
        return self.counts.setdefault(name, [0, 0, 0, 0])

    def ok(self, name):
        self._c(name)[0] += 1

    def fail(self, name, cmd, expected, got, note=""):
        self._c(name)[1] += 1
        f = dict(seed=self.seed, check=name, cmd=cmd, expected=expected, got=got, note=note)
        self.failures.append(f)
        print(f"  FAIL [{name}] seed={self.seed} {note}\n    cmd: {cmd}\n    expected: {short(expected)}\n"
              f"    got:      {short(got)}", flush=True)

    def skip(self, name, why):
        self._c(name)[2] += 1
        self.skips.append((self.seed, name, why))
        if self.verbose:
            print(f"  skip [{name}] {why}", flush=True)

    def warn(self, name, cmd, why):
        """Outside the tolerance, but explained by float32 rounding (rear is no further from a
        float64 reference than transformers' own float32 forward is, within a factor)."""
        self._c(name)[3] += 1
        self.notes.append(f"WARN [{name}] seed {self.seed}: {why}\n    cmd: {short(cmd, 300)}")
        print(f"  WARN [{name}] seed={self.seed} {why}", flush=True)

    def check(self, name, cond, cmd, expected, got, note=""):
        if cond:
            self.ok(name)
        else:
            self.fail(name, cmd, expected, got, note)
        return cond


def short(x, n=600):
    s = x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


# ----------------------------------------------------------------------------------------------
# The binary
# ----------------------------------------------------------------------------------------------


class Rear:
    def __init__(self, path, model_dir, timeout=600):
        self.path = path
        self.model = model_dir
        self.timeout = timeout

    def run(self, args, model=True):
        full = [self.path] + args[:1] + (["--model", self.model] if model and self.model else []) + args[1:]
        t = time.time()
        try:
            p = subprocess.run(full, capture_output=True, timeout=self.timeout)
            rc, out, err = p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            rc, out, err = -999, "", "TIMEOUT"
        return rc, out, err, cmdline(full), time.time() - t

    def json_lines(self, args):
        rc, out, err, cmd, _ = self.run(args)
        if rc != 0:
            return None, cmd, f"exit {rc}: {err.strip()[:500]}"
        try:
            return [json.loads(l) for l in out.splitlines() if l.strip()], cmd, err
        except Exception as e:  # noqa: BLE001
            return None, cmd, f"bad JSON on stdout ({e}): {out[:300]}"


def cmdline(args):
    import shlex
    return " ".join(shlex.quote(a) for a in args)


def ids_arg(ids):
    return ",".join(str(i) for i in ids)


# ----------------------------------------------------------------------------------------------
# HF references
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def all_logprobs(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


@torch.no_grad()
def last_logprobs(model, ids):
    return all_logprobs(model, ids)[-1]


def token_logprobs(model, prompt, resp):
    lp = all_logprobs(model, prompt + resp)
    n = len(prompt)
    return [float(lp[n - 1 + i, t]) for i, t in enumerate(resp)]


def top_gap(row):
    v = torch.topk(row.double(), 2).values
    return float(v[0] - v[1])


def gen_cfg(never_eos, **kw):
    base = dict(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=0,
                eos_token_id=[never_eos], bos_token_id=None, repetition_penalty=None)
    base.update(kw)
    return GenerationConfig(**base)


@torch.no_grad()
def hf_greedy(model, ids, n, never_eos, eos=None):
    cfg = gen_cfg(never_eos, max_new_tokens=n)
    if eos is not None:
        cfg.eos_token_id = eos
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=cfg, return_dict_in_generate=True, output_logits=True)
    toks = out.sequences[0, len(ids):].tolist()
    gaps = [top_gap(l[0]) for l in out.logits]
    return toks, gaps


@torch.no_grad()
def hf_cfg(model, ids, base, lam, n, never_eos):
    cfg = gen_cfg(never_eos, max_new_tokens=n, guidance_scale=lam)
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         negative_prompt_ids=torch.tensor([base]), generation_config=cfg,
                         return_dict_in_generate=True, output_scores=True)
    toks = out.sequences[0, len(ids):].tolist()
    gaps = [top_gap(s[0]) for s in out.scores]
    return toks, gaps


@torch.no_grad()
def hf_beam(model, ids, B, n, never_eos):
    cfg = gen_cfg(never_eos, max_new_tokens=n, num_beams=B, num_return_sequences=B, length_penalty=1.0,
                  early_stopping=False)
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=cfg, return_dict_in_generate=True, output_scores=True)
    return [s[len(ids):].tolist() for s in out.sequences], (out.sequences_scores * n).tolist()


@torch.no_grad()
def ref_beam(model, contexts, weights, B, steps):
    """Brute-force token-level beam over s = sum_k w_k log p_k (no cache, float64); returns hyps and the
    smallest decision gap (B-th vs B+1-th at every step, and between final ranks)."""
    hyps = [([], 0.0)]
    min_gap = float("inf")
    for _ in range(steps):
        cands = []
        for bi, (seq, score) in enumerate(hyps):
            s = None
            for c, w in zip(contexts, weights):
                lp = last_logprobs(model, c + seq).double()
                s = w * lp if s is None else s + w * lp
            vals, idx = torch.topk(s, B + 1)
            for v, t in zip(vals.tolist(), idx.tolist()):
                cands.append((score + v, bi, t))
        cands.sort(key=lambda c: (-c[0], c[2], c[1]))
        min_gap = min(min_gap, cands[B - 1][0] - cands[B][0])
        hyps = [(hyps[bi][0] + [t], sc) for sc, bi, t in cands[:B]]
    for i in range(B - 1):
        min_gap = min(min_gap, hyps[i][1] - hyps[i + 1][1])
    return hyps, min_gap


@torch.no_grad()
def ref_greedy(model, contexts, weights, n):
    """Greedy over s = sum_k w_k log p(v | ctx_k + y) with full forwards (no cache); with gaps."""
    y, gaps = [], []
    for _ in range(n):
        s = None
        for c, w in zip(contexts, weights):
            lp = last_logprobs(model, c + y).double()
            s = w * lp if s is None else s + w * lp
        gaps.append(top_gap(s))
        y.append(int(torch.argmax(s)))
    return y, gaps


@torch.no_grad()
def ref_beam_eos(model, contexts, weights, B, steps, eos, length_norm):
    """README beam rule with EOS: order by (score desc, token id, beam index); walking that order a
    non-EOS expansion joins the next beam until B are live, an EOS expansion ranked within the first
    B finishes; stop once B have finished before the last step (best B of them), else at `steps`
    finished and live compete;
    rank by S (or S / num_tokens with length_norm). Returns (hyps, smallest decision gap)."""
    live, finished, gaps = [([], 0.0)], [], []
    stopped = False
    for step in range(steps):
        cands = []
        for bi, (seq, sc) in enumerate(live):
            s = None
            for c, w in zip(contexts, weights):
                lp = last_logprobs(model, c + seq).double()
                s = w * lp if s is None else s + w * lp
            vals, idx = torch.topk(s, min(s.numel(), 2 * B + 2))
            cands += [(sc + v, t, bi) for v, t in zip(vals.tolist(), idx.tolist())]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        new_live, stop = [], len(cands) - 1
        for rank, (sc, t, bi) in enumerate(cands):
            if len(new_live) == B:
                stop = rank
                break
            if t in eos:
                if rank < B:
                    finished.append((live[bi][0] + [t], sc))
            else:
                new_live.append((live[bi][0] + [t], sc))
        gaps.append(cands[stop - 1][0] - cands[stop][0])
        gaps.append(cands[B - 1][0] - cands[B][0])
        live = new_live
        # B finished before the last step ends the search; at the last step the beams that reach
        # the length limit compete with the finished ones (as HF: every top candidate finishes then)
        if len(finished) >= B and step < steps - 1:
            stopped = True
            break
    pool = finished if stopped else finished + live
    key = (lambda h: h[1] / len(h[0])) if length_norm else (lambda h: h[1])
    pool.sort(key=lambda h: -key(h))
    for i in range(min(B, len(pool) - 1)):
        gaps.append(key(pool[i]) - key(pool[i + 1]))
    return pool[:B], min(gaps)


def hf_chat_ids(tok, messages):
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return [int(x) for x in out]


def hf_chat_text(tok, messages):
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def expected_contexts(tok, prompt, pref, raw=False, pref_in="system"):
    """What DESIGN section 4 says the contexts are, computed with transformers.
    Returns dict(pref_ids, base_ids, pref_text, base_text, fallback) where fallback is None,
    'raises' or 'drops'."""
    if raw:
        ptxt = prompt if pref is None else f"{pref}\n\n{prompt}"
        pids = tok(ptxt)["input_ids"]
        if pref is None:
            return dict(pref_ids=pids, base_ids=None, pref_text=ptxt, base_text=None, fallback=None)
        return dict(pref_ids=pids, base_ids=tok(prompt)["input_ids"], pref_text=ptxt, base_text=prompt, fallback=None)
    base_msgs = [{"role": "user", "content": prompt}]
    btxt, bids = hf_chat_text(tok, base_msgs), hf_chat_ids(tok, base_msgs)
    if pref is None:
        return dict(pref_ids=bids, base_ids=None, pref_text=btxt, base_text=None, fallback=None)
    user_msgs = [{"role": "user", "content": f"{pref}\n\n{prompt}"}]
    fallback = None
    if pref_in == "user":
        msgs = user_msgs
    else:
        msgs = [{"role": "system", "content": pref}, {"role": "user", "content": prompt}]
        try:
            t = hf_chat_text(tok, msgs)
            if pref.strip() not in t:
                fallback = "drops"
        except Exception as e:  # jinja2 TemplateError from raise_exception
            if "TemplateError" not in type(e).__name__ and "raise" not in str(e).lower() and "support" not in str(e).lower():
                raise
            fallback = "raises"
        if fallback:
            msgs_sys = msgs
            msgs = user_msgs
    res = dict(pref_ids=hf_chat_ids(tok, msgs), pref_text=hf_chat_text(tok, msgs), base_ids=bids, base_text=btxt,
               fallback=fallback)
    if fallback == "drops":
        res["literal_pref_ids"] = hf_chat_ids(tok, msgs_sys)
    return res


# ----------------------------------------------------------------------------------------------
# One seed
# ----------------------------------------------------------------------------------------------


class Case:
    def __init__(self, seed, args, R):
        self.seed = seed
        self.args = args
        self.R = R
        self.rng = random.Random(seed * 7919 + 17)
        self.dir = os.path.join(args.workdir, f"seed{seed}")

    # -- setup --
    def setup(self):
        rng = self.rng
        style = rng.choice(list(STYLES))
        ft, tv = build_tokenizer(rng, style)
        V = len(ft)
        spec = random_spec(rng, V, style)
        spec["seed"] = self.seed
        st = STYLES[style]
        eos_id = ft.convert_tokens_to_ids(st["eos"])
        bos_id = ft.convert_tokens_to_ids(st["bos"]) if st["bos"] else None
        pad_id = ft.convert_tokens_to_ids(st["pad"]) if st.get("pad") else None
        model = build_model(spec, bos_id, eos_id, pad_id)
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        kw = {"max_shard_size": "40KB"} if spec["shard"] else {}
        model.save_pretrained(self.dir, **kw)
        save_tokenizer(ft, self.dir, tv)
        if spec["legacy_config"]:
            to_legacy_config(os.path.join(self.dir, "config.json"), spec)
        # generation_config.json sometimes carries sampling defaults (Llama 3 style); greedy must ignore them
        gpath = os.path.join(self.dir, "generation_config.json")
        if os.path.exists(gpath) and rng.random() < 0.4:
            g = json.load(open(gpath))
            g.update(do_sample=True, temperature=0.6, top_p=0.9)
            json.dump(g, open(gpath, "w"), indent=2)
        self.spec, self.tv = spec, tv
        self.tol = 1e-4 if spec["dtype"] == "float32" else 2e-3
        self.V = spec["vocab_size"]
        self.tokV = V
        self.never_eos = self.V + 7  # an id the model can never produce
        self.eos_id = eos_id
        self.load_hf()
        self.rear = Rear(self.args.rear, self.dir)
        desc = (f"{spec['arch']} h={spec['hidden_size']} heads={spec['num_attention_heads']}/"
                f"{spec['num_key_value_heads']} hd={spec['head_dim']}{'(explicit)' if spec['explicit_head_dim'] else ''} "
                f"L={spec['num_hidden_layers']} inter={spec['intermediate_size']} V={self.V} {spec['dtype']} "
                f"tie={spec['tie']} rope={spec.get('rope', 'default')}/{spec['rope_theta']} "
                f"sw={spec.get('sliding_window')} mwl={spec.get('max_window_layers')} "
                f"abias={spec.get('attention_bias')} mlpbias={spec.get('mlp_bias')} shard={spec['shard']} "
                f"cfg4x={spec['legacy_config']} std={spec['std']:.2f} | tok={style} cls={tv['tokenizer_class']} "
                f"legacy={tv.get('legacy')} add_bos_token={tv.get('add_bos_token')} post_bos={tv['add_bos']} "
                f"cleanup={tv.get('clean_up_tokenization_spaces', False)} "
                f"tpl={tv['template']}/{tv['template_storage']}")
        self.desc = desc
        print(f"seed {self.seed}: {desc}", flush=True)

    def load_hf(self):
        self.model = AutoModelForCausalLM.from_pretrained(self.dir, dtype=torch.float32)
        self.model.eval()
        self.tok = AutoTokenizer.from_pretrained(self.dir)

    def rand_ids(self, n):
        return [self.rng.randrange(self.V) for _ in range(n)]

    def check_token_lps(self, name, cmd, pairs, note=""):
        """pairs: (got list, prompt, response, HF float32 list). Fails only when rear is clearly further
        from a float64 forward than HF's float32 forward is."""
        ok = all(g is not None and self.close(g, e, self.tol) for g, _, _, e in pairs)
        if ok:
            return self.R.ok(name)
        if all(g is not None and len(g) == len(e) for g, _, _, e in pairs):
            rear_err = hf_err = 0.0
            for g, P, Y, e in pairs:
                r64 = self.token_logprobs64(P, Y)
                rear_err = max(rear_err, max(abs(a - b) for a, b in zip(g, r64)))
                hf_err = max(hf_err, max(abs(a - b) for a, b in zip(e, r64)))
            if rear_err <= 4 * hf_err + self.tol / 2:
                return self.R.warn(name, cmd, f"vs float64: rear err {rear_err:.2e}, HF float32 err {hf_err:.2e}")
            note += f" vs float64: rear err {rear_err:.2e}, HF f32 err {hf_err:.2e}"
        self.R.fail(name, cmd, [e for _, _, _, e in pairs], [g for g, _, _, _ in pairs], note=note)

    def token_logprobs64(self, P, Y):
        if getattr(self, "model64", None) is None:
            self.model64 = AutoModelForCausalLM.from_pretrained(self.dir, dtype=torch.float64).eval()
        with torch.no_grad():
            lp = torch.log_softmax(self.model64(torch.tensor([P + Y])).logits[0], -1)
        return [float(lp[len(P) - 1 + i, t]) for i, t in enumerate(Y)]

    def f64_errors(self, P, Y, got):
        """max |rear - f64| and max |HF f32 - f64| over the response's log-probs."""
        if getattr(self, "model64", None) is None:
            self.model64 = AutoModelForCausalLM.from_pretrained(self.dir, dtype=torch.float64).eval()
        with torch.no_grad():
            lp = torch.log_softmax(self.model64(torch.tensor([P + Y])).logits[0], -1)
        ref = [float(lp[len(P) - 1 + i, t]) for i, t in enumerate(Y)]
        hf = token_logprobs(self.model, P, Y)
        return (max(abs(a - b) for a, b in zip(got, ref)), max(abs(a - b) for a, b in zip(hf, ref)))

    def gap_ok(self, name, gaps, what):
        g = min(gaps) if gaps else float("inf")
        if g <= self.args.min_gap:
            self.R.skip(name, f"seed {self.seed}: {what}: argmax gap {g:.2e} <= {self.args.min_gap}")
            return False
        return True

    def close(self, a, b, tol):
        return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))

    def check_candidate_numbers(self, name, cmd, cand, contexts, weights, lam_form=True):
        """score / logprob_pref / logprob_base of a returned candidate vs HF, plus field sanity."""
        R = self.R
        y = cand["token_ids"]
        n = len(y)
        ok = cand.get("num_tokens") == n
        tl = [token_logprobs(self.model, c, y) if n else [] for c in contexts]
        sums = [sum(t) for t in tl]
        S = sum(w * s for w, s in zip(weights, sums))
        tol = self.tol * max(1, n) * (1 + sum(abs(w) for w in weights))
        exp = dict(logprob_pref=sums[0], logprob_base=sums[-1] if len(sums) > 1 else None, score=S, num_tokens=n)
        got = {k: cand.get(k) for k in exp}
        ok &= abs(cand["logprob_pref"] - sums[0]) <= self.tol * max(1, n)
        if len(sums) > 1:
            ok &= cand.get("logprob_base") is not None and abs(cand["logprob_base"] - sums[-1]) <= self.tol * max(1, n)
        else:
            ok &= cand.get("logprob_base") is None
        ok &= abs(cand["score"] - S) <= tol
        if not ok and cand.get("num_tokens") == n and n:
            # outside the tolerance: is it float32 rounding (HF's own float32 forward as far off)?
            sums64 = [sum(self.token_logprobs64(c, y)) for c in contexts]
            S64 = sum(w * s for w, s in zip(weights, sums64))
            rear_err = max([abs(cand["logprob_pref"] - sums64[0]), abs(cand["score"] - S64)]
                           + ([abs(cand["logprob_base"] - sums64[-1])] if len(sums) > 1 and cand.get("logprob_base")
                              is not None else []))
            hf_err = max([abs(a - b) for a, b in zip(sums, sums64)] + [abs(S - S64)])
            if rear_err <= 4 * hf_err + self.tol / 2:
                R.warn(name + ":numbers", cmd, f"sums off by more than the tolerance; vs float64: rear err "
                       f"{rear_err:.2e}, HF float32 err {hf_err:.2e}: float32 rounding")
                return
            R.fail(name + ":numbers", cmd, exp, got, note=f"vs float64: rear err {rear_err:.2e}, HF f32 err {hf_err:.2e}")
            return
        R.check(name + ":numbers", ok, cmd, exp, got)
        # text field vs HF decode(skip_special_tokens=True)
        if not all(t < self.tokV for t in y):
            try:
                exp_text = self.tok.decode(y, skip_special_tokens=True)
            except Exception as e:  # noqa: BLE001
                exp_text = f"<HF decode raises {type(e).__name__}>"
            R.check("text_field_padded_vocab", isinstance(cand.get("text"), str), cmd,
                    f"a string (DESIGN 4 `\"text\":\"...\"`); HF decode gives {exp_text!r}", cand.get("text"),
                    note=f"ids >= tokenizer size {self.tokV} (model vocab {self.V})")
        else:
            exp_text = self.tok.decode(y, skip_special_tokens=True)
            note = "`text` vs tokenizer.decode(token_ids, skip_special_tokens=True)"
            if cand.get("text") != exp_text:
                tj = Tokenizer.from_file(os.path.join(self.dir, "tokenizer.json")).decode(y, skip_special_tokens=True)
                note += (f"; tokenizer.json's own decoder gives {tj!r} (rear == it: {tj == cand.get('text')}); "
                         f"transformers loaded {type(self.tok).__name__}")
            R.check("text_field", cand.get("text") == exp_text, cmd, exp_text, cand.get("text"), note=note)

    # -- checks --
    def run(self):
        self.setup()
        steps = [
            self.check_score, self.check_greedy, self.check_guided, self.check_beam, self.check_guided_beam,
            self.check_tokenize, self.check_text_generate, self.check_multi_pref, self.check_context_ids,
            self.check_sampling, self.check_sampling_degenerate, self.check_batch, self.check_bad_inputs, self.check_beam_eos, self.check_gguf,
            self.check_eos,
        ]
        if self.args.only:
            steps = [s for s in steps if any(o in s.__name__ for o in self.args.only.split(","))]
        for step in steps:
            t = time.time()
            try:
                step()
            except Exception:  # noqa: BLE001
                self.R.fail("script_error:" + step.__name__, "", "", traceback.format_exc()[-1500:],
                            note="exception inside the checker")
            if self.args.verbose:
                print(f"  {step.__name__}: {time.time() - t:.1f}s", flush=True)

    def check_score(self):
        R, rng = self.R, self.rng
        for plen, rlen in [(rng.randint(1, 30), rng.randint(5, 20)), (1, rng.randint(3, 10)),
                           (rng.randint(100, 200), rng.randint(10, 30))]:
            P, Y = self.rand_ids(plen), self.rand_ids(rlen)
            js, cmd, err = self.rear.json_lines(["score", "--prompt-ids", ids_arg(P), "--response-ids", ids_arg(Y),
                                                 "--json"])
            exp = token_logprobs(self.model, P, Y)
            if js is None:
                R.fail("score_pref", cmd, exp, err)
                continue
            j = js[0]
            got = j.get("token_logprobs_pref")
            if got is not None and len(got) == len(exp) and not self.close(got, exp, self.tol):
                re_, he_ = self.f64_errors(P, Y, got)
                dmax = max(abs(a - b) for a, b in zip(got, exp))
                if re_ <= 4 * he_ + self.tol / 2:
                    R.warn("score_pref", cmd, f"max |rear-HF| {dmax:.2e} > tol {self.tol} (prompt len {plen}); vs a "
                           f"float64 forward: rear err {re_:.2e}, HF float32 err {he_:.2e}: float32 rounding")
                    continue
                R.fail("score_pref", cmd, exp, got, note=f"prompt len {plen}, tol {self.tol}, max diff {dmax:.2e}; "
                       f"vs float64: rear err {re_:.2e}, HF f32 err {he_:.2e}")
                continue
            R.check("score_pref", got is not None and self.close(got, exp, self.tol), cmd, exp, got,
                    note=f"prompt len {plen}, tol {self.tol}")
            R.check("score_fields", j.get("token_logprobs_base") is None and j.get("logprob_base") is None
                    and abs(j.get("logprob_pref", 1e9) - sum(exp)) <= self.tol * rlen
                    and abs(j.get("score", 1e9) - sum(exp)) <= self.tol * rlen, cmd,
                    dict(logprob_pref=sum(exp), score=sum(exp), logprob_base=None, token_logprobs_base=None),
                    {k: j.get(k) for k in ("logprob_pref", "score", "logprob_base", "token_logprobs_base")})
        # with a base context and lambda
        for lam in [rng.choice([0.5, 1.5, 3.0, -1.0, 0.0])]:
            P, B, Y = self.rand_ids(rng.randint(2, 40)), self.rand_ids(rng.randint(1, 40)), self.rand_ids(rng.randint(5, 20))
            js, cmd, err = self.rear.json_lines(["score", "--prompt-ids", ids_arg(P), "--base-prompt-ids", ids_arg(B),
                                                 "--response-ids", ids_arg(Y), "--lambda", str(lam), "--json"])
            ep, eb = token_logprobs(self.model, P, Y), token_logprobs(self.model, B, Y)
            S = sum(lam * a + (1 - lam) * b for a, b in zip(ep, eb))
            if js is None:
                R.fail("score_base", cmd, dict(pref=ep, base=eb, score=S), err)
                continue
            j = js[0]
            tol = self.tol * len(Y) * (1 + 2 * abs(lam))
            ok = (self.close(j.get("token_logprobs_pref") or [], ep, self.tol)
                  and self.close(j.get("token_logprobs_base") or [], eb, self.tol)
                  and abs(j.get("score", 1e9) - S) <= tol
                  and abs(j.get("logprob_base", 1e9) - sum(eb)) <= self.tol * len(Y))
            if not ok and j.get("token_logprobs_pref") and j.get("token_logprobs_base"):
                p64, b64 = self.token_logprobs64(P, Y), self.token_logprobs64(B, Y)
                rear_err = max(max(abs(a - b) for a, b in zip(j["token_logprobs_pref"], p64)),
                               max(abs(a - b) for a, b in zip(j["token_logprobs_base"], b64)))
                hf_err = max(max(abs(a - b) for a, b in zip(ep, p64)), max(abs(a - b) for a, b in zip(eb, b64)))
                if rear_err <= 4 * hf_err + self.tol / 2:
                    R.warn("score_base", cmd, f"vs float64: rear err {rear_err:.2e}, HF float32 err {hf_err:.2e}: "
                           f"float32 rounding")
                    continue
            R.check("score_base", ok, cmd, dict(pref=ep, base=eb, score=S, logprob_base=sum(eb)),
                    dict(pref=j.get("token_logprobs_pref"), base=j.get("token_logprobs_base"), score=j.get("score"),
                         logprob_base=j.get("logprob_base")), note=f"lambda {lam}")

    def check_greedy(self):
        R, rng = self.R, self.rng
        cases = [(rng.randint(2, 30), rng.randint(12, 24)), (1, 12), (rng.randint(100, 200), rng.randint(30, 50))]
        for plen, n in cases:
            P = self.rand_ids(plen)
            exp, gaps = hf_greedy(self.model, P, n, self.never_eos)
            if not self.gap_ok("greedy", gaps, f"greedy plen {plen}"):
                continue
            args = ["generate", "--prompt-ids", ids_arg(P), "--algo", "greedy", "--max-new-tokens", str(n),
                    "--ignore-eos", "--json"]
            js, cmd, err = self.rear.json_lines(args)
            if js is None:
                R.fail("greedy", cmd, exp, err)
                continue
            got = js[0].get("token_ids")
            if R.check("greedy", got == exp and len(js) == 1, cmd, exp, got,
                       note=f"prompt len {plen}, {n} new tokens, min gap {min(gaps):.3g}"
                            + (f", first diff at step {first_diff(exp, got)}" if got != exp else "")):
                self.check_candidate_numbers("greedy", cmd, js[0], [P], [1.0])
                R.check("finish_reason", js[0].get("finish_reason") == "length" and js[0].get("rank") == 0, cmd,
                        "length, rank 0", [js[0].get("finish_reason"), js[0].get("rank")])

    def check_guided(self):
        R, rng = self.R, self.rng
        for lam in [0.5, 1.5, 3.0]:
            long = rng.random() < 0.3
            P = self.rand_ids(rng.randint(100, 180) if long else rng.randint(2, 30))
            B = self.rand_ids(rng.randint(1, 30))
            n = rng.randint(10, 20)
            exp, gaps = hf_cfg(self.model, P, B, lam, n, self.never_eos)
            if not self.gap_ok("guided_greedy", gaps, f"cfg lambda {lam}"):
                continue
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--base-prompt-ids", ids_arg(B),
                                                 "--lambda", str(lam), "--algo", "greedy", "--max-new-tokens", str(n),
                                                 "--ignore-eos", "--json"])
            if js is None:
                R.fail("guided_greedy", cmd, exp, err)
                continue
            got = js[0].get("token_ids")
            if R.check("guided_greedy", got == exp, cmd, exp, got,
                       note=f"lambda {lam}, prompt len {len(P)}, base len {len(B)}"):
                self.check_candidate_numbers("guided_greedy", cmd, js[0], [P, B], [lam, 1 - lam])
                # score reproduces generate (README: bit for bit)
                sj, scmd, serr = self.rear.json_lines(["score", "--prompt-ids", ids_arg(P), "--base-prompt-ids",
                                                       ids_arg(B), "--lambda", str(lam), "--response-ids",
                                                       ids_arg(got), "--json"])
                if sj is not None:
                    R.check("score_equals_generate", sj[0].get("score") == js[0].get("score")
                            and sj[0].get("logprob_pref") == js[0].get("logprob_pref"), scmd,
                            [js[0].get("score"), js[0].get("logprob_pref")],
                            [sj[0].get("score"), sj[0].get("logprob_pref")], note="README: bit for bit")
        # lambda given without a base context: ignored
        P = self.rand_ids(rng.randint(2, 20))
        exp, gaps = hf_greedy(self.model, P, 8, self.never_eos)
        if self.gap_ok("lambda_without_base", gaps, "plain greedy"):
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--lambda", "3",
                                                 "--max-new-tokens", "8", "--ignore-eos", "--algo", "greedy", "--json"])
            R.check("lambda_without_base", js is not None and js[0].get("token_ids") == exp, cmd, exp,
                    js[0].get("token_ids") if js else err)

    def check_beam(self):
        R, rng = self.R, self.rng
        for B in rng.sample([2, 3, 4, 5], 2):
            P = self.rand_ids(rng.choice([1, 15, 16, 17, 31, 32, rng.randint(2, 25), rng.randint(60, 120)]))
            n = rng.randint(6, 12)
            hyps, gap = ref_beam(self.model, [P], [1.0], B, n)
            if gap <= self.args.min_gap:
                R.skip("beam", f"seed {self.seed}: beam B={B}: decision gap {gap:.2e}")
                continue
            exp, hf_scores = hf_beam(self.model, P, B, n, self.never_eos)
            ref = [h[0] for h in hyps]
            if exp != ref:
                R.skip("beam", f"seed {self.seed}: HF beam disagrees with the brute-force reference (HF issue?)")
                self.R.notes.append(f"seed {self.seed}: HF beam {exp} != reference {ref}")
                continue
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--algo", "beam", "--beams",
                                                 str(B), "--max-new-tokens", str(n), "--ignore-eos", "--json"])
            if js is None:
                R.fail("beam", cmd, exp, err)
                continue
            got = [j.get("token_ids") for j in js]
            if R.check("beam", got == exp, cmd, exp, got, note=f"B={B}, prompt len {len(P)}, min gap {gap:.3g}"):
                ok = all(abs(j["score"] - s) <= self.tol * n for j, s in zip(js, hf_scores))
                ok &= [j.get("rank") for j in js] == list(range(B))
                R.check("beam:scores", ok, cmd, hf_scores, [j.get("score") for j in js],
                        note="HF sequences_scores * length")

    def check_guided_beam(self):
        R, rng = self.R, self.rng
        B = rng.choice([2, 3, 4])
        lam = rng.choice([0.5, 2.0, 3.0])
        P, Bs = self.rand_ids(rng.randint(2, 30)), self.rand_ids(rng.randint(1, 30))
        n = rng.randint(5, 8)
        hyps, gap = ref_beam(self.model, [P, Bs], [lam, 1 - lam], B, n)
        if gap <= self.args.min_gap:
            R.skip("guided_beam", f"seed {self.seed}: gap {gap:.2e}")
            return
        js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--base-prompt-ids", ids_arg(Bs),
                                             "--lambda", str(lam), "--algo", "beam", "--beams", str(B),
                                             "--max-new-tokens", str(n), "--ignore-eos", "--json"])
        exp = [h[0] for h in hyps]
        if js is None:
            R.fail("guided_beam", cmd, exp, err)
            return
        got = [j.get("token_ids") for j in js]
        if R.check("guided_beam", got == exp, cmd, exp, got, note=f"B={B} lambda={lam} vs brute force (DESIGN 2)"):
            for j in js:
                self.check_candidate_numbers("guided_beam", cmd, j, [P, Bs], [lam, 1 - lam])

    def check_tokenize(self):
        R, rng = self.R, self.rng
        prompts = rng.sample(PROMPTS, 4)
        for i, text in enumerate(prompts):
            pref = None if i == 0 else rng.choice(PREFERENCES)
            for raw in ([False, True] if i < 2 else [False]):
                args = ["tokenize", "--prompt", text] + (["--preference", pref] if pref else []) + \
                    (["--raw"] if raw else []) + ["--json"]
                try:
                    exp = expected_contexts(self.tok, text, pref, raw=raw)
                except Exception as e:  # noqa: BLE001
                    R.skip("tokenize", f"HF cannot render: {e}")
                    continue
                js, cmd, err = self.rear.json_lines(args)
                name = "tokenize_raw" if raw else "tokenize"
                if js is None:
                    R.fail(name, cmd, exp, err)
                    continue
                j = js[0]
                ok_ids = j.get("pref_ids") == exp["pref_ids"] and j.get("base_ids") == exp["base_ids"]
                note = f"template {self.tv['template']}, class {self.tv['tokenizer_class']}, fallback {exp['fallback']}"
                if not ok_ids and exp["fallback"] == "drops" and j.get("pref_ids") == exp.get("literal_pref_ids"):
                    R.notes.append(f"seed {self.seed}: template drops the system message; rear used it literally")
                if not ok_ids:
                    note += diag_ids(self.tok, exp, j) + self.tokenizer_json_diag(exp, j, raw)
                R.check(name + ":ids", ok_ids, cmd, {k: exp[k] for k in ("pref_ids", "base_ids")},
                        {k: j.get(k) for k in ("pref_ids", "base_ids")}, note=note)
                ok_txt = j.get("pref_text") == exp["pref_text"] and j.get("base_text") == exp["base_text"]
                R.check(name + ":text", ok_txt, cmd, {k: exp[k] for k in ("pref_text", "base_text")},
                        {k: j.get(k) for k in ("pref_text", "base_text")}, note=note)
        # --preference-in user
        text, pref = rng.choice(PROMPTS), rng.choice(PREFERENCES)
        exp = expected_contexts(self.tok, text, pref, pref_in="user")
        js, cmd, err = self.rear.json_lines(["tokenize", "--prompt", text, "--preference", pref, "--preference-in",
                                             "user", "--json"])
        R.check("tokenize_pref_in_user", js is not None and js[0].get("pref_ids") == exp["pref_ids"]
                and js[0].get("base_ids") == exp["base_ids"], cmd, exp, js[0] if js else err)
        # --response TEXT in score tokenized without special tokens
        resp = rng.choice(PROMPTS)
        P = self.rand_ids(5)
        Y = self.tok(resp, add_special_tokens=False)["input_ids"]
        if Y:
            js, cmd, err = self.rear.json_lines(["score", "--prompt-ids", ids_arg(P), "--response", resp, "--json"])
            exp = token_logprobs(self.model, P, Y)
            if js is None:
                R.fail("score_response_text", cmd, dict(ids=Y, lp=exp), err)
            elif len(js[0].get("token_logprobs_pref") or []) != len(Y):
                R.fail("score_response_text", cmd, dict(ids=Y, lp=exp), js[0],
                       note="tokenizer(text, add_special_tokens=False) gives a different number of tokens"
                            + ("" if self.tokenizers_agree(resp) else
                               f" (transformers loads {type(self.tok).__name__}, which differs from tokenizer.json)"))
            else:
                self.check_token_lps("score_response_text", cmd, [(js[0]["token_logprobs_pref"], P, Y, exp)],
                                     note="tokenizer(text, add_special_tokens=False)")

    def tokenizers_agree(self, text):
        tj = Tokenizer.from_file(os.path.join(self.dir, "tokenizer.json"))
        return tj.encode(text, add_special_tokens=False).ids == self.tok(text, add_special_tokens=False)["input_ids"]

    def tokenizer_json_diag(self, exp, j, raw):
        """Is rear's encoding tokenizer.json applied as is (tokenizers library), while transformers
        loaded another pipeline?"""
        tj = Tokenizer.from_file(os.path.join(self.dir, "tokenizer.json"))
        same = True
        for k_ids, k_txt in (("pref_ids", "pref_text"), ("base_ids", "base_text")):
            if exp.get(k_txt) is None:
                continue
            enc = tj.encode(exp[k_txt], add_special_tokens=raw).ids
            same &= enc == j.get(k_ids)
        hf_cls = type(self.tok).__name__
        return (f"; rear == tokenizers.Tokenizer.from_file(tokenizer.json).encode(text): {same}; transformers "
                f"AutoTokenizer class: {hf_cls} (normalizer {self.tok.backend_tokenizer.normalizer}, pre_tokenizer "
                f"{str(self.tok.backend_tokenizer.pre_tokenizer)[:160]})")

    def rear_contexts(self, text, prefs, raw=False):
        """The contexts rear builds (its own `tokenize`), to tell decoding from tokenization."""
        args = ["tokenize", "--prompt", text]
        for p in prefs:
            args += ["--preference", p]
        js, cmd, err = self.rear.json_lines(args + (["--raw"] if raw else []) + ["--json"])
        return js[0] if js else None

    def text_contexts(self, name, text, prefs, raw=False):
        """Expected (HF) contexts [pref_1.., base] and whether rear builds the same; when not, the
        decoding checks run on rear's own contexts (name suffixed `[rear ctx]`) so that a tokenizer
        divergence (reported by the tokenize checks) does not hide or fake a decoding result."""
        exps = [expected_contexts(self.tok, text, p, raw=raw) for p in (prefs or [None])]
        ctx = [e["pref_ids"] for e in exps] + ([exps[0]["base_ids"]] if prefs else [])
        rear_ctx = []
        for p in (prefs or [None]):
            rc = self.rear_contexts(text, [p] if p else [], raw)
            if rc is None:
                return ctx, name, exps[0]
            rear_ctx.append(rc["pref_ids"])
            base = rc["base_ids"]
        if prefs:
            rear_ctx.append(base)
        if rear_ctx == ctx:
            return ctx, name, exps[0]
        self.R.skip(name, f"seed {self.seed}: rear's contexts differ from HF's (see tokenize); decoding compared on "
                          f"rear's contexts")
        return rear_ctx, name + "[rear ctx]", exps[0]

    def check_text_generate(self):
        R, rng = self.R, self.rng
        text, pref = rng.choice(PROMPTS), rng.choice(PREFERENCES)
        n = 12
        ctx, name, e0 = self.text_contexts("text_guided_greedy", text, [pref])
        # guided greedy lambda 3 through the template
        exp, gaps = hf_cfg(self.model, ctx[0], ctx[1], 3.0, n, self.never_eos)
        if self.gap_ok(name, gaps, "cfg on templated ids"):
            js, cmd, err = self.rear.json_lines(["generate", "--prompt", text, "--preference", pref, "--lambda", "3",
                                                 "--algo", "greedy", "--max-new-tokens", str(n), "--ignore-eos",
                                                 "--json"])
            got = js[0].get("token_ids") if js else err
            if R.check(name, js is not None and got == exp, cmd, exp, got,
                       note=f"fallback {e0['fallback']}; contexts {ctx[0]} / {ctx[1]}"):
                self.check_candidate_numbers(name, cmd, js[0], ctx, [3.0, -2.0])
        # score through the template
        Y = self.rand_ids(10)
        sname = name.replace("text_guided_greedy", "text_score")
        js, cmd, err = self.rear.json_lines(["score", "--prompt", text, "--preference", pref, "--lambda", "2",
                                             "--response-ids", ids_arg(Y), "--json"])
        ep, eb = token_logprobs(self.model, ctx[0], Y), token_logprobs(self.model, ctx[1], Y)
        S = sum(2 * a - b for a, b in zip(ep, eb))
        if js is None:
            R.fail(sname, cmd, dict(pref=ep, base=eb, score=S), err)
        else:
            self.check_token_lps(sname, cmd, [(js[0].get("token_logprobs_pref"), ctx[0], Y, ep),
                                              (js[0].get("token_logprobs_base"), ctx[1], Y, eb)])
            R.check(sname + ":score", abs(js[0].get("score", 1e9) - S) <= self.tol * 40, cmd, S, js[0].get("score"))
        # --preference without --lambda: lambda 1 (pref greedy), base reported
        name = name.replace("text_guided_greedy", "text_pref_lambda1")
        exp, gaps = hf_greedy(self.model, ctx[0], 8, self.never_eos)
        if self.gap_ok(name, gaps, "greedy on pref ids"):
            js, cmd, err = self.rear.json_lines(["generate", "--prompt", text, "--preference", pref, "--algo", "greedy",
                                                 "--max-new-tokens", "8", "--ignore-eos", "--json"])
            got = js[0].get("token_ids") if js else err
            if R.check(name, js is not None and got == exp, cmd, exp, got):
                self.check_candidate_numbers(name, cmd, js[0], ctx, [1.0, 0.0])
        # explicit --base-prompt TEXT (each text through the template)
        btext = rng.choice([t for t in PROMPTS if t != text and t.strip()])
        ctx_p, name_p, _ = self.text_contexts("text_base_prompt", text, [])
        ctx_b, name_b, _ = self.text_contexts("text_base_prompt", btext, [])
        name = name_p if name_p == name_b else name_p + "[rear ctx]"
        exp, gaps = hf_cfg(self.model, ctx_p[0], ctx_b[0], 2.0, 8, self.never_eos)
        if self.gap_ok(name, gaps, "cfg with --base-prompt"):
            js, cmd, err = self.rear.json_lines(["generate", "--prompt", text, "--base-prompt", btext, "--lambda", "2",
                                                 "--algo", "greedy", "--max-new-tokens", "8", "--ignore-eos", "--json"])
            got = js[0].get("token_ids") if js else err
            R.check(name, js is not None and got == exp, cmd, exp, got)
        # plain --prompt and --raw, default algo (README: greedy)
        for raw in [False, True]:
            ctx, name, _ = self.text_contexts("text_greedy" + ("_raw" if raw else ""), text, [], raw=raw)
            exp, gaps = hf_greedy(self.model, ctx[0], 8, self.never_eos)
            if not self.gap_ok(name, gaps, "greedy on prompt ids"):
                continue
            js, cmd, err = self.rear.json_lines(["generate", "--prompt", text] + (["--raw"] if raw else []) +
                                                ["--max-new-tokens", "8", "--ignore-eos", "--json"])
            got = js[0].get("token_ids") if js else err
            R.check(name, js is not None and got == exp, cmd, exp, got, note="no --algo: default greedy")

    def check_sampling(self):
        R, rng = self.R, self.rng
        P, B = self.rand_ids(rng.randint(2, 20)), self.rand_ids(rng.randint(1, 20))
        lam = 2.0
        for algo, extra in [("sample", ["--n", "3", "--temperature", "0.8", "--top-p", "0.9"]),
                            ("bon", ["--n", "3", "--temperature", "1.0"]),
                            ("chunk", ["--beams", "2", "--n", "2", "--chunk-tokens", "3"])]:
            args = ["generate", "--prompt-ids", ids_arg(P), "--base-prompt-ids", ids_arg(B), "--lambda", str(lam),
                    "--algo", algo, "--max-new-tokens", "8", "--seed", str(rng.randint(0, 1000)), "--ignore-eos",
                    "--json"] + extra
            js, cmd, err = self.rear.json_lines(args)
            js2, _, _ = self.rear.json_lines(args)
            if js is None:
                R.fail(f"{algo}", cmd, "exit 0 with JSON", err)
                continue
            R.check(f"{algo}:repeatable", js == js2, cmd, js, js2, note="same seed twice")
            scores = [j["score"] for j in js]
            R.check(f"{algo}:sorted", scores == sorted(scores, reverse=True)
                    and [j.get("rank") for j in js] == list(range(len(js))), cmd, "best first, ranks 0..", scores)
            for j in js:
                self.check_candidate_numbers(algo, cmd, j, [P, B], [lam, 1 - lam])

    def check_multi_pref(self):
        """Several --preference flags, one --lambda each (README): s = lb + sum_i l_i (lp_i - lb)."""
        R, rng = self.R, self.rng
        text = rng.choice(PROMPTS)
        p1, p2 = rng.sample(PREFERENCES, 2)
        l1, l2 = 2.0, 0.5
        ctx, name, _ = self.text_contexts("multi_preference", text, [p1, p2])
        w = [l1, l2, 1 - l1 - l2]
        exp, gaps = ref_greedy(self.model, ctx, w, 8)
        if not self.gap_ok(name, gaps, "two preferences"):
            return
        js, cmd, err = self.rear.json_lines(["generate", "--prompt", text, "--preference", p1, "--preference", p2,
                                             "--lambda", str(l1), "--lambda", str(l2), "--algo", "greedy",
                                             "--max-new-tokens", "8", "--ignore-eos", "--json"])
        got = js[0].get("token_ids") if js else err
        if R.check(name, js is not None and got == exp, cmd, exp, got):
            self.check_candidate_numbers(name, cmd, js[0], ctx, w)
            R.check(name + ":logprob_contexts", len(js[0].get("logprob_contexts") or []) == 3, cmd,
                    "3 sums (preferences, then base)", js[0].get("logprob_contexts"))

    def check_context_ids(self):
        """--context-ids IDS --context-weight W pairs (README): s = sum_k w_k log p(v | ctx_k)."""
        R, rng = self.R, self.rng
        ctx = [self.rand_ids(rng.randint(1, 20)) for _ in range(3)]
        w = [0.7, 0.5, -0.2]
        exp, gaps = ref_greedy(self.model, ctx, w, 8)
        if not self.gap_ok("context_ids", gaps, "weighted contexts"):
            return
        args = ["generate"]
        for c, x in zip(ctx, w):
            args += ["--context-ids", ids_arg(c), "--context-weight", str(x)]
        js, cmd, err = self.rear.json_lines(args + ["--algo", "greedy", "--max-new-tokens", "8", "--ignore-eos",
                                                    "--json"])
        got = js[0].get("token_ids") if js else err
        R.check("context_ids", js is not None and got == exp, cmd, exp, got)

    def check_beam_eos(self):
        """Beam search stopping on EOS (no --ignore-eos). DESIGN pins HF parity only without EOS; this
        checks the README rule (brute force) and, as an extended check, HF num_beams=B with
        early_stopping=True and length_penalty 0 (raw sums) or 1 (--length-norm)."""
        R, rng = self.R, self.rng
        B = rng.choice([2, 3, 4])
        P = self.rand_ids(rng.randint(2, 30))
        n = 10
        seqs, _ = hf_beam(self.model, P, B, n, self.never_eos)
        picks = [(i, k) for i in range(1, B) for k in range(2, n - 1)
                 if seqs[i][k] not in seqs[0] and seqs[i][k] not in seqs[i][:k] and seqs[i][k] != self.eos_id]
        if not picks:
            R.skip("beam_eos", "no token to use as EOS")
            return
        i, k = rng.choice(picks)
        X = seqs[i][k]
        eos = [X, self.eos_id]
        cpath, gpath = os.path.join(self.dir, "config.json"), os.path.join(self.dir, "generation_config.json")
        c0 = open(cpath).read()
        g0 = open(gpath).read() if os.path.exists(gpath) else None
        c = json.loads(c0)
        c["eos_token_id"] = self.eos_id
        g = json.loads(g0) if g0 else {}
        g["eos_token_id"] = eos
        json.dump(c, open(cpath, "w"))
        json.dump(g, open(gpath, "w"))
        try:
            for ln in [False, True]:
                name = "beam_eos" + ("_length_norm" if ln else "")
                ref, gap = ref_beam_eos(self.model, [P], [1.0], B, n, eos, ln)
                if gap <= self.args.min_gap:
                    R.skip(name, f"seed {self.seed}: gap {gap:.2e}")
                    continue
                js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--algo", "beam", "--beams",
                                                     str(B), "--max-new-tokens", str(n), "--json"]
                                                    + (["--length-norm"] if ln else []))
                exp = [h[0] for h in ref]
                if js is None:
                    R.fail(name, cmd, exp, err)
                    continue
                got = [j.get("token_ids") for j in js]
                R.check(name + ":rule", got == exp, cmd, exp, got, note=f"README beam rule, EOS {eos}, B={B}")
                fr_ok = all(j.get("finish_reason") == ("eos" if j["token_ids"][-1:] and j["token_ids"][-1] in eos
                                                         else "length") for j in js)
                R.check(name + ":finish_reason", fr_ok, cmd, "eos iff the last token is an EOS id",
                        [(j.get("token_ids"), j.get("finish_reason")) for j in js])
                cfg = gen_cfg(self.never_eos, max_new_tokens=n, num_beams=B, num_return_sequences=B,
                              length_penalty=1.0 if ln else 0.0, early_stopping=True)
                cfg.eos_token_id = eos
                with torch.no_grad():
                    out = self.model.generate(input_ids=torch.tensor([P]),
                                              attention_mask=torch.ones(1, len(P), dtype=torch.long),
                                              generation_config=cfg)
                hf = []
                for sq in out:
                    sq = sq[len(P):].tolist()
                    cut = next((q for q, t in enumerate(sq) if t in eos), None)
                    hf.append(sq if cut is None else sq[:cut + 1])
                R.check(name + ":hf", got == hf, cmd, hf, got,
                        note=f"extended: HF num_beams={B}, early_stopping=True, length_penalty={1.0 if ln else 0.0}"
                             f"; brute-force rule gives {exp}")
        finally:
            open(cpath, "w").write(c0)
            if g0 is None:
                os.remove(gpath)
            else:
                open(gpath, "w").write(g0)

    def check_sampling_degenerate(self):
        """Sampling that must be greedy: top-k 1 (HF do_sample with top_k=1), top-p ~0 (HF keeps the
        argmax); bon samples from the pref context, so with top-k 1 it is pref greedy."""
        R, rng = self.R, self.rng
        P, B = self.rand_ids(rng.randint(2, 20)), self.rand_ids(rng.randint(1, 20))
        n = 8
        exp_cfg, gaps = hf_cfg(self.model, P, B, 2.0, n, self.never_eos)
        if self.gap_ok("sample_topk1", gaps, "cfg"):
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--base-prompt-ids", ids_arg(B),
                                                 "--lambda", "2", "--algo", "sample", "--n", "2", "--top-k", "1",
                                                 "--temperature", "0.7", "--seed", str(rng.randint(0, 99)),
                                                 "--max-new-tokens", str(n), "--ignore-eos", "--json"])
            got = [j.get("token_ids") for j in js] if js else err
            R.check("sample_topk1", js is not None and got == [exp_cfg, exp_cfg], cmd, [exp_cfg, exp_cfg], got,
                    note="guided sampling with top-k 1 is guided greedy")
        exp, gaps = hf_greedy(self.model, P, n, self.never_eos)
        if self.gap_ok("sample_topp0", gaps, "greedy"):
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--algo", "sample", "--top-p",
                                                 "0.000001", "--seed", str(rng.randint(0, 99)), "--max-new-tokens",
                                                 str(n), "--ignore-eos", "--json"])
            got = js[0].get("token_ids") if js else err
            R.check("sample_topp0", js is not None and got == exp, cmd, exp, got,
                    note="top-p ~0 keeps only the argmax (HF TopPLogitsWarper keeps >= 1 token)")
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--base-prompt-ids", ids_arg(B),
                                                 "--lambda", "3", "--algo", "bon", "--n", "2", "--top-k", "1",
                                                 "--max-new-tokens", str(n), "--ignore-eos", "--json"])
            got = [j.get("token_ids") for j in js] if js else err
            R.check("bon_topk1", js is not None and got == [exp, exp], cmd, [exp, exp], got,
                    note="bon samples from the pref context: top-k 1 gives pref greedy")

    def check_batch(self):
        """Batch mode (README): each output line equals the same request run alone; a malformed line
        is reported with its line number, the others still run, exit code 2."""
        R, rng = self.R, self.rng
        text, pref = rng.choice(PROMPTS), rng.choice(PREFERENCES)
        reqs = [
            {"id": "a", "prompt_ids": self.rand_ids(5), "algo": "greedy", "max_new_tokens": 6, "ignore_eos": True},
            {"id": 7, "prompt_ids": self.rand_ids(20), "base_prompt_ids": self.rand_ids(4), "lambda": 2.0,
             "algo": "beam", "beams": 3, "max_new_tokens": 5, "ignore_eos": True},
            None,  # malformed line
            {"id": "c", "prompt": text, "preference": pref, "lambda": 3.0, "algo": "greedy", "max_new_tokens": 6,
             "ignore_eos": True},
            {"id": "d", "prompt_ids": self.rand_ids(3), "algo": "sample", "n": 2, "seed": 3, "max_new_tokens": 5,
             "ignore_eos": True},
        ]
        fin = os.path.join(self.dir + "_batch_in.jsonl")
        fout = os.path.join(self.dir + "_batch_out.jsonl")
        with open(fin, "w") as f:
            for r in reqs:
                f.write(("{not json" if r is None else json.dumps(r)) + "\n")
        if os.path.exists(fout):
            os.remove(fout)
        rc, out, err, cmd, _ = self.rear.run(["generate", "--input", fin, "--output", fout, "--batch-size", "2"])
        R.check("batch:exit", rc == 2 and "3" in err and "panicked" not in err, cmd,
                "exit 2, the malformed line (3) named on stderr", dict(rc=rc, stderr=err[:400]))
        try:
            lines = [json.loads(l) for l in open(fout) if l.strip()]
        except Exception as e:  # noqa: BLE001
            R.fail("batch:output", cmd, "JSONL output", str(e))
            return
        good = [r for r in reqs if r is not None]
        R.check("batch:ids_in_order", [l.get("id") for l in lines] == [r["id"] for r in good], cmd,
                [r["id"] for r in good], [l.get("id") for l in lines])
        by_id = {json.dumps(l.get("id")): l for l in lines}
        for r in good:
            args = ["generate"]
            for k, v in r.items():
                if k == "id":
                    continue
                flag = "--" + k.replace("_", "-")
                if v is True:
                    args.append(flag)
                elif isinstance(v, list):
                    args += [flag, ids_arg(v)]
                else:
                    args += [flag, str(v)]
            js, scmd, serr = self.rear.json_lines(args + ["--json"])
            got = by_id.get(json.dumps(r["id"]), {}).get("candidates")
            strip = lambda cs: [{k: c.get(k) for k in ("token_ids", "score", "logprob_pref", "logprob_base",  # noqa: E731
                                                      "finish_reason")} for c in (cs or [])]
            R.check("batch:equals_single", js is not None and strip(got) == strip(js), scmd, strip(js) if js else serr,
                    strip(got), note=f"batch request id {r['id']!r} vs the same flags alone")
        os.remove(fin)
        os.remove(fout)

    # ---- GGUF ----
    GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                  "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                  "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                  "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                  "mlp.down_proj.weight": "ffn_down.weight"}

    def write_gguf(self, path, qtype, model=None, spec=None):
        """The seed's llama checkpoint as llama.cpp's converter writes it (q/k permuted for its rotary
        layout), with the seed's tokenizer (gpt2 byte-level BPE, or llama SentencePiece-BPE)."""
        import gguf
        import numpy as np
        sp = spec or self.spec
        model = model or self.model
        st = STYLES[self.tv["style"]]
        w = gguf.GGUFWriter(path, "llama")
        H, KV, hd = sp["num_attention_heads"], sp["num_key_value_heads"], sp["head_dim"]
        w.add_context_length(sp["max_pos"])
        w.add_embedding_length(sp["hidden_size"])
        w.add_block_count(sp["num_hidden_layers"])
        w.add_feed_forward_length(sp["intermediate_size"])
        w.add_head_count(H)
        w.add_head_count_kv(KV)
        w.add_rope_freq_base(sp["rope_theta"])
        w.add_layer_norm_rms_eps(sp["rms_norm_eps"])
        w.add_rope_dimension_count(hd)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_vocab_size(self.V)
        if sp.get("rope") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(2.5)
        tj = json.load(open(os.path.join(self.dir, "tokenizer.json"), encoding="utf-8"))
        vocab = tj["model"]["vocab"]
        added = {t["id"]: t for t in tj["added_tokens"]}
        tokens = [f"<extra_{i}>" for i in range(self.V)]
        for t, i in vocab.items():
            tokens[i] = t
        for i, t in added.items():
            if i < self.V:
                tokens[i] = t["content"]
        spm = st["kind"].startswith("sp")
        if spm:
            types = [3 if (i in added and added[i]["special"]) else 6 if t.startswith("<0x") and len(t) == 6 else 1
                     for i, t in enumerate(tokens)]
            types[vocab["<unk>"]] = 2
            w.add_tokenizer_model("llama")
            w.add_tokenizer_pre("default")
            w.add_token_list(tokens)
            w.add_token_scores([-float(i) for i in range(self.V)])
            w.add_token_types(types)
        else:
            types = [3 if (i in added and added[i]["special"]) else 1 for i in range(self.V)]
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre({"llama3": "llama-bpe", "qwen": "qwen2", "gpt2": "gpt2"}[self.tv["style"]])
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_merges([" ".join(x) if isinstance(x, list) else x for x in tj["model"]["merges"]])
        if st["bos"]:
            w.add_bos_token_id(self.tok.convert_tokens_to_ids(st["bos"]))
        w.add_eos_token_id(self.eos_id)
        w.add_add_bos_token(bool(self.tv["add_bos"]))
        w.add_chat_template(TEMPLATES[self.tv["template"]])

        def permute(a, n_head, n_kv):
            if n_kv is not None and n_head != n_kv:
                n_head = n_kv
            return a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)

        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        sd = model.state_dict()
        for n, p in sd.items():
            if n == "lm_head.weight" and sp["tie"]:
                continue
            a = p.float().numpy()
            if n in top:
                g = top[n]
            else:
                parts = n.split(".")
                g = f"blk.{parts[2]}." + self.GGUF_NAMES[".".join(parts[3:])]
                if "q_proj" in n:
                    a = permute(a, H, H)
                if "k_proj" in n:
                    a = permute(a, H, KV)
            if a.ndim == 2 and qtype in ("Q8_0", "Q4_0", "Q4_1") and a.shape[1] % 32 == 0:
                qt = gguf.GGMLQuantizationType[qtype]
                w.add_tensor(g, gguf.quants.quantize(a, qt), raw_dtype=qt)
            elif a.ndim == 2 and qtype == "F16":
                w.add_tensor(g, a.astype(np.float16))
            else:
                w.add_tensor(g, a.astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return spm

    def check_gguf(self):
        R, rng = self.R, self.rng
        sp = self.spec
        src = self.model
        if (sp["arch"] != "llama" or sp.get("attention_bias") or sp.get("mlp_bias")
                or sp.get("rope") not in ("default", "linear")):
            # a llama model of the same shape (GGUF here is the llama architecture without biases)
            sp = dict(sp, arch="llama", attention_bias=False, mlp_bias=False,
                      rope=rng.choice(["default", "default", "linear"]))
            H = sp["num_attention_heads"]
            sp["hidden_size"] = max(H, sp["hidden_size"] - sp["hidden_size"] % H)
            src = build_model(sp, None, self.eos_id, None)
        qtype = rng.choice(["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
        gdir = self.dir + "_gguf"
        shutil.rmtree(gdir, ignore_errors=True)
        os.makedirs(gdir)
        if src is not self.model:
            # through the disk, so that buffers (RoPE inv_freq) are computed in float32 as on a load
            src.save_pretrained(os.path.join(gdir, "src"))
            src = AutoModelForCausalLM.from_pretrained(os.path.join(gdir, "src"), dtype=torch.float32).eval()
        path = os.path.join(gdir, "model.gguf")
        spm = self.write_gguf(path, qtype, src, sp)
        rear = Rear(self.args.rear, path)
        tag = f"gguf {qtype} tokenizer={'llama(SPM)' if spm else 'gpt2'} pre={self.tv['style']}"
        try:
            hm = AutoModelForCausalLM.from_pretrained(gdir, gguf_file="model.gguf", dtype=torch.float32).eval()
            ht = AutoTokenizer.from_pretrained(gdir, gguf_file="model.gguf")
        except Exception as e:  # noqa: BLE001
            R.skip("gguf", f"transformers cannot load the GGUF: {str(e)[:200]}")
            shutil.rmtree(gdir, ignore_errors=True)
            return
        tol = 1e-4 if qtype == "F32" else 2e-3
        if spm:
            tag += " [llama.cpp SentencePiece tokenizer: README/DESIGN 3 promise GGUF 'with their tokenizer']"
        pfx = "gguf_spm:" if spm else "gguf:"
        if sp.get("rope") == "linear":
            # transformers 5.25 drops llama.rope.scaling.* when it builds a config from a GGUF file;
            # llama.cpp (and rear) apply it. The source checkpoint is the reference then (F32 only).
            R.notes.append(f"seed {self.seed}: GGUF with linear rope scaling: transformers ignores "
                           f"llama.rope.scaling.type/factor (rope_type default); compared with the source checkpoint")
            if qtype != "F32":
                R.skip(pfx + "score", "linear rope + quantized: no reference")
                shutil.rmtree(gdir, ignore_errors=True)
                return
            hm = src
        # ids work whatever the tokenizer
        P, Y = self.rand_ids(rng.randint(1, 40)), self.rand_ids(12)
        js, cmd, err = rear.json_lines(["score", "--prompt-ids", ids_arg(P), "--response-ids", ids_arg(Y), "--json"])
        exp = token_logprobs(hm, P, Y)
        got = js[0].get("token_logprobs_pref") if js else err
        if js is not None and len(got) == len(exp) and not self.close(got, exp, tol) and qtype == "F32":
            m64 = src.double()
            with torch.no_grad():
                lp = torch.log_softmax(m64(torch.tensor([P + Y])).logits[0], -1)
            r64 = [float(lp[len(P) - 1 + i, t]) for i, t in enumerate(Y)]
            re_ = max(abs(a - b) for a, b in zip(got, r64))
            he_ = max(abs(a - b) for a, b in zip(exp, r64))
            if re_ <= 4 * he_ + tol / 2:
                R.warn(pfx + "score", cmd, f"vs float64: rear err {re_:.2e}, HF float32 err {he_:.2e}")
                got = None
        if got is not None:
            R.check(pfx + "score", js is not None and self.close(got, exp, tol), cmd, exp, got, note=tag)
        P = self.rand_ids(rng.randint(1, 40))
        exp, gaps = hf_greedy(hm, P, 12, self.never_eos)
        if self.gap_ok(pfx + "greedy", gaps, "gguf greedy"):
            js, cmd, err = rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--algo", "greedy",
                                            "--max-new-tokens", "12", "--ignore-eos", "--json"])
            got = js[0].get("token_ids") if js else err
            R.check(pfx + "greedy", js is not None and got == exp, cmd, exp, got, note=tag)
        # text through the file's tokenizer and template
        text, pref = rng.choice(PROMPTS), rng.choice(PREFERENCES)
        for raw in [False, True]:
            try:
                e = expected_contexts(ht, text, pref, raw=raw)
            except Exception as ex:  # noqa: BLE001
                R.skip(pfx + "tokenize", f"HF cannot render: {ex}")
                continue
            js, cmd, err = rear.json_lines(["tokenize", "--prompt", text, "--preference", pref, "--json"]
                                           + (["--raw"] if raw else []))
            got = {k: js[0].get(k) for k in ("pref_ids", "base_ids")} if js else err
            R.check(pfx + "tokenize" + ("_raw" if raw else ""), js is not None and got ==
                    {k: e[k] for k in ("pref_ids", "base_ids")}, cmd, {k: e[k] for k in ("pref_ids", "base_ids")},
                    got, note=tag + f"; HF tokenizer {type(ht).__name__}")
        shutil.rmtree(gdir, ignore_errors=True)

    def check_bad_inputs(self):
        R = self.R
        V = self.V
        P = ids_arg(self.rand_ids(3))
        maxp = self.spec["max_pos"]
        bad = [
            ("oov_prompt_id", ["generate", "--prompt-ids", f"1,{V}", "--max-new-tokens", "2"]),
            ("oov_base_id", ["generate", "--prompt-ids", P, "--base-prompt-ids", f"{V + 3}", "--max-new-tokens", "2"]),
            ("oov_response_id", ["score", "--prompt-ids", P, "--response-ids", f"0,{V}"]),
            ("empty_prompt_ids", ["generate", "--prompt-ids", "", "--max-new-tokens", "2"]),
            ("empty_prompt_text", ["generate", "--prompt", "", "--max-new-tokens", "2"]),
            ("bad_id_text", ["generate", "--prompt-ids", "1,x", "--max-new-tokens", "2"]),
            ("negative_id", ["generate", "--prompt-ids", "-1", "--max-new-tokens", "2"]),
            ("beyond_max_pos", ["generate", "--prompt-ids", P, "--max-new-tokens", str(maxp), "--ignore-eos"]),
            ("unknown_algo", ["generate", "--prompt-ids", P, "--algo", "nucleus"]),
            ("zero_beams", ["generate", "--prompt-ids", P, "--algo", "beam", "--beams", "0"]),
            ("nan_lambda", ["generate", "--prompt-ids", P, "--base-prompt-ids", P, "--lambda", "nan"]),
            ("unknown_flag", ["generate", "--prompt-ids", P, "--frobnicate"]),
            ("prompt_and_ids", ["generate", "--prompt", "hi", "--prompt-ids", P]),
            ("pref_with_ids", ["generate", "--prompt-ids", P, "--preference", "x"]),
            ("no_response", ["score", "--prompt-ids", P]),
            ("top_p_out_of_range", ["generate", "--prompt-ids", P, "--algo", "sample", "--top-p", "1.5"]),
            ("negative_temperature", ["generate", "--prompt-ids", P, "--algo", "sample", "--temperature", "-1"]),
            ("zero_n", ["generate", "--prompt-ids", P, "--algo", "sample", "--n", "0"]),
            ("unknown_device", ["generate", "--prompt-ids", P, "--device", "tpu"]),
            ("unknown_pref_in", ["tokenize", "--prompt", "hi", "--preference", "x", "--preference-in", "assistant"]),
            ("empty_preference", ["tokenize", "--prompt", "hi", "--preference", ""]),
        ]
        for name, args in bad:
            self.expect_bad(name, args)
        self.expect_bad("missing_model_dir", ["generate", "--model", "/nonexistent/model", "--prompt-ids", "1"],
                        model=False)
        # broken copies of the model directory
        self.broken_dirs()
        # things that are not errors must not panic either
        for name, args in [("max_new_tokens_0", ["generate", "--prompt-ids", P, "--max-new-tokens", "0", "--json"]),
                           ("device_cuda", ["generate", "--prompt-ids", P, "--device", "cuda", "--max-new-tokens", "2",
                                            "--json"]),
                           ("kv_cache_1mib_long", ["generate", "--prompt-ids", ids_arg(self.rand_ids(200)),
                                                   "--kv-cache-mib", "1", "--algo", "beam", "--beams", "5",
                                                   "--max-new-tokens", "20", "--json"]),
                           ("empty_response", ["score", "--prompt-ids", P, "--response-ids", "", "--json"]),
                           ("boundary_max_pos", ["generate", "--prompt-ids", P, "--max-new-tokens", str(maxp - 3),
                                                 "--ignore-eos", "--json"])]:
            rc, out, err, cmd, _ = self.rear.run(args)
            okk = rc == 0 or (rc == 2 and out == "" and len(err.strip().splitlines()) == 1)
            okk &= "panicked" not in err and "RUST_BACKTRACE" not in err
            R.check("edge:" + name, okk, cmd, "exit 0, or exit 2 with one stderr line and no stdout; never a panic",
                    dict(rc=rc, stdout=out[:200], stderr=err[:400]))
            if name == "boundary_max_pos" and rc != 0:
                R.fail("edge:boundary_max_pos_allowed", cmd, "prompt + max_new == max_position_embeddings is allowed",
                       dict(rc=rc, stderr=err[:300]))

    def expect_bad(self, name, args, model=True):
        rc, out, err, cmd, _ = self.rear.run(args, model=model)
        lines = err.strip("\n").splitlines()
        ok = rc == 2 and out == "" and len(lines) == 1 and "panicked" not in err
        self.R.check("bad:" + name, ok, cmd, "exit 2, one stderr line, empty stdout",
                     dict(rc=rc, stdout=out[:200], stderr=err[:400]))

    def broken_dirs(self):
        import glob
        base = self.dir
        files = sorted(glob.glob(os.path.join(base, "*.safetensors")))

        def fresh(tag):
            d = base + "_" + tag
            if os.path.isdir(d):
                shutil.rmtree(d)
            shutil.copytree(base, d)
            return d

        # truncated weights
        d = fresh("trunc")
        f = os.path.join(d, os.path.basename(files[-1]))
        sz = os.path.getsize(f)
        with open(f, "r+b") as fh:
            fh.truncate(sz // 2)
        self.expect_bad("truncated_safetensors", ["generate", "--model", d, "--prompt-ids", "1", "--max-new-tokens",
                                                  "1"], model=False)
        # missing tensor / misshapen tensor
        from safetensors.torch import load_file, save_file
        for tag in ("missing_tensor", "misshapen_tensor"):
            d = fresh(tag)
            for fp in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
                t = load_file(fp)
                key = next((k for k in t if "q_proj.weight" in k or "down_proj.weight" in k), None)
                if key is None:
                    continue
                if tag == "missing_tensor":
                    del t[key]
                else:
                    t[key] = t[key][:, :-2].contiguous()
                save_file(t, fp, metadata={"format": "pt"})
                break
            self.expect_bad(tag, ["generate", "--model", d, "--prompt-ids", "1", "--max-new-tokens", "1"], model=False)
        # malformed / unsupported config
        for tag, mut in [("malformed_config", lambda s: s[: len(s) // 2]),
                         ("unsupported_arch", lambda s: s.replace(self._arch_name(), "GPT2LMHeadModel")),
                         ("unsupported_rope", lambda s: json.dumps(dict(json.loads(s), rope_scaling={
                             "rope_type": "longrope", "factor": 4.0}, rope_parameters={"rope_type": "longrope",
                                                                                      "factor": 4.0,
                                                                                      "rope_theta": 10000.0})))]:
            d = fresh(tag)
            p = os.path.join(d, "config.json")
            s = open(p).read()
            open(p, "w").write(mut(s))
            self.expect_bad(tag, ["generate", "--model", d, "--prompt-ids", "1", "--max-new-tokens", "1"], model=False)
        # no tokenizer: tokenize must fail cleanly, ids still work
        d = fresh("notok")
        os.remove(os.path.join(d, "tokenizer.json"))
        self.expect_bad("tokenize_without_tokenizer", ["tokenize", "--model", d, "--prompt", "hi", "--json"],
                        model=False)
        rc, out, err, cmd, _ = self.rear.run(["generate", "--model", d, "--prompt-ids", "1,2", "--max-new-tokens", "2",
                                              "--json"], model=False)
        self.R.check("ids_without_tokenizer", rc == 0 and out.strip() != "", cmd, "exit 0 (README)",
                     dict(rc=rc, stderr=err[:300]))
        for tag in ("trunc", "missing_tensor", "misshapen_tensor", "malformed_config", "unsupported_arch",
                    "unsupported_rope", "notok"):
            shutil.rmtree(base + "_" + tag, ignore_errors=True)

    def _arch_name(self):
        return {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM"}[self.spec["arch"]]

    def check_eos(self):
        """Without --ignore-eos: stop on the model's own EOS ids, as HF generate() with the checkpoint's
        generation config (generation_config.json when present, else config.json) does."""
        R, rng = self.R, self.rng
        P = self.rand_ids(rng.randint(2, 20))
        n = 16
        toks, gaps = hf_greedy(self.model, P, n, self.never_eos)
        if not self.gap_ok("eos", gaps, "greedy for eos"):
            return
        k = next((i for i in range(2, n - 2) if toks[i] not in toks[:i] and toks[i] != self.eos_id), None)
        if k is None:
            R.skip("eos", "no fresh token to use as EOS")
            return
        X = toks[k]
        cpath = os.path.join(self.dir, "config.json")
        gpath = os.path.join(self.dir, "generation_config.json")
        cfg0 = json.load(open(cpath))
        gen0 = json.load(open(gpath)) if os.path.exists(gpath) else None
        modes = ["gen_list", "config_only", "gen_only_int", "conflict"]
        last = toks[n - 1] if toks[n - 1] not in toks[: n - 1] and toks[n - 1] != self.eos_id else None
        if last is not None:
            modes.append("eos_at_last_step")
        modes.append("gen_without_eos_key")
        for mode in modes:
            c = dict(cfg0)
            g = dict(gen0 or {})
            if mode == "gen_list":
                c["eos_token_id"] = self.eos_id
                g["eos_token_id"] = [X, self.eos_id]
            elif mode == "config_only":
                c["eos_token_id"] = [self.eos_id, X]
                g = None
            elif mode == "gen_only_int":
                c["eos_token_id"] = self.eos_id
                g["eos_token_id"] = X
            elif mode == "gen_without_eos_key":  # generation_config.json has no eos: HF never stops
                c["eos_token_id"] = X
                g.pop("eos_token_id", None)
            elif mode == "eos_at_last_step":
                c["eos_token_id"] = self.eos_id
                g["eos_token_id"] = [last, self.eos_id]
            else:  # config.json says X, generation_config.json says something else: HF uses the latter
                c["eos_token_id"] = X
                g["eos_token_id"] = self.eos_id
            json.dump(c, open(cpath, "w"), indent=2)
            if g is None:
                if os.path.exists(gpath):
                    os.remove(gpath)
            else:
                json.dump(g, open(gpath, "w"), indent=2)
            m = AutoModelForCausalLM.from_pretrained(self.dir, dtype=torch.float32).eval()
            with torch.no_grad():
                gc = GenerationConfig.from_dict(m.generation_config.to_dict())
                gc.do_sample, gc.num_beams, gc.max_new_tokens = False, 1, n
                gc.temperature = gc.top_p = gc.top_k = None
                out = m.generate(input_ids=torch.tensor([P]), attention_mask=torch.ones(1, len(P), dtype=torch.long),
                                 generation_config=gc)
            exp = out[0, len(P):].tolist()
            hf_eos = m.generation_config.eos_token_id
            hf_eos = [hf_eos] if isinstance(hf_eos, int) else list(hf_eos or [])
            exp_reason = "eos" if exp and exp[-1] in hf_eos else "length"
            js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--algo", "greedy",
                                                 "--max-new-tokens", str(n), "--json"])
            got = (js[0].get("token_ids"), js[0].get("finish_reason")) if js else err
            R.check("eos:" + mode, js is not None and got == (exp, exp_reason), cmd, (exp, exp_reason), got,
                    note=f"HF eos ids {hf_eos}; config.json eos {c['eos_token_id']}, generation_config.json eos "
                         f"{None if g is None else g.get('eos_token_id', '(absent)')}")
            # beam without --ignore-eos must at least behave (no crash, ranks, finish reasons)
            if mode == "gen_list":
                js, cmd, err = self.rear.json_lines(["generate", "--prompt-ids", ids_arg(P), "--algo", "beam",
                                                     "--beams", "3", "--max-new-tokens", str(n), "--json"])
                R.check("eos:beam_runs", js is not None and len(js) == 3 and all(
                    (j["finish_reason"] == "eos") == (j["token_ids"][-1:] in ([X], [self.eos_id])) for j in js),
                    cmd, "3 candidates; finish_reason eos iff last token is an EOS id", js if js else err)
        json.dump(cfg0, open(cpath, "w"), indent=2)
        if gen0 is not None:
            json.dump(gen0, open(gpath, "w"), indent=2)


def first_diff(a, b):
    if not isinstance(b, list):
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def diag_ids(tok, exp, j):
    """Where pref ids diverge, show the tokens around it."""
    got = j.get("pref_ids")
    if not isinstance(got, list) or got == exp["pref_ids"]:
        got, e = j.get("base_ids"), exp["base_ids"]
        if not isinstance(got, list) or got == e:
            return ""
    else:
        e = exp["pref_ids"]
    i = first_diff(e, got)
    conv = lambda ids: tok.convert_ids_to_tokens([x for x in ids if x < len(tok)])  # noqa: E731
    return f"; first diff at {i}: HF {conv(e[max(0, i - 2): i + 4])} rear {conv(got[max(0, i - 2): i + 4])}"


def parse_seeds(s):
    out = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-20")
    ap.add_argument("--rear", default="target/release/rear")
    ap.add_argument("--workdir", default="/tmp/check_hf")
    ap.add_argument("--min-gap", type=float, default=1e-3)
    ap.add_argument("--only", default="", help="comma-separated substrings of check names (e.g. greedy,beam)")
    ap.add_argument("--keep", action="store_true", help="keep the model directories")
    ap.add_argument("--json-report", default="", help="write failures and counts to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    args.rear = os.path.abspath(args.rear)
    if not os.path.exists(args.rear):
        sys.exit(f"no rear binary at {args.rear} (cargo build --release)")
    os.makedirs(args.workdir, exist_ok=True)
    R = Results(args.verbose)
    t0 = time.time()
    for seed in parse_seeds(args.seeds):
        R.seed = seed
        c = Case(seed, args, R)
        t = time.time()
        try:
            c.run()
        except Exception:  # noqa: BLE001
            R.fail("script_error:setup", "", "", traceback.format_exc()[-2000:], note=getattr(c, "desc", ""))
        print(f"  seed {seed} done in {time.time() - t:.1f}s", flush=True)
        if not args.keep:
            shutil.rmtree(c.dir, ignore_errors=True)
    print("\n==== summary ({:.0f}s) ====".format(time.time() - t0))
    print(f"{'check':42s} {'pass':>5s} {'fail':>5s} {'skip':>5s} {'warn':>5s}")
    for name in sorted(R.counts):
        p, f, s, w = R.counts[name]
        print(f"{name:42s} {p:5d} {f:5d} {s:5d} {w:5d}{'   <-- FAIL' if f else ''}")
    for n in R.notes:
        print("note:", n)
    nfail = sum(v[1] for v in R.counts.values())
    print(f"\n{nfail} failed checks, {sum(v[0] for v in R.counts.values())} passed, "
          f"{sum(v[2] for v in R.counts.values())} skipped (argmax gap <= {args.min_gap} or similar)")
    if args.json_report:
        json.dump(dict(counts=R.counts, failures=R.failures, skips=R.skips, notes=R.notes),
                  open(args.json_report, "w"), indent=1, ensure_ascii=False)
    sys.exit(1 if nfail else 0)


if __name__ == "__main__":
    main()
