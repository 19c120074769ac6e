#!/usr/bin/env python3
"""Generate tiny random-weight Hugging Face checkpoints and golden outputs for rear's tests.

    python3 scripts/make_fixtures.py            # writes tests/fixtures/

Everything is deterministic (fixed seeds, one CPU thread): running it twice gives byte-identical
files. The script owns (wipes and rewrites) every model directory it creates under tests/fixtures/
and tests/fixtures/bad/; tests/fixtures/README.md is hand-maintained and left alone.

Goldens are computed by transformers itself from the directories as saved (weights as stored,
upcast to float32, eager attention, float32 arithmetic). See tests/fixtures/README.md.
"""

import json
import os
import shutil
import sys

import torch
import transformers
import tokenizers
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
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
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

MIN_GAP = 1e-3  # required top1-top2 separation at every golden argmax step (the brief's floor)
SEARCH_GAP = 2e-3  # seeds are tried in order until every golden argmax step clears this (margin)

# ----------------------------------------------------------------------------------------------
# 1. Tokenizer
# ----------------------------------------------------------------------------------------------

CORPUS = """\
The pirate ship sailed out of the harbour at dawn, its black flag snapping in the wind.
Captain Morgan shouted: "Hoist the mainsail! Ready the cannons, ye scurvy dogs!"
Arr, matey, there be treasure buried on the island, forty paces north of the old palm tree.
The crew counted 1,250 gold doubloons, 37 silver bars and 9 chests of pearls.
A parrot named Polly sat on the captain's shoulder and repeated every word he said.

France is a country in Western Europe. Its capital is Paris, a city famous for the Eiffel Tower,
the Louvre museum and its cafes. The river Seine flows through Paris to the English Channel.
French cuisine includes bread, cheese, wine, croissants and many kinds of pastry.
Marseille, Lyon, Toulouse, Nice and Bordeaux are other large cities in France.
The French Revolution began in 1789; the Republic was declared in 1792.

Answer concisely. Be brief and to the point. Explain it step by step.
You are a helpful assistant. Please answer the question below.
What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has 8 legs.
Write a short poem about the sea. The sea is wide, the sea is deep, its secrets it will always keep.
Tell me a joke! Why did the pirate go to school? To improve his "arrrr-ticulation".

def greet(name):
    return "Hello, " + name + "!"

for i in range(10):
    print(i * i)

Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 -7 +12 50% $19.99 #1 @home
Punctuation: commas, periods. Questions? Exclamations! Colons: semicolons; dashes - and (brackets) [lists] {sets} <tags>.
Quotes: 'single' and "double"; it's, don't, we're, they've, I'm, you'll, he'd.

The weather today is sunny with a light breeze from the west; tomorrow it may rain.
She opened the old book and read the first line aloud: "Once upon a time, in a land far away..."
Scientists measure temperature in degrees Celsius or Kelvin. Water boils at 100 degrees.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Machine learning models predict the next token from the previous tokens in a sequence.
Reward models score responses; preferences such as "talk like a pirate" change the answer.
Ahoy! Shiver me timbers! Walk the plank! Yo ho ho and a bottle of rum!
The sailors sang songs of the sea, of storms and whales and the long journey home.
In the morning, the baker in Paris sells warm baguettes to the people of the town.
"""

# Llama-3 pre-tokenization regex (split first, then byte-level without its own regex).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Specials trained in (ids 0..2) and specials appended after training (ids at the end).
TRAINED_SPECIALS = ["<s>", "</s>", "<|endoftext|>"]
ADDED_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
]
TRAIN_VOCAB = 440


def train_base_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAIN_VOCAB,
        min_frequency=2,
        special_tokens=TRAINED_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS.splitlines(keepends=True)
    tok.train_from_iterator(lines * 3, trainer)
    tok.add_special_tokens(ADDED_SPECIALS)
    return tok


# ---- chat templates (our own, written in the style of the real ones) ----

LLAMA3_TEMPLATE = (
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

# Qwen2's real template: default system message when there is none.
CHATML_DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen3-like ChatML: no default system message, content trimmed.
CHATML_TEMPLATE = (
    "{%- for message in messages %}\n"
    "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Gemma's real template structure: rejects system messages, assistant -> model.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

# Mistral-instruct-like: system message folded into the first user turn; ignores add_generation_prompt.
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- '[INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

TEMPLATES = {
    "llama3": LLAMA3_TEMPLATE,
    "chatml_default_system": CHATML_DEFAULT_SYSTEM_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
}


def make_tokenizer(base, bos, eos, pad, add_bos, template):
    """A copy of the base tokenizer with its own post-processor, wrapped for transformers."""
    tok = Tokenizer.from_str(base.to_str())
    if add_bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos}:0 $A:0",
                    pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                    special_tokens=[(bos, bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = dict(tokenizer_object=tok, clean_up_tokenization_spaces=False, model_max_length=256)
    if bos is not None:
        kwargs["bos_token"] = bos
    kwargs["eos_token"] = eos
    if pad is not None:
        kwargs["pad_token"] = pad
    ft = PreTrainedTokenizerFast(**kwargs)
    ft.chat_template = TEMPLATES[template]
    return ft


def save_tokenizer(ft, d, template_storage):
    ft.save_pretrained(d)
    jinja = os.path.join(d, "chat_template.jinja")
    cfg_path = os.path.join(d, "tokenizer_config.json")
    if template_storage == "tokenizer_config":
        # Move the template into tokenizer_config.json (the transformers-4.x storage form).
        with open(jinja, encoding="utf-8") as f:
            tmpl = f.read()
        os.remove(jinja)
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["chat_template"] = tmpl
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
            f.write("\n")
    else:
        assert os.path.exists(jinja), "transformers did not write chat_template.jinja"
        with open(cfg_path, encoding="utf-8") as f:
            assert "chat_template" not in json.load(f)


# ----------------------------------------------------------------------------------------------
# 2. Models
# ----------------------------------------------------------------------------------------------


def randomize(model, seed, std=0.3):
    """Large random init so that logits are well separated: matrices N(0, std), norms 1+0.1*N, biases 0.2*N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.2 * torch.randn(p.shape, generator=g)
            else:
                v = std * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))


def wipe(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


TOK = None  # the shared trained tokenizer (tokenizers.Tokenizer)


def tok_id(s):
    i = TOK.token_to_id(s)
    assert i is not None, s
    return i


def spec_list():
    """Every fixture model. Values are filled in lazily because they need the tokenizer."""
    V = TOK.get_vocab_size()
    common = dict(
        vocab_size=V,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        initializer_range=0.3,
    )
    eot, eot_text = tok_id("<|eot_id|>"), tok_id("<|end_of_text|>")
    bot = tok_id("<|begin_of_text|>")
    im_end, eot_qwen = tok_id("<|im_end|>"), tok_id("<|endoftext|>")
    s_bos, s_eos = tok_id("<s>"), tok_id("</s>")
    eot_gemma = tok_id("<end_of_turn>")
    return [
        dict(
            name="llama_f32",
            seed=1001,
            build=lambda: LlamaForCausalLM(
                LlamaConfig(
                    **common,
                    hidden_size=64,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    bos_token_id=bot,
                    eos_token_id=[eot, eot_text],
                )
            ),
            dtype=torch.float32,
            tok=dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True, template="llama3"),
            template_storage="jinja",
            gen=dict(bos_token_id=bot, eos_token_id=[eot, eot_text]),
        ),
        dict(
            name="llama3_bf16_tied",
            seed=2002,
            build=lambda: LlamaForCausalLM(
                LlamaConfig(
                    **common,
                    hidden_size=64,
                    intermediate_size=160,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=1,
                    tie_word_embeddings=True,
                    attention_bias=True,
                    rope_parameters={
                        "rope_type": "llama3",
                        "rope_theta": 500000.0,
                        "factor": 8.0,
                        "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64,
                    },
                    bos_token_id=bot,
                    eos_token_id=eot,
                )
            ),
            dtype=torch.bfloat16,
            tok=dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True, template="llama3"),
            template_storage="jinja",
            gen=dict(bos_token_id=bot, eos_token_id=eot),
        ),
        dict(
            name="llama_linear_f16",
            seed=3003,
            build=lambda: LlamaForCausalLM(
                LlamaConfig(
                    **common,
                    hidden_size=96,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    head_dim=32,
                    tie_word_embeddings=False,
                    rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
                    bos_token_id=s_bos,
                    eos_token_id=eot_gemma,
                )
            ),
            dtype=torch.float16,
            tok=dict(bos="<s>", eos="<end_of_turn>", pad="</s>", add_bos=True, template="gemma"),
            template_storage="tokenizer_config",
            gen=dict(bos_token_id=s_bos, eos_token_id=eot_gemma, pad_token_id=s_eos),
        ),
        dict(
            name="mistral_f16_sharded",
            seed=4004,
            build=lambda: MistralForCausalLM(
                MistralConfig(
                    **common,
                    hidden_size=64,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    sliding_window=None,
                    tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    bos_token_id=s_bos,
                    eos_token_id=s_eos,
                )
            ),
            dtype=torch.float16,
            shard="100KB",
            tok=dict(bos="<s>", eos="</s>", pad=None, add_bos=True, template="mistral"),
            template_storage="jinja",
            gen=dict(bos_token_id=s_bos, eos_token_id=s_eos),
        ),
        dict(
            name="qwen2_bf16",
            seed=5005,
            build=lambda: Qwen2ForCausalLM(
                Qwen2Config(
                    **common,
                    hidden_size=64,
                    intermediate_size=176,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    bos_token_id=eot_qwen,
                    eos_token_id=im_end,
                )
            ),
            dtype=torch.bfloat16,
            tok=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False, template="chatml_default_system"),
            template_storage="tokenizer_config",
            gen=dict(bos_token_id=eot_qwen, eos_token_id=[im_end, eot_qwen], pad_token_id=eot_qwen),
        ),
        dict(
            name="qwen3_f32",
            seed=6006,
            build=lambda: Qwen3ForCausalLM(
                Qwen3Config(
                    **common,
                    hidden_size=64,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    head_dim=32,
                    tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    bos_token_id=eot_qwen,
                    eos_token_id=im_end,
                )
            ),
            dtype=torch.float32,
            tok=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False, template="chatml"),
            template_storage="jinja",
            gen=dict(bos_token_id=eot_qwen, eos_token_id=im_end, pad_token_id=eot_qwen),
        ),
    ]


def write_model(spec, base_tok, seed):
    d = os.path.join(FIX, spec["name"])
    wipe(d)
    torch.manual_seed(seed)
    model = spec["build"]()
    randomize(model, seed)
    model = model.to(spec["dtype"])
    model.generation_config = GenerationConfig(**spec["gen"])
    save_kwargs = {}
    if "shard" in spec:
        save_kwargs["max_shard_size"] = spec["shard"]
    model.save_pretrained(d, **save_kwargs)
    ft = make_tokenizer(base_tok, **spec["tok"])
    save_tokenizer(ft, d, spec["template_storage"])
    return d


def write_legacy_llama():
    """llama_legacy_config: llama_f32's files, config.json rewritten the transformers-4.x way."""
    src = os.path.join(FIX, "llama_f32")
    d = os.path.join(FIX, "llama_legacy_config")
    wipe(d)
    for fn in ["model.safetensors", "tokenizer.json"]:
        shutil.copyfile(os.path.join(src, fn), os.path.join(d, fn))
    new = read_json(os.path.join(src, "config.json"))
    gen = read_json(os.path.join(src, "generation_config.json"))
    gen["transformers_version"] = "4.44.2"
    write_json(os.path.join(d, "generation_config.json"), gen)
    legacy = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": new["bos_token_id"],
        "eos_token_id": new["eos_token_id"],
        "hidden_act": "silu",
        "hidden_size": new["hidden_size"],
        "initializer_range": new["initializer_range"],
        "intermediate_size": new["intermediate_size"],
        "max_position_embeddings": new["max_position_embeddings"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": new["num_attention_heads"],
        "num_hidden_layers": new["num_hidden_layers"],
        "num_key_value_heads": new["num_key_value_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": new["rms_norm_eps"],
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
        "use_cache": True,
        "vocab_size": new["vocab_size"],
    }
    write_json(os.path.join(d, "config.json"), legacy)
    # tokenizer_config.json the 4.x way: added_tokens_decoder, inline chat_template, class name.
    tc = read_json(os.path.join(src, "tokenizer_config.json"))
    with open(os.path.join(src, "chat_template.jinja"), encoding="utf-8") as f:
        tmpl = f.read()
    added = {}
    for t in read_json(os.path.join(src, "tokenizer.json"))["added_tokens"]:
        added[str(t["id"])] = {
            "content": t["content"],
            "lstrip": t["lstrip"],
            "normalized": t["normalized"],
            "rstrip": t["rstrip"],
            "single_word": t["single_word"],
            "special": t["special"],
        }
    legacy_tc = {
        "added_tokens_decoder": added,
        "bos_token": tc["bos_token"],
        "chat_template": tmpl,
        "clean_up_tokenization_spaces": False,
        "eos_token": tc["eos_token"],
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    write_json(os.path.join(d, "tokenizer_config.json"), legacy_tc)
    return d


# ----------------------------------------------------------------------------------------------
# 3. Goldens
# ----------------------------------------------------------------------------------------------

NEVER_EOS = None  # set to an id >= vocab in main(): an EOS that can never be produced


def load(d):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(d)
    return model, tok


@torch.no_grad()
def last_logprobs(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return torch.log_softmax(out.logits[0, -1].float(), dim=-1)


@torch.no_grad()
def all_logprobs(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def top_gap(row):
    v = torch.topk(row.float(), 2).values
    return float(v[0] - v[1])


def gen_cfg(**kw):
    """A generation config built from scratch (not the model's), so EOS is fully under our control."""
    base = dict(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=0)
    base.update(kw)
    return GenerationConfig(**base)


class GapError(Exception):
    pass


class Gaps:
    def __init__(self):
        self.values = []

    def add(self, g, what):
        if not g > SEARCH_GAP:
            raise GapError(f"argmax gap {g:.6f} <= {SEARCH_GAP} at {what}")
        self.values.append(g)


def chat_ids(tok, messages):
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if not isinstance(out, list) else out
    return [int(x) for x in ids]


def model_eos_list(model):
    e = model.generation_config.eos_token_id
    return [e] if isinstance(e, int) else list(e)


@torch.no_grad()
def golden_logprobs(model, tok, cases):
    res = []
    for prompt_ids, response_ids in cases:
        assert 1 <= len(prompt_ids) <= 30 and 12 <= len(response_ids) <= 20, (len(prompt_ids), len(response_ids))
        lp = all_logprobs(model, prompt_ids + response_ids)
        n = len(prompt_ids)
        tl = [float(lp[n - 1 + i, t]) for i, t in enumerate(response_ids)]
        res.append({"prompt_ids": prompt_ids, "response_ids": response_ids, "token_logprobs": tl})
    return res


@torch.no_grad()
def hf_greedy(model, prompt_ids, max_new, eos_ids):
    cfg = gen_cfg(max_new_tokens=max_new, eos_token_id=eos_ids)
    out = model.generate(
        input_ids=torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        generation_config=cfg,
        return_dict_in_generate=True,
        output_logits=True,
    )
    toks = out.sequences[0, len(prompt_ids):].tolist()
    return toks, [l[0] for l in out.logits]


@torch.no_grad()
def golden_greedy(model, tok, gaps, prompts):
    """prompts: (ignore_eos_prompt, eos_prompt, length_prompt)."""
    res = []
    eos_default = model_eos_list(model)

    # (a) ignore_eos: 24 tokens, no EOS stopping at all.
    p = prompts[0]
    toks, logits = hf_greedy(model, p, 24, [NEVER_EOS])
    assert len(toks) == 24
    for i, l in enumerate(logits):
        gaps.add(top_gap(l), f"greedy ignore_eos step {i}")
        assert int(torch.argmax(l)) == toks[i]
    res.append({"prompt_ids": p, "max_new_tokens": 24, "ignore_eos": True, "eos_token_ids": eos_default,
                "token_ids": toks, "finish_reason": "length"})

    # (b) stops on EOS: pick a token that greedy produces at step >= 4 as (an extra) EOS id.
    p = prompts[1]
    toks, _ = hf_greedy(model, p, 16, [NEVER_EOS])
    k = next(i for i in range(4, 16) if toks[i] not in toks[:i])
    eos_ids = [toks[k]] + eos_default
    toks2, logits = hf_greedy(model, p, 16, eos_ids)
    assert toks2 == toks[: k + 1], (toks2, toks)
    for i, l in enumerate(logits):
        gaps.add(top_gap(l), f"greedy eos step {i}")
    res.append({"prompt_ids": p, "max_new_tokens": 16, "ignore_eos": False, "eos_token_ids": eos_ids,
                "token_ids": toks2, "finish_reason": "eos"})

    # (c) model's own EOS ids, never produced: stops on length.
    p = prompts[2]
    toks, logits = hf_greedy(model, p, 8, eos_default)
    assert len(toks) == 8 and not set(toks) & set(eos_default)
    for i, l in enumerate(logits):
        gaps.add(top_gap(l), f"greedy length step {i}")
    res.append({"prompt_ids": p, "max_new_tokens": 8, "ignore_eos": False, "eos_token_ids": eos_default,
                "token_ids": toks, "finish_reason": "length"})
    return res


@torch.no_grad()
def golden_cfg(model, gaps, cases):
    res = []
    for prompt_ids, base_ids, lam in cases:
        assert len(prompt_ids) != len(base_ids)
        cfg = gen_cfg(max_new_tokens=16, eos_token_id=[NEVER_EOS], guidance_scale=lam)
        out = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            negative_prompt_ids=torch.tensor([base_ids]),
            generation_config=cfg,
            return_dict_in_generate=True,
            output_scores=True,
        )
        toks = out.sequences[0, len(prompt_ids):].tolist()
        assert len(toks) == 16
        # Independent re-computation without caches: s = base + lam * (pref - base).
        y = []
        for i in range(16):
            lp = last_logprobs(model, prompt_ids + y)
            lb = last_logprobs(model, base_ids + y)
            s = lb + lam * (lp - lb)
            gaps.add(top_gap(s), f"cfg lambda {lam} step {i}")
            hf_s = out.scores[i][0]
            assert torch.allclose(hf_s, s, atol=1e-3, rtol=1e-4), float((hf_s - s).abs().max())
            y.append(int(torch.argmax(s)))
        assert y == toks, (y, toks)
        res.append({"prompt_ids": prompt_ids, "base_ids": base_ids, "lambda": lam, "max_new_tokens": 16,
                    "token_ids": toks})
    return res


@torch.no_grad()
def own_beam(model, prompt_ids, B, steps, gaps):
    """Token-level beam search per DESIGN.md section 2 (no EOS), checking separations."""
    hyps = [([], 0.0)]
    for step in range(steps):
        cands = []
        for bi, (seq, score) in enumerate(hyps):
            lp = last_logprobs(model, prompt_ids + seq).double()
            vals, idx = torch.topk(lp, B + 1)
            for v, t in zip(vals.tolist(), idx.tolist()):
                cands.append((score + v, bi, t))
        cands.sort(key=lambda c: -c[0])
        gaps.add(cands[B - 1][0] - cands[B][0], f"beam B={B} step {step} (B-th vs B+1-th)")
        hyps = [(hyps[bi][0] + [t], s) for s, bi, t in cands[:B]]
    for i in range(B - 1):
        gaps.add(hyps[i][1] - hyps[i + 1][1], f"beam B={B} final order {i}")
    return hyps


@torch.no_grad()
def golden_beam(model, gaps, cases):
    res = []
    for prompt_ids, B in cases:
        cfg = gen_cfg(
            max_new_tokens=10, eos_token_id=[NEVER_EOS], num_beams=B, num_return_sequences=B,
            length_penalty=1.0, early_stopping=False,
        )
        out = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            generation_config=cfg,
            return_dict_in_generate=True,
            output_scores=True,
        )
        seqs = [s[len(prompt_ids):].tolist() for s in out.sequences]
        assert all(len(s) == 10 for s in seqs)
        hyps = own_beam(model, prompt_ids, B, 10, gaps)
        assert [h[0] for h in hyps] == seqs, ([h[0] for h in hyps], seqs)
        # Raw sums of token log-probs recomputed by one forward pass per sequence.
        sums = []
        for s in seqs:
            lp = all_logprobs(model, prompt_ids + s)
            n = len(prompt_ids)
            sums.append(float(sum(float(lp[n - 1 + i, t]) for i, t in enumerate(s))))
        hf = (out.sequences_scores * 10).tolist()
        for a, b in zip(sums, hf):
            assert abs(a - b) < 1e-3, (sums, hf)
        res.append({"prompt_ids": prompt_ids, "num_beams": B, "max_new_tokens": 10, "sequences": seqs,
                    "sequence_logprobs": sums})
    return res


CHAT_CASES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the pirate go to school? To improve his arrrr-ticulation!"},
        {"role": "user", "content": "Another one, please. "},
    ],
    [{"role": "user", "content": "  Ça va? 🏴‍☠️ Arr!\nLine two:\n\tindented — “quotes” 日本語 ñ  \n"}],
]


def golden_chat(tok):
    res = []
    for msgs in CHAT_CASES:
        try:
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja TemplateError from raise_exception
            res.append({"messages": msgs, "add_generation_prompt": True, "error": str(e)})
            continue
        ids = chat_ids(tok, msgs)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        rust_tok = Tokenizer.from_file(os.path.join(tok.name_or_path, "tokenizer.json"))
        assert ids == rust_tok.encode(text, add_special_tokens=False).ids
        res.append({"messages": msgs, "add_generation_prompt": True, "text": text, "ids": ids})
    return res


ENCODE_TEXTS = [
    "Hello world! The pirate sailed to France.",
    "   leading spaces,\ttabs\nand newlines\n\n  end ",
    "Ünïcödé: café, naïve, 日本語, emoji 🏴‍☠️🦜 and 12345.678",
    "<|im_start|>user\nhi there<|im_end|> <|eot_id|>",
]


def golden_encode(tok, rust_tok):
    res = []
    for text in ENCODE_TEXTS:
        for flag in (True, False):
            ids = tok(text, add_special_tokens=flag)["input_ids"]
            assert ids == rust_tok.encode(text, add_special_tokens=flag).ids, (text, flag)
            res.append({"text": text, "add_special_tokens": flag, "ids": ids})
    return res


def golden_decode(tok, rust_tok):
    res = []
    ids = tok("<|im_start|>assistant\nArr, Paris it be! 🦜<|im_end|>", add_special_tokens=True)["input_ids"]
    for skip in (True, False):
        text = tok.decode(ids, skip_special_tokens=skip)
        assert text == rust_tok.decode(ids, skip_special_tokens=skip), (text,)
        res.append({"ids": ids, "skip_special_tokens": skip, "text": text})
    return res


def realistic_prompts(tok, name):
    """Prompt id lists built from real text (and through the chat template)."""
    enc = lambda t, sp=True: tok(t, add_special_tokens=sp)["input_ids"]
    rejects_system = name == "llama_linear_f16"
    pref_sys = "Talk like a pirate."
    q1, q2 = "Tell me about France.", "What is the capital of France?"

    def pref_base(q):
        base = [{"role": "user", "content": q}]
        if rejects_system:
            pref = [{"role": "user", "content": pref_sys + "\n\n" + q}]
        else:
            pref = [{"role": "system", "content": pref_sys}, {"role": "user", "content": q}]
        return chat_ids(tok, pref), chat_ids(tok, base)

    lp1_prompt = enc("The pirate ship sailed to France and")
    lp1_resp = enc(" the crew found a chest of gold coins.", False)
    first = tok.bos_token_id if tok.bos_token_id is not None else enc("Hello", False)[0]
    lp2_prompt = [first]
    lp2_resp = enc("Paris is the capital of France, famous for the Eiffel Tower.", False)[:20]
    pA, bA = pref_base(q1)
    pB, bB = pref_base(q2)
    return dict(
        logprobs=[(lp1_prompt, lp1_resp[:20]), (lp2_prompt, lp2_resp)],
        greedy=[chat_ids(tok, [{"role": "user", "content": q2}]), enc("Once upon a time, the pirate"),
                enc("Numbers: 1 2 3")],
        cfg=[(pA, bA, 3.0), (pB, bB, 0.5), (pA, bA, 1.5)],
        beam=[(enc("The weather today is"), 2), (chat_ids(tok, [{"role": "user", "content": q1}]), 4)],
    )


def make_golden(d, name, seed):
    model, tok = load(d)
    rust_tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    gaps = Gaps()
    P = realistic_prompts(tok, name)
    g = {"model": name}
    g["logprobs"] = golden_logprobs(model, tok, P["logprobs"])
    g["greedy"] = golden_greedy(model, tok, gaps, P["greedy"])
    g["cfg"] = golden_cfg(model, gaps, P["cfg"])
    g["beam"] = golden_beam(model, gaps, P["beam"])
    g["chat"] = golden_chat(tok)
    g["encode"] = golden_encode(tok, rust_tok)
    g["decode"] = golden_decode(tok, rust_tok)
    assert min(gaps.values) > MIN_GAP
    out = {"model": name, "min_gap": min(gaps.values), "num_gap_checks": len(gaps.values), "seed": seed,
           "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    out.update({k: v for k, v in g.items() if k != "model"})
    write_golden(os.path.join(d, "golden.json"), out)
    return out, model, tok


def write_golden(path, obj):
    """One line per case: readable and diff-friendly without one number per line."""
    lines = ["{"]
    keys = list(obj.keys())
    for ki, k in enumerate(keys):
        v = obj[k]
        comma = "," if ki < len(keys) - 1 else ""
        if isinstance(v, list):
            lines.append(f" {json.dumps(k)}: [")
            for ci, c in enumerate(v):
                lines.append("  " + json.dumps(c, ensure_ascii=False) + ("," if ci < len(v) - 1 else ""))
            lines.append(" ]" + comma)
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{comma}")
    lines.append("}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    json.loads(open(path, encoding="utf-8").read())


# ----------------------------------------------------------------------------------------------
# 4. Bad inputs
# ----------------------------------------------------------------------------------------------


def write_bad(base_tok):
    bad = os.path.join(FIX, "bad")
    wipe(bad)
    V = base_tok.get_vocab_size()
    bot, eot = tok_id("<|begin_of_text|>"), tok_id("<|eot_id|>")
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=bot, eos_token_id=eot,
    )
    torch.manual_seed(7007)
    model = LlamaForCausalLM(cfg)
    randomize(model, 7007)
    model = model.to(torch.float16)
    model.generation_config = GenerationConfig(bos_token_id=bot, eos_token_id=eot)
    ft = make_tokenizer(base_tok, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True,
                        template="llama3")

    def fresh(sub):
        d = os.path.join(bad, sub)
        os.makedirs(d)
        model.save_pretrained(d)
        save_tokenizer(ft, d, "jinja")
        return d

    # valid: the baseline the others are derived from (loads fine).
    fresh("valid")

    # truncated: model.safetensors cut to half its size (header intact, data short).
    d = fresh("truncated")
    p = os.path.join(d, "model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)

    # missing_tensor: one layer weight removed.
    d = fresh("missing_tensor")
    p = os.path.join(d, "model.safetensors")
    t = load_file(p)
    del t["model.layers.0.mlp.down_proj.weight"]
    save_file(t, p, metadata={"format": "pt"})

    # wrong_shape: gate_proj stored transposed ([16, 32] instead of [32, 16]).
    d = fresh("wrong_shape")
    p = os.path.join(d, "model.safetensors")
    t = load_file(p)
    w = t["model.layers.0.mlp.gate_proj.weight"]
    t["model.layers.0.mlp.gate_proj.weight"] = w.t().contiguous()
    save_file(t, p, metadata={"format": "pt"})

    # bad_config: config.json is not valid JSON (cut off mid-object).
    d = fresh("bad_config")
    p = os.path.join(d, "config.json")
    with open(p, encoding="utf-8") as f:
        txt = f.read()
    with open(p, "w", encoding="utf-8") as f:
        f.write(txt[: txt.index('"hidden_size"') + len('"hidden_size": 1')])

    # unknown_arch: a real (tiny) GPT-2 checkpoint.
    d = os.path.join(bad, "unknown_arch")
    os.makedirs(d)
    gcfg = GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                      bos_token_id=bot, eos_token_id=eot)
    torch.manual_seed(8008)
    gpt2 = GPT2LMHeadModel(gcfg).to(torch.float16)
    gpt2.save_pretrained(d)
    save_tokenizer(ft, d, "jinja")


# ----------------------------------------------------------------------------------------------


def check_legacy(d):
    cfg = AutoConfig.from_pretrained(d)
    rp = dict(cfg.rope_parameters)
    assert rp.get("rope_type") == "linear" and rp.get("factor") == 2.0 and rp.get("rope_theta") == 10000.0, rp
    model, _ = load(d)
    inv = model.model.rotary_emb.inv_freq
    expect = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)) / 2.0
    assert torch.allclose(inv, expect), (inv, expect)
    return rp


def main():
    global TOK, NEVER_EOS
    os.makedirs(FIX, exist_ok=True)
    TOK = train_base_tokenizer()
    V = TOK.get_vocab_size()
    NEVER_EOS = V + 1000
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    print(f"tokenizer: vocab {V}")
    summary = {}
    for spec in spec_list():
        for attempt in range(50):
            seed = spec["seed"] + attempt
            d = write_model(spec, TOK, seed)
            try:
                out, model, tok = make_golden(d, spec["name"], seed)
                if spec["name"] == "llama_f32":
                    # The legacy copy shares these weights; its goldens differ (linear rope) and must
                    # clear the gap too.
                    ld = write_legacy_llama()
                    rp = check_legacy(ld)
                    lout, _, _ = make_golden(ld, "llama_legacy_config", seed)
            except GapError as e:
                print(f"{spec['name']}: seed {seed} rejected: {e}")
                continue
            break
        else:
            sys.exit(f"{spec['name']}: no seed found")
        summary[spec["name"]] = out["min_gap"]
        print(f"{spec['name']}: seed {seed}, min_gap {out['min_gap']:.5f} over {out['num_gap_checks']} checks")
        if spec["name"] == "llama_f32":
            print(f"llama_legacy_config: loaded rope_parameters {rp}, min_gap {lout['min_gap']:.5f}")
    write_bad(TOK)
    print("bad/ written")



# ----------------------------------------------------------------------------------------------
# 5. GGUF (python3 scripts/make_fixtures.py --gguf [--smollm FILE.gguf])
# ----------------------------------------------------------------------------------------------
#
# A separate run that leaves everything above untouched. It writes
#   tests/fixtures/gguf/types.gguf, types_golden.json      one tensor per supported type (odd row
#       counts) and one metadata value of every kind; golden = gguf.quants.dequantize, as f32 bits
#   tests/fixtures/gguf/tiny_llama.gguf, tiny_llama_golden.json   a tiny random llama written the
#       way llama.cpp writes one (q/k rows permuted, mixed tensor types, byte-level BPE tokenizer
#       with pre "llama-bpe", BOS added, chat template); goldens from transformers loading the GGUF
#   tests/fixtures/gguf/tiny_tok_smollm.gguf, tiny_tok_smollm_golden.json   the same tokenizer
#       with pre "smollm" and no BOS, metadata only; encode goldens from transformers
#   tests/fixtures/smollm2/golden.json   SmolLM2-135M-Instruct (the default model, not committed)
#       loaded by transformers from its GGUF: chat ids, encodes, log-probs, greedy, guided greedy
# transformers needs `accelerate` to load a GGUF model.

GGUF_DIR = os.path.join(FIX, "gguf")
SMOL_DIR = os.path.join(FIX, "smollm2")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def f32_bits(a):
    import numpy as np

    return [int(x) for x in np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32)]


def write_types_gguf():
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q

    path = os.path.join(GGUF_DIR, "types.gguf")
    rng = np.random.default_rng(4242)
    w = gguf.GGUFWriter(path, arch="rear-test")
    # One metadata value of every kind.
    w.add_uint8("rear.test.u8", 200)
    w.add_int8("rear.test.i8", -100)
    w.add_uint16("rear.test.u16", 60000)
    w.add_int16("rear.test.i16", -30000)
    w.add_uint32("rear.test.u32", 4000000000)
    w.add_int32("rear.test.i32", -2000000000)
    w.add_uint64("rear.test.u64", 18000000000000000000)
    w.add_int64("rear.test.i64", -9000000000000000000)
    w.add_float32("rear.test.f32", 0.1)
    w.add_float64("rear.test.f64", -2.5e-300)
    w.add_bool("rear.test.bool", True)
    w.add_string("rear.test.string", "Ahoy, 世界! 🦜")
    w.add_array("rear.test.strings", ["a", "", "bc", "Ġthe"])
    w.add_array("rear.test.ints", [1, -2, 3])
    w.add_array("rear.test.floats", [0.5, -1.25])
    w.add_array("rear.test.nested", [[1, 2], [3]])
    golden = {"metadata": {"rear.test.u8": 200, "rear.test.i8": -100, "rear.test.u16": 60000,
                           "rear.test.i16": -30000, "rear.test.u32": 4000000000, "rear.test.i32": -2000000000,
                           "rear.test.u64": 18000000000000000000, "rear.test.i64": -9000000000000000000,
                           "rear.test.f32_bits": f32_bits(np.float32(0.1))[0], "rear.test.f64": -2.5e-300,
                           "rear.test.bool": True, "rear.test.string": "Ahoy, 世界! 🦜",
                           "rear.test.strings": ["a", "", "bc", "Ġthe"]},
              "tensors": []}
    # (name, type, HF shape [rows..., row_len]); odd row counts, a 3-D one, and values that exercise
    # f16 subnormals, bf16 rounding, negative scales and all-equal blocks.
    specs = [
        ("t_f32", Q.F32, (3, 8)),
        ("t_f16", Q.F16, (5, 16)),
        ("t_bf16", Q.BF16, (3, 24)),
        ("t_q8_0", Q.Q8_0, (5, 64)),
        ("t_q4_0", Q.Q4_0, (3, 96)),
        ("t_q4_1", Q.Q4_1, (7, 32)),
        ("t_q4_1_3d", Q.Q4_1, (3, 5, 64)),
    ]
    for name, qt, shape in specs:
        x = (rng.standard_normal(shape) * 2.0).astype(np.float32)
        flat = x.reshape(-1)
        flat[:3] = [0.0, -0.0, 6.1e-6]  # zeros and an f16 subnormal
        if qt in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
            flat[32:64] = 0.75  # one constant block (d = 0 for Q4_1)
        if qt == Q.F32:
            data = x
        elif qt == Q.F16:
            data = x.astype(np.float16)
        else:
            data = gguf.quants.quantize(x, qt)
        w.add_tensor(name, data, raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
        deq = gguf.quants.dequantize(data if qt not in (Q.F32, Q.F16) else data.view(np.uint8).reshape(*shape[:-1], -1), qt)
        assert deq.shape == shape, (name, deq.shape)
        golden["tensors"].append({"name": name, "type": qt.name, "shape": list(shape), "bits": f32_bits(deq)})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The gguf package reads it back the same.
    r = gguf.GGUFReader(path)
    for t, g in zip(r.tensors, golden["tensors"]):
        assert t.name == g["name"] and f32_bits(gguf.quants.dequantize(t.data, t.tensor_type)) == g["bits"], t.name
    write_json(os.path.join(GGUF_DIR, "types_golden.json"), golden, indent=None)
    print(f"types.gguf: {os.path.getsize(path)} bytes, {len(specs)} tensors")


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> ggml interleaved rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tokenizer_kv(w, tok, pre, add_bos, bos, eos, pad, template, user_defined=()):
    """The tokenizer.* keys llama.cpp writes for a byte-level BPE tokenizer."""
    vocab = tok.get_vocab()
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    specials = set(TRAINED_SPECIALS + ADDED_SPECIALS)
    types = [4 if t in user_defined else 3 if t in specials else 1 for t in tokens]
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", vocab[bos])
    w.add_uint32("tokenizer.ggml.eos_token_id", vocab[eos])
    w.add_uint32("tokenizer.ggml.padding_token_id", vocab[pad])
    w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    if template is not None:
        w.add_string("tokenizer.chat_template", template)


GGUF_ENCODE_TEXTS = ENCODE_TEXTS + [
    "What is the capital of France?",
    "<start_of_turn>user\nhi<end_of_turn>",
    "Hello\n\n\n   world  !!  123456789 it's",
]

TINY = dict(hidden=64, inter=96, layers=2, heads=4, kv_heads=2, head_dim=16, ctx=256, theta=10000.0, eps=1e-5)
# Tensor type per (layer, GGUF name): every supported type in both layers' matrices.
TINY_TYPES = [
    {"attn_q": "Q4_0", "attn_k": "Q8_0", "attn_v": "F16", "attn_output": "BF16",
     "ffn_gate": "Q4_1", "ffn_up": "F32", "ffn_down": "Q4_0"},
    {"attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q8_0", "attn_output": "Q4_0",
     "ffn_gate": "F16", "ffn_up": "BF16", "ffn_down": "Q8_0"},
]


def gguf_quant(x, type_name):
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q

    qt = Q[type_name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qt == Q.F32:
        return x, None
    if qt == Q.F16:
        return x.astype(np.float16), None
    return gguf.quants.quantize(x, qt), qt


def write_tiny_llama_gguf(seed):
    import gguf

    c = TINY
    V = TOK.get_vocab_size()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=c["hidden"], intermediate_size=c["inter"],
                      num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                      num_key_value_heads=c["kv_heads"], head_dim=c["head_dim"],
                      max_position_embeddings=c["ctx"], rms_norm_eps=c["eps"],
                      rope_parameters={"rope_type": "default", "rope_theta": c["theta"]},
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    randomize(model, seed)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    path = os.path.join(GGUF_DIR, "tiny_llama.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny llama")
    w.add_uint32("llama.context_length", c["ctx"])
    w.add_uint32("llama.embedding_length", c["hidden"])
    w.add_uint32("llama.block_count", c["layers"])
    w.add_uint32("llama.feed_forward_length", c["inter"])
    w.add_uint32("llama.rope.dimension_count", c["head_dim"])
    w.add_uint32("llama.attention.head_count", c["heads"])
    w.add_uint32("llama.attention.head_count_kv", c["kv_heads"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c["eps"])
    w.add_float32("llama.rope.freq_base", c["theta"])
    w.add_uint32("llama.vocab_size", V)
    w.add_uint32("general.file_type", 3)
    gguf_tokenizer_kv(w, TOK, "llama-bpe", True, "<|begin_of_text|>", "<|im_end|>", "<|endoftext|>",
                      LLAMA3_TEMPLATE, user_defined=("<start_of_turn>",))
    tensors = [("token_embd.weight", sd["model.embed_tokens.weight"], "Q8_0")]
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}
        tensors.append((f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], "F32"))
        for gname, hname in hf.items():
            x = sd[p + hname + ".weight"]
            if gname == "attn_q":
                x = llama_cpp_permute(x, c["heads"])
            elif gname == "attn_k":
                x = llama_cpp_permute(x, c["kv_heads"])
            tensors.append((f"blk.{i}.{gname}.weight", x, TINY_TYPES[i][gname]))
        tensors.append((f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], "F32"))
    tensors.append(("output_norm.weight", sd["model.norm.weight"], "F32"))
    tensors.append(("output.weight", sd["lm_head.weight"], "Q4_1"))
    for name, x, t in tensors:
        data, raw = gguf_quant(x, t)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_tok_gguf():
    import gguf

    path = os.path.join(GGUF_DIR, "tiny_tok_smollm.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny tokenizer")
    gguf_tokenizer_kv(w, TOK, "smollm", False, "<|im_start|>", "<|im_end|>", "<|im_end|>",
                      CHATML_DEFAULT_SYSTEM_TEMPLATE)
    w.add_uint32("tokenizer.ggml.unknown_token_id", TOK.token_to_id("<|endoftext|>"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load_gguf_hf(path, model=True):
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if not model:
        return None, tok
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m, tok


def gguf_encode_golden(tok):
    res = []
    for text in GGUF_ENCODE_TEXTS:
        for flag in (True, False):
            res.append({"text": text, "add_special_tokens": flag, "ids": tok(text, add_special_tokens=flag)["input_ids"]})
    ids = tok("<|im_start|>assistant\nArr, Paris it be! 🦜<|im_end|>", add_special_tokens=False)["input_ids"]
    dec = [{"ids": ids, "skip_special_tokens": s, "text": tok.decode(ids, skip_special_tokens=s)} for s in (True, False)]
    return res, dec


GGUF_CHAT_CASES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Always answer like a pirate."},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer concisely."},
     {"role": "user", "content": "How many legs does a spider have?"}],
    [{"role": "user", "content": "Tell me a joke!"},
     {"role": "assistant", "content": "Why did the pirate go to school? To improve his arrrr-ticulation."},
     {"role": "user", "content": "Another one, please."}],
    [{"role": "user", "content": "  Ça va? 🏴‍☠️ Arr!\nLine two:\n\tindented — “quotes” 日本語 ñ  \n"}],
]


def gguf_chat_golden(tok):
    res = []
    for msgs in GGUF_CHAT_CASES:
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = chat_ids(tok, msgs)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        res.append({"messages": msgs, "add_generation_prompt": True, "text": text, "ids": ids})
    return res


def pref_base_ids(tok, pref, q):
    return (chat_ids(tok, [{"role": "system", "content": pref}, {"role": "user", "content": q}]),
            chat_ids(tok, [{"role": "user", "content": q}]))


@torch.no_grad()
def gguf_model_goldens(model, tok, cases, eos_ids):
    """logprobs / greedy / cfg goldens with the top1-top2 gap of every argmax decision."""
    gaps = []
    out = {"logprobs": [], "greedy": [], "cfg": []}
    for prompt_ids, response_ids in cases["logprobs"]:
        lp = all_logprobs(model, prompt_ids + response_ids)
        n = len(prompt_ids)
        tl = [float(lp[n - 1 + i, t]) for i, t in enumerate(response_ids)]
        out["logprobs"].append({"prompt_ids": prompt_ids, "response_ids": response_ids, "token_logprobs": tl})
    for prompt_ids, max_new, ignore_eos in cases["greedy"]:
        toks, logits = hf_greedy(model, prompt_ids, max_new, [NEVER_EOS] if ignore_eos else eos_ids)
        for i, l in enumerate(logits):
            gaps.append(top_gap(torch.log_softmax(l.float(), -1)))
            assert int(torch.argmax(l)) == toks[i]
        reason = "eos" if toks and toks[-1] in eos_ids and not ignore_eos else "length"
        out["greedy"].append({"prompt_ids": prompt_ids, "max_new_tokens": max_new, "ignore_eos": ignore_eos,
                              "eos_token_ids": eos_ids, "token_ids": toks, "finish_reason": reason})
    for prompt_ids, base_ids, lam, max_new in cases["cfg"]:
        g = gen_cfg(max_new_tokens=max_new, eos_token_id=[NEVER_EOS], guidance_scale=lam)
        o = model.generate(input_ids=torch.tensor([prompt_ids]),
                           attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                           negative_prompt_ids=torch.tensor([base_ids]), generation_config=g,
                           return_dict_in_generate=True, output_scores=True)
        toks = o.sequences[0, len(prompt_ids):].tolist()
        assert len(toks) == max_new
        y = []
        for i in range(max_new):
            lp = last_logprobs(model, prompt_ids + y)
            lb = last_logprobs(model, base_ids + y)
            s = lb + lam * (lp - lb)
            gaps.append(top_gap(s))
            assert torch.allclose(o.scores[i][0], s, atol=1e-3, rtol=1e-4)
            y.append(int(torch.argmax(s)))
        assert y == toks, (y, toks)
        out["cfg"].append({"prompt_ids": prompt_ids, "base_ids": base_ids, "lambda": lam, "max_new_tokens": max_new,
                           "token_ids": toks})
    return out, gaps


def make_tiny_llama_golden():
    global NEVER_EOS
    NEVER_EOS = TOK.get_vocab_size() + 1000
    for attempt in range(50):
        seed = 7007 + attempt
        path = write_tiny_llama_gguf(seed)
        model, tok = load_gguf_hf(path)
        assert tok.bos_token == "<|begin_of_text|>" and tok("hi")["input_ids"][0] == tok.bos_token_id
        enc = lambda t, sp=True: tok(t, add_special_tokens=sp)["input_ids"]
        pA, bA = pref_base_ids(tok, "Talk like a pirate.", "Tell me about France.")
        pB, bB = pref_base_ids(tok, "Answer concisely.", "What is the capital of France?")
        resp = enc(" the crew found a chest of gold coins in Paris.", False)[:20]
        cases = {
            "logprobs": [(enc("The pirate ship sailed to France and"), resp), (pA, resp)],
            "greedy": [(bA, 24, True), (enc("Once upon a time, the pirate"), 16, True)],
            "cfg": [(pA, bA, 3.0, 16), (pB, bB, 0.5, 16)],
        }
        out, gaps = gguf_model_goldens(model, tok, cases, [tok.eos_token_id])
        if min(gaps) > SEARCH_GAP:
            break
        print(f"tiny_llama: seed {seed} rejected: min gap {min(gaps):.6f}")
    else:
        sys.exit("tiny_llama: no seed found")
    enc_g, dec_g = gguf_encode_golden(tok)
    golden = {"model": "tiny_llama.gguf", "seed": seed, "min_gap": min(gaps), "num_gap_checks": len(gaps),
              "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    golden.update(out)
    golden["chat"] = gguf_chat_golden(tok)
    golden["encode"] = enc_g
    golden["decode"] = dec_g
    write_golden(os.path.join(GGUF_DIR, "tiny_llama_golden.json"), golden)
    print(f"tiny_llama.gguf: {os.path.getsize(path)} bytes, seed {seed}, min_gap {min(gaps):.5f}")

    tpath = write_tiny_tok_gguf()
    _, ttok = load_gguf_hf(tpath, model=False)
    enc_g, dec_g = gguf_encode_golden(ttok)
    write_golden(os.path.join(GGUF_DIR, "tiny_tok_smollm_golden.json"),
                 {"model": "tiny_tok_smollm.gguf", "chat": gguf_chat_golden(ttok), "encode": enc_g, "decode": dec_g})
    print(f"tiny_tok_smollm.gguf: {os.path.getsize(tpath)} bytes")


def default_smollm_path():
    """Where rear caches the default model (src/model/fetch.rs cache_dir)."""
    env = lambda k: os.environ.get(k) or None
    if env("REAR_HOME"):
        d = env("REAR_HOME")
    elif env("XDG_CACHE_HOME"):
        d = os.path.join(env("XDG_CACHE_HOME"), "rear")
    else:
        d = os.path.join(os.path.expanduser("~"), ".cache", "rear")
    return os.path.join(d, SMOL_FILE)


SMOL_PREF = "Always answer like a pirate."
SMOL_Q = "What is the capital of France?"


def make_smollm_golden(path):
    global NEVER_EOS
    model, tok = load_gguf_hf(path)
    NEVER_EOS = model.config.vocab_size + 1000
    eos = [tok.eos_token_id]
    pref, base = pref_base_ids(tok, SMOL_PREF, SMOL_Q)
    resp_text = ("Arr, matey! The capital of France be Paris, a grand port where the Seine flows "
                 "and many a sailor drinks his rum under the great iron tower, savvy?")
    resp = tok(resp_text, add_special_tokens=False)["input_ids"][:32]
    assert len(resp) == 32
    story = chat_ids(tok, [{"role": "user", "content": "Write a short story about a pirate and a parrot."}])
    cases = {
        "logprobs": [(pref, resp), (base, resp)],
        "greedy": [(story, 32, True), (pref, 32, False), (base, 32, False)],
        "cfg": [(pref, base, 3.0, 24)],
    }
    out, gaps = gguf_model_goldens(model, tok, cases, eos)
    enc_g, dec_g = gguf_encode_golden(tok)
    golden = {"model": SMOL_FILE, "preference": SMOL_PREF, "question": SMOL_Q,
              "min_gap": min(gaps), "num_gap_checks": len(gaps),
              "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    golden.update(out)
    golden["chat"] = gguf_chat_golden(tok)
    golden["encode"] = enc_g
    golden["decode"] = dec_g
    os.makedirs(SMOL_DIR, exist_ok=True)
    write_golden(os.path.join(SMOL_DIR, "golden.json"), golden)
    for c in golden["greedy"] + golden["cfg"]:
        print("  ", repr(tok.decode(c["token_ids"])))
    print(f"smollm2/golden.json: min_gap {min(gaps):.5f} over {len(gaps)} decisions")


def main_gguf(argv):
    global TOK
    smol = default_smollm_path()
    if "--smollm" in argv:
        smol = argv[argv.index("--smollm") + 1]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(GGUF_DIR, exist_ok=True)
    TOK = train_base_tokenizer()
    write_types_gguf()
    make_tiny_llama_golden()
    make_spm_goldens()
    if os.path.isfile(smol):
        make_smollm_golden(smol)
    else:
        print(f"smollm2: {smol} not found (run rear once, or pass --smollm FILE.gguf); golden not rewritten")


# ----------------------------------------------------------------------------------------------
# 6. GGUF with a SentencePiece tokenizer (python3 scripts/make_fixtures.py --gguf-spm; also run by
#    --gguf). Needs sentencepiece, gguf, numpy and transformers (whose GGUF reader imports torch);
#    this part builds no torch model.
# ----------------------------------------------------------------------------------------------
#
#   tests/fixtures/gguf/tiny_spm.gguf, tiny_spm_golden.json   a SentencePiece BPE vocabulary
#       trained by the `sentencepiece` library on CORPUS (byte fallback, so <0x00>..<0xFF>; <unk>
#       <s> </s>; control <|im_start|> <|im_end|>; user-defined <|user|> <|assistant|> <|system|>;
#       digits split; whitespace-only pieces) written as llama.cpp's convert_hf_to_gguf.py writes
#       one (tokenizer.ggml.model "llama", tokens, scores, token types, no merges), add_bos true,
#       TinyLlama-Chat's (Zephyr) template, and random numpy weights of a 2-layer llama so that the
#       binary can load it
#   tests/fixtures/gguf/tiny_tok_spm_mistral.gguf, tiny_tok_spm_mistral_golden.json   the same
#       vocabulary, metadata only: no add_bos_token key (transformers then adds BOS), add_eos true,
#       no unknown/padding ids, a Mistral-style [INST] template that writes bos_token itself
#   tests/fixtures/gguf/tiny_tok_spm_renamed.gguf, tiny_tok_spm_renamed_golden.json   the same
#       vocabulary with <unk> <s> </s> renamed, merges given in the file, add_bos false, add_eos true
#   tests/fixtures/gguf/tiny_tok_gpt2_noeot.gguf, tiny_tok_gpt2_noeot_golden.json   the shared
#       byte-level BPE tokenizer without <|endoftext|> (which transformers then appends)
# Goldens: transformers' AutoTokenizer.from_pretrained(dir, gguf_file=...) on each file: encode (with
# and without special tokens), decode, chat template text and ids, the tokenizer class, named
# special tokens, and the backend tokenizer's components (for reference when something differs).

SPM_VOCAB = 640
SPM_USER_DEFINED = ["<|user|>", "<|assistant|>", "<|system|>"]
SPM_CONTROL = ["<|im_start|>", "<|im_end|>"]

# TinyLlama-1.1B-Chat-v1.0's template, as its GGUF files carry it.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

SPM_ENCODE_TEXTS = GGUF_ENCODE_TEXTS + [
    "",
    " ",
    "   ",
    "a",
    " Hello",
    "Hello</s><s> world<unk>!",
    "<s>The capital</s>",
    "<|user|>\nWhat is the capital of France?</s>\n<|assistant|>\n",
    "x<|user|>y <|assistant|> z",
    "<|im_start|>system\nAnswer concisely.<|im_end|>\n",
    "\u2581already \u2581\u2581marked\u2581",
    "<0x41> is not a byte token, <0xFF>",
    "new\nlines\r\n and\ttabs\t\t  and    runs     of spaces",
    "Digits 1234567890 and 3.14159",
    "\U0001F3F4\u200d\u2620\ufe0f \u00e7a va? \u65e5\u672c\u8a9e \u00f1 \U0001F99C",
    "def greet(name):\n    return \"Hello, \" + name + \"!\"\n",
    "The pirate ship sailed out of the harbour at dawn.",
]

SPM_CHAT_CASES = GGUF_CHAT_CASES[:4]


def train_spm():
    """A SentencePiece BPE model (serialized proto) trained on CORPUS; deterministic."""
    import io
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model, model_type="bpe",
        vocab_size=SPM_VOCAB, byte_fallback=True, character_coverage=0.9995, num_threads=1,
        user_defined_symbols=SPM_USER_DEFINED, control_symbols=SPM_CONTROL, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def spm_vocab(sp):
    """(tokens, scores, token types) as convert_hf_to_gguf.py _create_vocab_sentencepiece builds them."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = 2  # UNKNOWN
        elif sp.is_control(i):
            t = 3  # CONTROL
        elif sp.is_unused(i):
            t = 5  # UNUSED
        elif sp.is_byte(i):
            t = 6  # BYTE
        elif tokens[-1] in SPM_USER_DEFINED:
            t = 4  # USER_DEFINED
        else:
            t = 1  # NORMAL
        types.append(t)
    return tokens, scores, types


def gguf_spm_tokenizer_kv(w, vocab, bos, eos, unk, pad, add_bos, add_eos, template):
    """The tokenizer.* keys llama.cpp writes for a SentencePiece tokenizer (None: key left out)."""
    tokens, scores, types = vocab
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", scores)
    w.add_array("tokenizer.ggml.token_type", types)
    for key, v in [("bos", bos), ("eos", eos), ("unknown", unk), ("padding", pad)]:
        if v is not None:
            w.add_uint32(f"tokenizer.ggml.{key}_token_id", tokens.index(v))
    if add_bos is not None:
        w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    if add_eos is not None:
        w.add_bool("tokenizer.ggml.add_eos_token", add_eos)
    w.add_string("tokenizer.chat_template", template)


def write_spm_llama_gguf(vocab, seed=8008):
    """A 2-layer llama with numpy random weights (F16 and Q8_0) and the SentencePiece tokenizer."""
    import numpy as np
    import gguf

    c = TINY
    V = len(vocab[0])
    rng = np.random.default_rng(seed)
    path = os.path.join(GGUF_DIR, "tiny_spm.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny llama, sentencepiece tokenizer")
    w.add_uint32("llama.context_length", c["ctx"])
    w.add_uint32("llama.embedding_length", c["hidden"])
    w.add_uint32("llama.block_count", c["layers"])
    w.add_uint32("llama.feed_forward_length", c["inter"])
    w.add_uint32("llama.rope.dimension_count", c["head_dim"])
    w.add_uint32("llama.attention.head_count", c["heads"])
    w.add_uint32("llama.attention.head_count_kv", c["kv_heads"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c["eps"])
    w.add_float32("llama.rope.freq_base", c["theta"])
    w.add_uint32("llama.vocab_size", V)
    w.add_uint32("general.file_type", 7)
    gguf_spm_tokenizer_kv(w, vocab, "<s>", "</s>", "<unk>", "</s>", True, False, ZEPHYR_TEMPLATE)
    mat = lambda r, k: (rng.standard_normal((r, k)) * 0.3).astype(np.float32)
    norm = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    h, kvd = c["hidden"], c["kv_heads"] * c["head_dim"]
    tensors = [("token_embd.weight", mat(V, h), "Q8_0")]
    for i in range(c["layers"]):
        tensors += [
            (f"blk.{i}.attn_norm.weight", norm(h), "F32"),
            (f"blk.{i}.attn_q.weight", mat(c["heads"] * c["head_dim"], h), "Q8_0"),
            (f"blk.{i}.attn_k.weight", mat(kvd, h), "Q8_0"),
            (f"blk.{i}.attn_v.weight", mat(kvd, h), "F16"),
            (f"blk.{i}.attn_output.weight", mat(h, c["heads"] * c["head_dim"]), "Q8_0"),
            (f"blk.{i}.ffn_norm.weight", norm(h), "F32"),
            (f"blk.{i}.ffn_gate.weight", mat(c["inter"], h), "Q8_0"),
            (f"blk.{i}.ffn_up.weight", mat(c["inter"], h), "F16"),
            (f"blk.{i}.ffn_down.weight", mat(h, c["inter"]), "Q8_0"),
        ]
    tensors += [("output_norm.weight", norm(h), "F32"), ("output.weight", mat(V, h), "Q8_0")]
    for name, x, t in tensors:
        data, raw = gguf_quant(x, t)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_spm_mistral_tok_gguf(vocab):
    import gguf

    path = os.path.join(GGUF_DIR, "tiny_tok_spm_mistral.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny sentencepiece tokenizer, mistral-style")
    gguf_spm_tokenizer_kv(w, vocab, "<s>", "</s>", None, None, None, True, MISTRAL_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_spm_renamed_tok_gguf(vocab):
    """Special tokens not named <unk> <s> </s> (transformers then appends those three as special
    added tokens), merges given in the file (in the reverse of the order the scores imply, so that
    using the scores instead shows), add_bos false, add_eos true."""
    import gguf

    tokens, scores, types = vocab
    renamed = {"<unk>": "<UNK>", "<s>": "<|begin_of_text|>", "</s>": "<|end_of_text|>"}
    tokens = [renamed.get(t, t) for t in tokens]
    from transformers.tokenization_utils_base import generate_merges

    merges = generate_merges({t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores)))
    path = os.path.join(GGUF_DIR, "tiny_tok_spm_renamed.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny sentencepiece tokenizer, renamed specials, merges given")
    gguf_spm_tokenizer_kv(w, (tokens, scores, types), "<|begin_of_text|>", "<|end_of_text|>", "<UNK>",
                          "<|user|>", False, True, ZEPHYR_TEMPLATE)
    w.add_array("tokenizer.ggml.merges", [" ".join(m) for m in merges[::-1]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_gpt2_noeot_tok_gguf():
    """The shared byte-level BPE tokenizer with <|endoftext|> renamed: transformers' inner
    GPT2Tokenizer then appends <|endoftext|> as a special added token (id = vocabulary size)."""
    import gguf

    global TOK
    if TOK is None:
        TOK = train_base_tokenizer()
    path = os.path.join(GGUF_DIR, "tiny_tok_gpt2_noeot.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny byte-level tokenizer without <|endoftext|>")
    vocab = TOK.get_vocab()
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = "<|eot|>" if t == "<|endoftext|>" else t
    merges = json.loads(TOK.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    specials = set(TRAINED_SPECIALS + ADDED_SPECIALS) | {"<|eot|>"}
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "llama-bpe")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [3 if t in specials else 1 for t in tokens])
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", vocab["<|begin_of_text|>"])
    w.add_uint32("tokenizer.ggml.eos_token_id", vocab["<|eot_id|>"])
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.chat_template", LLAMA3_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SPM_EXTRA_TEXTS = ["<|endoftext|> and <|eot|>", "<|begin_of_text|>x<|end_of_text|> <UNK>", "Ġthe Ċ"]


def spm_golden(path, tok):
    """Everything the Rust side compares, from transformers' tokenizer for one GGUF file."""
    encode = [{"text": t, "add_special_tokens": f, "ids": tok(t, add_special_tokens=f)["input_ids"]}
              for t in SPM_ENCODE_TEXTS + SPM_EXTRA_TEXTS for f in (True, False)]
    decode = []
    vocab = tok.get_vocab()
    samples = [
        tok("<|assistant|>\nArr, Paris it be! 🦜</s>", add_special_tokens=True)["input_ids"],
        tok("  two leading spaces and é", add_special_tokens=False)["input_ids"],
        tok("<|im_start|>user<|im_end|>", add_special_tokens=False)["input_ids"],
        [vocab.get(t) for t in ("he", "\u2581the")],
        [vocab.get(t) for t in ("<0xF0>", "<0x9F>", "<0x41>")],
        [vocab.get(t) for t in ("<0xC3>", "<0xA9>", "\u2581a")],
    ]
    for ids in samples:
        if None in ids:  # a vocabulary without these pieces (byte-level)
            continue
        for s in (True, False):
            decode.append({"ids": ids, "skip_special_tokens": s, "text": tok.decode(ids, skip_special_tokens=s)})
    chat = []
    for msgs in SPM_CHAT_CASES:
        try:
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template that rejects the conversation (e.g. [INST] roles)
            chat.append({"messages": msgs, "add_generation_prompt": True, "error": str(e)})
            continue
        ids = chat_ids(tok, msgs)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        chat.append({"messages": msgs, "add_generation_prompt": True, "text": text, "ids": ids})
    backend = json.loads(tok.backend_tokenizer.to_str())
    added = [{k: t[k] for k in ("id", "content", "special", "normalized")} for t in backend["added_tokens"]]
    model = {k: v for k, v in backend["model"].items() if k not in ("vocab", "merges")}
    model["num_merges"] = len(backend["model"]["merges"])
    return {
        "model": os.path.basename(path),
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "class": type(tok).__name__,
        "len": len(tok),
        "special_tokens": {k: str(getattr(tok, k)) if getattr(tok, k) is not None else None
                           for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": tok.add_eos_token,
        "backend": [{"normalizer": backend["normalizer"], "pre_tokenizer": backend["pre_tokenizer"],
                     "post_processor": backend["post_processor"], "decoder": backend["decoder"],
                     "model": model}],
        "added_tokens": added,
        "merges_head": [backend["model"]["merges"][:40]],
        "encode": encode,
        "decode": decode,
        "chat": chat,
    }


def make_spm_goldens():
    os.makedirs(GGUF_DIR, exist_ok=True)
    vocab = spm_vocab(train_spm())
    paths = [write_spm_llama_gguf(vocab), write_spm_mistral_tok_gguf(vocab),
             write_spm_renamed_tok_gguf(vocab), write_gpt2_noeot_tok_gguf()]
    for path in paths:
        _, tok = load_gguf_hf(path, model=False)
        golden = spm_golden(path, tok)
        write_golden(path[: -len(".gguf")] + "_golden.json", golden)
        print(f"{os.path.basename(path)}: {os.path.getsize(path)} bytes, class {golden['class']}")


# ----------------------------------------------------------------------------------------------
# 7. GGUF K-quants and Q5_0 / Q5_1 (python3 scripts/make_fixtures.py --gguf-quants). Needs gguf,
#    numpy, transformers, torch and accelerate. Leaves every other fixture alone.
# ----------------------------------------------------------------------------------------------
#
#   tests/fixtures/gguf/quant_blocks.json   per type (Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): a
#       few blocks of random bytes whose f16 scale fields are set to finite values (normal, negative,
#       zero, subnormal, large), as hex, and the f32 bit patterns of gguf.quants.dequantize
#       (src/model/gguf/quants.rs unit tests, bit-exact)
#   tests/fixtures/gguf/tiny_llama_kquant.gguf, tiny_llama_kquant_golden.json   a tiny llama
#       (hidden 256, inter 512: K-quant rows are multiples of 256) whose matrices are random blocks
#       of the new types (scales chosen so that the values have std ~2/sqrt(row length), mean ~0), norms F32,
#       the shared tokenizer as in tiny_llama.gguf; goldens from transformers loading the file
# gguf-py can only dequantize the K-quants (it has no quantizer for them), hence random blocks:
# transformers sees exactly the bytes rear sees.

# (byte offset, "d" | "m") of each f16 field per type: d = the scale, m = the min (Q5_1: additive
# min; K-quants: dmin, subtracted).
QUANT_F16_FIELDS = {
    "Q5_0": [(0, "d")],
    "Q5_1": [(0, "d"), (2, "m")],
    "Q2_K": [(80, "d"), (82, "m")],
    "Q3_K": [(108, "d")],
    "Q4_K": [(0, "d"), (2, "m")],
    "Q5_K": [(0, "d"), (2, "m")],
    "Q6_K": [(208, "d")],
}
# min = MIN_RATIO · d centres the values: Q5_1 x = d·q + m with q uniform 0..31; K-quants subtract
# dmin·mn with mn uniform like the scales, so dmin = mean(q)·d.
QUANT_MIN_RATIO = {"Q5_1": -15.5, "Q2_K": 1.5, "Q4_K": 7.5, "Q5_K": 15.5}


def random_quant_blocks(rng, type_name, n_blocks, d):
    """n_blocks random blocks of `type_name` (uint8 [n_blocks, type_size]) with the f16 scale of
    block i set to d[i] and its min to QUANT_MIN_RATIO · d[i]."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    _, type_size = GGML_QUANT_SIZES[Q[type_name]]
    b = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    d = np.asarray(d, dtype=np.float32)
    for off, kind in QUANT_F16_FIELDS[type_name]:
        v = d if kind == "d" else d * np.float32(QUANT_MIN_RATIO[type_name])
        b[:, off:off + 2] = v.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    assert np.isfinite(b[:, QUANT_F16_FIELDS[type_name][0][0]:][:, :2].copy().view(np.float16)).all()
    return b


def write_quant_blocks():
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(5151)
    cases = []
    for name in QUANT_F16_FIELDS:
        # Scales: ordinary, negative, zero, an f16 subnormal, a large one.
        d = [0.0123, -0.5, 0.0, 3.0e-6, 1000.0]
        blocks = random_quant_blocks(rng, name, len(d), d)
        deq = gguf.quants.dequantize(blocks.reshape(-1), Q[name])
        assert deq.dtype == np.float32 and np.isfinite(deq).all(), name
        cases.append({"type": name, "ggml_type": int(Q[name]), "n_blocks": len(d),
                      "hex": blocks.tobytes().hex(), "bits": f32_bits(deq)})
    path = os.path.join(GGUF_DIR, "quant_blocks.json")
    write_golden(path, {"generator": "gguf.quants.dequantize", "cases": cases})
    print(f"quant_blocks.json: {os.path.getsize(path)} bytes, {len(cases)} types")


KQ = dict(hidden=256, inter=512, layers=2, heads=4, kv_heads=2, head_dim=64, ctx=256, theta=10000.0, eps=1e-5)
# Tensor type per (layer, GGUF name): each new type at least twice, plus an old one; token_embd
# Q4_K and output Q6_K as in llama.cpp's Q4_K_M files.
KQ_TYPES = [
    {"attn_q": "Q4_K", "attn_k": "Q5_K", "attn_v": "Q6_K", "attn_output": "Q3_K",
     "ffn_gate": "Q2_K", "ffn_up": "Q5_0", "ffn_down": "Q5_1"},
    {"attn_q": "Q5_1", "attn_k": "Q2_K", "attn_v": "Q4_K", "attn_output": "Q5_K",
     "ffn_gate": "Q6_K", "ffn_up": "Q3_K", "ffn_down": "Q5_0"},
]


def random_quant_tensor(rng, type_name, shape):
    """Random blocks for an HF-order [rows, row_len] tensor whose dequantized values have std about
    2/sqrt(row_len) (a gain of ~2 per matrix, as the tiny llama's N(0, 0.3) at 64; larger weights
    make activations so large that float32 rounding noise approaches the tests' tolerance; the
    per-block scale varies by exp(0.25·N)), as uint8 [rows, row_bytes]."""
    import numpy as np
    import gguf
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    qt = Q[type_name]
    block, _ = GGML_QUANT_SIZES[qt]
    rows, n = shape
    assert n % block == 0
    std = 2.0 / n ** 0.5
    nb = rows * n // block
    # Unit-scale blocks tell the value std per unit of d.
    unit = gguf.quants.dequantize(random_quant_blocks(np.random.default_rng(1), type_name, 64, np.ones(64)).reshape(-1), qt)
    d = std / float(unit.std()) * np.exp(0.25 * rng.standard_normal(nb))
    b = random_quant_blocks(rng, type_name, nb, d)
    return b.reshape(rows, -1)


def write_kquant_llama_gguf(seed):
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q

    c = KQ
    V = TOK.get_vocab_size()
    rng = np.random.default_rng(seed)
    path = os.path.join(GGUF_DIR, "tiny_llama_kquant.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.name", "rear tiny llama k-quants")
    w.add_uint32("llama.context_length", c["ctx"])
    w.add_uint32("llama.embedding_length", c["hidden"])
    w.add_uint32("llama.block_count", c["layers"])
    w.add_uint32("llama.feed_forward_length", c["inter"])
    w.add_uint32("llama.rope.dimension_count", c["head_dim"])
    w.add_uint32("llama.attention.head_count", c["heads"])
    w.add_uint32("llama.attention.head_count_kv", c["kv_heads"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c["eps"])
    w.add_float32("llama.rope.freq_base", c["theta"])
    w.add_uint32("llama.vocab_size", V)
    w.add_uint32("general.file_type", 15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    gguf_tokenizer_kv(w, TOK, "llama-bpe", True, "<|begin_of_text|>", "<|im_end|>", "<|endoftext|>",
                      LLAMA3_TEMPLATE, user_defined=("<start_of_turn>",))
    H, I, hd = c["hidden"], c["inter"], c["head_dim"]
    shapes = {"attn_q": (c["heads"] * hd, H), "attn_k": (c["kv_heads"] * hd, H), "attn_v": (c["kv_heads"] * hd, H),
              "attn_output": (H, c["heads"] * hd), "ffn_gate": (I, H), "ffn_up": (I, H), "ffn_down": (H, I)}
    norm = lambda: (1.0 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    tensors = [("token_embd.weight", (V, H), "Q4_K")]
    for i in range(c["layers"]):
        tensors.append((f"blk.{i}.attn_norm.weight", norm(), "F32"))
        for gname, shape in shapes.items():
            tensors.append((f"blk.{i}.{gname}.weight", shape, KQ_TYPES[i][gname]))
        tensors.append((f"blk.{i}.ffn_norm.weight", norm(), "F32"))
    tensors.append(("output_norm.weight", norm(), "F32"))
    tensors.append(("output.weight", (V, H), "Q6_K"))
    for name, x, t in tensors:
        if t == "F32":
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, random_quant_tensor(rng, t, x), raw_dtype=Q[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The gguf package reads the types back.
    r = gguf.GGUFReader(path)
    assert {t.name: t.tensor_type.name for t in r.tensors}["blk.0.attn_q.weight"] == "Q4_K"
    return path


def weight_digests(model):
    """Per HF parameter, the float32 values' bit patterns b_i as [sum b_i, sum (i+1)·b_i] mod 2^64:
    a cheap exact fingerprint of transformers' weights (value and position) for rear to match."""
    import numpy as np

    out = {}
    for name, p in model.state_dict().items():
        b = p.detach().float().contiguous().numpy().reshape(-1).view(np.uint32).astype(np.uint64)
        i = np.arange(1, b.size + 1, dtype=np.uint64)
        out[name] = [str(int(b.sum(dtype=np.uint64))), str(int((b * i).sum(dtype=np.uint64)))]
    return out


def make_kquant_llama_golden():
    global NEVER_EOS
    NEVER_EOS = TOK.get_vocab_size() + 1000
    for attempt in range(50):
        seed = 9009 + attempt
        path = write_kquant_llama_gguf(seed)
        model, tok = load_gguf_hf(path)
        assert model.config.hidden_size == KQ["hidden"] and model.config.intermediate_size == KQ["inter"]
        enc = lambda t, sp=True: tok(t, add_special_tokens=sp)["input_ids"]
        pA, bA = pref_base_ids(tok, "Talk like a pirate.", "Tell me about France.")
        resp = enc(" the crew found a chest of gold coins in Paris.", False)[:20]
        cases = {
            "logprobs": [(enc("The pirate ship sailed to France and"), resp), (pA, resp)],
            "greedy": [(bA, 24, True), (enc("Once upon a time, the pirate"), 16, True)],
            "cfg": [(pA, bA, 3.0, 12)],
        }
        out, gaps = gguf_model_goldens(model, tok, cases, [tok.eos_token_id])
        if min(gaps) > SEARCH_GAP:
            break
        print(f"tiny_llama_kquant: seed {seed} rejected: min gap {min(gaps):.6f}")
    else:
        sys.exit("tiny_llama_kquant: no seed found")
    # transformers' weights are gguf.quants.dequantize of the file's bytes (q/k un-permuted).
    r = __import__("gguf").GGUFReader(path)
    raw = {t.name: t for t in r.tensors}
    import numpy as np
    from gguf.quants import dequantize
    emb = dequantize(raw["token_embd.weight"].data, raw["token_embd.weight"].tensor_type)
    assert np.array_equal(emb, model.model.embed_tokens.weight.detach().numpy())
    golden = {"model": "tiny_llama_kquant.gguf", "seed": seed, "min_gap": min(gaps), "num_gap_checks": len(gaps),
              "types": {t.name: t.tensor_type.name for t in r.tensors},
              "weight_digests": weight_digests(model),
              "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    golden.update(out)
    write_golden(os.path.join(GGUF_DIR, "tiny_llama_kquant_golden.json"), golden)
    print(f"tiny_llama_kquant.gguf: {os.path.getsize(path)} bytes, seed {seed}, min_gap {min(gaps):.5f}")


def main_gguf_quants():
    global TOK
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(GGUF_DIR, exist_ok=True)
    TOK = train_base_tokenizer()
    write_quant_blocks()
    make_kquant_llama_golden()


if __name__ == "__main__":
    if "--gguf-quants" in sys.argv[1:]:
        main_gguf_quants()
    elif "--gguf-spm" in sys.argv[1:]:
        make_spm_goldens()
    elif "--gguf" in sys.argv[1:]:
        main_gguf(sys.argv[1:])
    else:
        main()
