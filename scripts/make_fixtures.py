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


if __name__ == "__main__":
    main()
