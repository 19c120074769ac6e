//! The SentencePiece tokenizer of a GGUF file (`tokenizer.ggml.model = "llama"`: TinyLlama,
//! Llama 2, Mistral), built as transformers 5 builds it (`sentencepiece_tokenizer` in
//! integrations/gguf/gguf_tokenizer_mapping.py, then `LlamaTokenizer.__init__` and
//! `TokenizersBackend.__init__`): a byte-fallback BPE over the tokens as the file spells them,
//! merges from `tokenizer.ggml.merges` or recovered from the scores (`generate_merges`), a
//! `Metaspace` pre-tokenizer that prepends `▁` to the first split only (`legacy=False`), no
//! normalizer, and the decoder `Replace(▁→space), ByteFallback, Fuse, Strip(1 leading space)`.
use super::meta::{MetaArray, MetaValue};
use super::parse::GgufFile;
use crate::error::Result;
use std::collections::HashMap;
use tokenizers::{AddedToken, Tokenizer};

/// SentencePiece's word-boundary mark.
const MARK: char = '\u{2581}';

/// The tokenizer before the special tokens of the file are added: the model, pre-tokenizer and
/// decoder of `LlamaTokenizer(vocab=..., merges=...)`, with the added tokens its
/// `TokenizersBackend.__init__` gives it (its default `bos_token` `<s>`, `eos_token` `</s>` and
/// `unk_token` `<unk>`, special; appended to the vocabulary when the file has no such token).
pub(super) fn sentencepiece_tokenizer(g: &GgufFile, tokens: &[String]) -> Result<Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};

    // `{token: index}`: a token listed twice keeps its last index.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = match g.str_array("tokenizer.ggml.merges")? {
        Some(m) => super::tokenizer::parse_merges(g, m)?,
        None => {
            let scores = scores(g)?.ok_or_else(|| {
                g.err(
                    "metadata key `tokenizer.ggml.scores` is missing (a llama tokenizer without \
                     `tokenizer.ggml.merges` needs the scores to recover its merges)"
                        .into(),
                )
            })?;
            generate_merges(tokens, &scores)
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| g.err(format!("tokenizer: cannot build the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Metaspace::new(MARK, PrependScheme::First, false)));
    let replace = Replace::new(MARK.to_string(), " ")
        .map_err(|e| g.err(format!("tokenizer: decoder: {e}")))?;
    tok.with_decoder(Some(Sequence::new(vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ])));
    // LlamaTokenizer's defaults, named special tokens of the inner tokenizer transformers builds:
    // added (special) in the order bos, eos, unk.
    let defaults: Vec<AddedToken> = ["<s>", "</s>", "<unk>"]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tok.add_tokens(&defaults);
    Ok(tok)
}

/// `tokenizer.ggml.scores` as numbers (any numeric element type); `None` when absent.
fn scores(g: &GgufFile) -> Result<Option<Vec<f64>>> {
    let key = "tokenizer.ggml.scores";
    let bad = |what: String| {
        g.err(format!(
            "metadata key `{key}` is {what}, expected an array of numbers"
        ))
    };
    match g.get(key) {
        None => Ok(None),
        Some(MetaValue::Array(a)) => Ok(Some(match a {
            MetaArray::F32(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::F64(v) => v.clone(),
            other => other
                .as_ints()
                .ok_or_else(|| bad(format!("an array of {}", other.type_name())))?
                .into_iter()
                .map(|x| x as f64)
                .collect(),
        })),
        Some(v) => Err(bad(v.to_string())),
    }
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens of the vocabulary, per token ordered by the ids of its halves, then all of them sorted
/// best first by (score, length of the left half, length of the right half), ties keeping that
/// order. Lengths count characters, as Python does; a score that is not a number compares equal
/// to everything (Python's sort leaves such keys where they fall; this is the nearest stable
/// rule). Tokens and scores are paired as `zip` pairs them (the shorter one decides).
pub(super) fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    // `{token: index}` (last index wins) and `dict(zip(tokens, scores))` (first position, last
    // score).
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.as_str(), i);
    }
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }

    struct Merge<'a> {
        left: &'a str,
        right: &'a str,
        score: f64,
        left_len: usize,
        right_len: usize,
    }
    let mut merges: Vec<Merge> = Vec::new();
    for token in order {
        let score = score_of[token];
        let start = merges.len();
        for (pos, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(pos);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push(Merge {
                    left,
                    right,
                    score,
                    left_len: left.chars().count(),
                    right_len: right.chars().count(),
                });
            }
        }
        merges[start..].sort_by_key(|m| (vocab[m.left], vocab[m.right]));
    }
    merges.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_len.cmp(&a.left_len))
            .then(b.right_len.cmp(&a.right_len))
    });
    merges
        .into_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn merges_follow_scores_then_lengths_then_ids() {
        // Expected values computed with transformers' generate_merges on the same input.
        let tokens = s(&["a", "b", "c", "ab", "bc", "abc", "▁", "▁a", "é", "éa"]);
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0, -0.5, -0.0, -2.0];
        let got = generate_merges(&tokens, &scores);
        let want = [
            ("▁", "a"),
            ("a", "b"),
            ("b", "c"),
            ("é", "a"),
            ("ab", "c"),
            ("a", "bc"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn duplicate_tokens_keep_first_position_and_last_score() {
        let tokens = s(&["x", "y", "xy", "z", "xy"]);
        let scores = [0.0, 0.0, -5.0, 0.0, -1.0];
        let got = generate_merges(&tokens, &scores);
        assert_eq!(got, vec![("x".to_string(), "y".to_string())]);
        // zip stops at the shorter list: "xy" at index 2 has no score pair beyond it.
        assert_eq!(
            generate_merges(&tokens, &[0.0, 0.0]),
            Vec::<(String, String)>::new()
        );
    }
}
