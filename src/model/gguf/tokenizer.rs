//! The tokenizer rebuilt from `tokenizer.ggml.*` as transformers builds it from a GGUF file
//! (which kinds convert; byte-level BPE; the pre-tokenizer split regexes; added and special
//! tokens; BOS/EOS), and the chat template from `tokenizer.chat_template`. The SentencePiece
//! kind's model, pre-tokenizer and decoder are in `spm`.
use super::meta::MetaValue;
use super::parse::GgufFile;
use crate::error::Result;
use crate::model::chat::ChatTemplate;
use crate::model::tokenizer::TextTokenizer;

/// GPT-2's byte → printable-char table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(256 + n).unwrap();
            n += 1;
            c
        };
    }
    table
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (its
/// `GGUF_PRE_TOKENIZER_SPLITS`); `None`: GPT-2's byte-level pre-tokenizer with its own regex
/// (what transformers does for every other value, `smollm` and `gpt2` included).
pub fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The `tokenizer.ggml.model` values rear converts: byte-level BPE and SentencePiece.
pub const SUPPORTED_TOKENIZERS: &[&str] = &["gpt2", "llama"];

/// Why this file's tokenizer cannot be converted, when `tokenizer.ggml.model` names a kind (or an
/// architecture/kind pairing) that rear does not build; `Ok(None)` when it can be (or when the
/// file has no tokenizer). The model still loads without a tokenizer: token ids work, text does
/// not.
pub fn unsupported_tokenizer(g: &GgufFile) -> Result<Option<String>> {
    let Some(kind) = g.str_key("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    let arch = g.str_key("general.architecture")?.unwrap_or("");
    Ok(if !SUPPORTED_TOKENIZERS.contains(&kind) {
        Some(format!(
            "unsupported tokenizer `{kind}` (tokenizer.ggml.model; supported: {})",
            SUPPORTED_TOKENIZERS.join(", ")
        ))
    } else if kind == "llama" && matches!(arch, "gemma" | "gemma2" | "gemma3" | "phi3") {
        // transformers builds these SentencePiece vocabularies differently.
        Some(format!(
            "unsupported tokenizer `{kind}` for architecture `{arch}` (tokenizer.ggml.model)"
        ))
    } else {
        None
    })
}

/// `tokenizer.ggml.merges` entries as pairs (`merge.split(" ")`, which must give two parts).
pub(super) fn parse_merges(g: &GgufFile, merges: &[String]) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let mut it = m.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) => pairs.push((a.to_string(), b.to_string())),
            _ => {
                return Err(g.err(format!(
                    "`tokenizer.ggml.merges` entry {i} is {m:?}, expected two tokens separated by one space"
                )))
            }
        }
    }
    Ok(pairs)
}

/// transformers' `byte_level_tokenizer` (a `GPT2Tokenizer` over the vocabulary): a token written
/// in the byte alphabet stays as it is, any other is respelled byte by byte. The inner
/// `GPT2Tokenizer` adds its default special token `<|endoftext|>` (appended when the vocabulary
/// has none).
fn byte_level_tokenizer(g: &GgufFile, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    let merges = g.str_array("tokenizer.ggml.merges")?.ok_or_else(|| {
        g.err(
            "metadata key `tokenizer.ggml.merges` is missing (a gpt2 tokenizer needs its merges)"
                .into(),
        )
    })?;
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = if t.chars().all(|c| alphabet.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            };
            (key, i as u32)
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, parse_merges(g, merges)?)
        .build()
        .map_err(|e| g.err(format!("tokenizer: cannot build the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_tokens(&[AddedToken::from("<|endoftext|>", true)]);
    Ok(tok)
}

/// The tokenizer described by `tokenizer.ggml.*`, built as transformers 5 builds it from the same
/// file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, a `TokenizersBackend`): byte-level
/// BPE for `tokenizer.ggml.model = "gpt2"`, SentencePiece-style BPE for `"llama"` (see `spm`).
/// `Ok(None)` when the file has no tokenizer; an error when its kind is not supported (see
/// [`unsupported_tokenizer`]) or its metadata is malformed.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Option<TextTokenizer>> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

    let Some(kind) = g.str_key("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    if let Some(why) = unsupported_tokenizer(g)? {
        return Err(g.err(why));
    }
    let tokens = g
        .str_array("tokenizer.ggml.tokens")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| g.err("metadata key `tokenizer.ggml.tokens` is missing or empty".into()))?;
    if tokens.len() > u32::MAX as usize {
        return Err(g.err("`tokenizer.ggml.tokens` has more than 2^32 tokens".into()));
    }
    let types: Option<Vec<i64>> = match g.get("tokenizer.ggml.token_type") {
        None => None,
        Some(MetaValue::Array(a)) => Some(a.as_ints().ok_or_else(|| {
            g.err(format!(
                "metadata key `tokenizer.ggml.token_type` is an array of {}, expected integers",
                a.type_name()
            ))
        })?),
        Some(v) => {
            return Err(g.err(format!(
                "metadata key `tokenizer.ggml.token_type` is {v}, expected an array of integers"
            )))
        }
    };
    let byte_level = kind == "gpt2";
    let mut tok = if byte_level {
        byte_level_tokenizer(g, tokens)?
    } else {
        super::spm::sentencepiece_tokenizer(g, tokens)?
    };

    // add_gguf_special_tokens: control tokens become special added tokens (in a byte-level
    // vocabulary only those spelled in the byte alphabet); user-defined ones that are in the
    // vocabulary become plain added tokens.
    if let Some(types) = &types {
        let alphabet: std::collections::HashSet<char> =
            bytes_to_unicode().iter().copied().collect();
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(t, &ty)| {
                ty == TOKEN_TYPE_CONTROL
                    && (!byte_level || t.chars().all(|c| alphabet.contains(&c)))
            })
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        if !control.is_empty() {
            tok.add_special_tokens(&control);
        }
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(t, &ty)| ty == TOKEN_TYPE_USER_DEFINED && tok.token_to_id(t).is_some())
            .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        if !user.is_empty() {
            tok.add_tokens(&user);
        }
    }

    // set_split_regex: a `tokenizer.ggml.pre` with a known split regex replaces the
    // pre-tokenizer (whatever the kind).
    let pre = g.str_key("tokenizer.ggml.pre")?;
    if let Some(re) = pre.and_then(pre_tokenizer_split) {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| {
            g.err(format!(
                "tokenizer: split regex for pre `{}`: {e}",
                pre.unwrap_or("")
            ))
        })?;
        let seq = Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ]);
        tok.with_pre_tokenizer(Some(seq));
    }

    // Named special tokens from their ids; one that is not an added token yet is added as a
    // special one (TokenizersBackend.__init__).
    let n = Some(tokens.len());
    let named = [
        (
            "bos_token",
            g.token_id_key("tokenizer.ggml.bos_token_id", n)?,
        ),
        (
            "eos_token",
            g.token_id_key("tokenizer.ggml.eos_token_id", n)?,
        ),
        (
            "unk_token",
            g.token_id_key("tokenizer.ggml.unknown_token_id", n)?,
        ),
        (
            "pad_token",
            g.token_id_key("tokenizer.ggml.padding_token_id", n)?,
        ),
    ];
    let mut extra = Vec::new();
    for (_, id) in &named {
        if let Some(id) = id {
            let t = &tokens[*id as usize];
            let added = tok
                .get_added_tokens_decoder()
                .values()
                .any(|a| &a.content == t);
            if !added && !extra.iter().any(|a: &AddedToken| &a.content == t) {
                extra.push(AddedToken::from(t.clone(), true));
            }
        }
    }
    if !extra.is_empty() {
        tok.add_tokens(&extra);
    }
    let mut text = TextTokenizer::from_tokenizer(tok);
    for (name, id) in &named {
        text.set_special_token(name, id.map(|i| tokens[i as usize].as_str()));
    }
    // A SentencePiece file without the flag gets BOS, as llama.cpp does (get_gguf_tokenizer).
    let add_bos = g
        .bool_key("tokenizer.ggml.add_bos_token")?
        .unwrap_or(kind == "llama");
    let add_eos = g.bool_key("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    text.set_add_bos_eos(add_bos, add_eos)
        .map_err(|e| g.err(format!("tokenizer: {e}")))?;
    Ok(Some(text))
}

/// The chat template of `tokenizer.chat_template`, rendered with the tokenizer's named special
/// tokens (as transformers passes its `special_tokens_map`). `Ok(None)` when there is none.
pub fn chat_template_from_gguf(
    g: &GgufFile,
    tok: Option<&TextTokenizer>,
) -> Result<Option<ChatTemplate>> {
    let Some(source) = g.str_key("tokenizer.chat_template")? else {
        return Ok(None);
    };
    let vars = tok.map(|t| t.special_tokens_map()).unwrap_or_default();
    ChatTemplate::with_vars(source.to_string(), vars)
        .map(Some)
        .map_err(|e| g.err(format!("`tokenizer.chat_template`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[173], 'Ń');
    }
}
