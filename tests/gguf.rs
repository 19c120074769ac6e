//! GGUF loading: bit-exact dequantization against the `gguf` Python package, malformed files
//! (each a clear error, never a panic or a huge allocation), a tiny random llama written the way
//! llama.cpp writes one against transformers' loading of the same file, and — when it is in the
//! cache — the default model SmolLM2-135M-Instruct against transformers' goldens.
//! Fixtures: `python3 scripts/make_fixtures.py --gguf` (see tests/fixtures/README.md).
use rear::api::{LoadOptions, Rear};
use rear::model::chat::{Message, PreferenceIn};
use rear::model::gguf::{GgufFile, MetaArray, MetaValue, QuantType, StoredType};
use rear::rear::Mixture;
use rear::search::{Algo, FinishReason, Prompt, SearchParams};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Synthetic file: one tensor per type
// ------------------------------------------------------------------------------------------------

#[test]
fn every_type_dequantizes_bit_exactly_like_the_gguf_package() {
    let g = GgufFile::open(&fixture("gguf/types.gguf")).unwrap();
    let golden = json(&fixture("gguf/types_golden.json"));
    assert_eq!(g.version, 3);
    let tensors = golden["tensors"].as_array().unwrap();
    assert_eq!(g.tensor_infos().len(), tensors.len());
    for want in tensors {
        let name = want["name"].as_str().unwrap();
        let t = g.tensor(name).unwrap();
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            t.shape, shape,
            "{name}: HF-order shape (GGUF dims reversed)"
        );
        assert_eq!(t.dtype.name(), want["type"].as_str().unwrap(), "{name}");
        let bits: Vec<u32> = t.to_f32().iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            ids(&want["bits"]),
            "{name}: dequantized values differ from gguf.quants.dequantize"
        );
        // Row by row (what the matmul does) gives the same bits.
        let mut row = vec![0f32; t.row_len()];
        for r in 0..t.rows() {
            t.decode_row(r, &mut row);
            let got: Vec<u32> = row.iter().map(|x| x.to_bits()).collect();
            assert_eq!(
                got[..],
                bits[r * t.row_len()..(r + 1) * t.row_len()],
                "{name} row {r}"
            );
        }
    }
}

#[test]
fn metadata_of_every_kind_reads_back() {
    let g = GgufFile::open(&fixture("gguf/types.gguf")).unwrap();
    let m = &json(&fixture("gguf/types_golden.json"))["metadata"];
    let int = |k: &str| g.get(k).unwrap().as_int().unwrap();
    for k in ["u8", "i8", "u16", "i16", "u32", "i32", "i64"] {
        let key = format!("rear.test.{k}");
        assert_eq!(int(&key), m[&key].as_i64().unwrap() as i128, "{key}");
    }
    assert_eq!(
        int("rear.test.u64"),
        m["rear.test.u64"].as_u64().unwrap() as i128
    );
    assert_eq!(
        g.get("rear.test.f32"),
        Some(&MetaValue::F32(f32::from_bits(
            m["rear.test.f32_bits"].as_u64().unwrap() as u32
        )))
    );
    assert_eq!(g.get("rear.test.f64"), Some(&MetaValue::F64(-2.5e-300)));
    assert_eq!(g.get("rear.test.bool"), Some(&MetaValue::Bool(true)));
    assert_eq!(
        g.get("rear.test.string").unwrap().as_str(),
        m["rear.test.string"].as_str()
    );
    let strings: Vec<String> = m["rear.test.strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().into())
        .collect();
    assert_eq!(
        g.get("rear.test.strings"),
        Some(&MetaValue::Array(MetaArray::Str(strings)))
    );
    assert_eq!(
        g.get("rear.test.ints")
            .unwrap()
            .as_array()
            .unwrap()
            .as_ints(),
        Some(vec![1, -2, 3])
    );
    assert_eq!(
        g.get("rear.test.floats"),
        Some(&MetaValue::Array(MetaArray::F32(vec![0.5, -1.25])))
    );
    match g.get("rear.test.nested").unwrap().as_array().unwrap() {
        MetaArray::Array(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[0].as_ints(), Some(vec![1, 2]));
            assert_eq!(v[1].as_ints(), Some(vec![3]));
        }
        other => panic!("nested: {other:?}"),
    }
    assert_eq!(g.architecture().unwrap(), "rear-test");
}

// ------------------------------------------------------------------------------------------------
// Malformed files
// ------------------------------------------------------------------------------------------------

/// Byte positions of the header fields of a (valid) GGUF file, found by walking it independently
/// of the library.
#[derive(Debug)]
struct Layout {
    tensor_count: usize,
    kv_count: usize,
    /// Position of the u64 length of the first key.
    first_key_len: usize,
    /// Position of the u64 element count of the first string array.
    string_array_count: usize,
    /// Per tensor: positions of n_dims, dims, type, offset.
    tensors: Vec<(usize, usize, usize, usize)>,
    header_end: usize,
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().unwrap())
}

fn put_u32(b: &mut [u8], p: usize, v: u32) {
    b[p..p + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], p: usize, v: u64) {
    b[p..p + 8].copy_from_slice(&v.to_le_bytes());
}

fn skip_value(b: &[u8], p: &mut usize, ty: u32, string_array: &mut Option<usize>) {
    match ty {
        0 | 1 | 7 => *p += 1,
        2 | 3 => *p += 2,
        4..=6 => *p += 4,
        10..=12 => *p += 8,
        8 => *p += 8 + u64_at(b, *p) as usize,
        9 => {
            let ety = u32_at(b, *p);
            let count_pos = *p + 4;
            let n = u64_at(b, count_pos);
            *p += 12;
            if ety == 8 && string_array.is_none() {
                *string_array = Some(count_pos);
            }
            for _ in 0..n {
                skip_value(b, p, ety, string_array);
            }
        }
        _ => panic!("bad type {ty}"),
    }
}

fn layout(b: &[u8]) -> Layout {
    let n_tensors = u64_at(b, 8) as usize;
    let n_kv = u64_at(b, 16) as usize;
    let mut p = 24;
    let mut string_array = None;
    for _ in 0..n_kv {
        p += 8 + u64_at(b, p) as usize;
        let ty = u32_at(b, p);
        p += 4;
        skip_value(b, &mut p, ty, &mut string_array);
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        p += 8 + u64_at(b, p) as usize;
        let nd_pos = p;
        let nd = u32_at(b, p) as usize;
        let dims_pos = p + 4;
        p = dims_pos + 8 * nd;
        let ty_pos = p;
        let off_pos = p + 4;
        p += 12;
        tensors.push((nd_pos, dims_pos, ty_pos, off_pos));
    }
    Layout {
        tensor_count: 8,
        kv_count: 16,
        first_key_len: 24,
        string_array_count: string_array.expect("types.gguf has a string array"),
        tensors,
        header_end: p,
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rear-gguf-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Loads `bytes` written to a file through `Model::load` (the path the binary takes) and
/// returns the error message.
fn load_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    let e = match rear::model::Model::load(&path) {
        Ok(_) => panic!("{name}: a malformed file loaded"),
        Err(e) => e,
    };
    // The same bytes through the parser directly give the same kind of error.
    assert!(
        GgufFile::from_bytes(&path, bytes.to_vec()).is_err() || name.starts_with("model_"),
        "{name}"
    );
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{name}: multi-line message {msg:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "{name}: message does not name the file: {msg}"
    );
    msg
}

fn expect(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in: {msg}");
    }
}

#[test]
fn malformed_files_are_clear_errors() {
    let good = std::fs::read(fixture("gguf/types.gguf")).unwrap();
    let lay = layout(&good);
    assert_eq!(lay.tensors.len(), 7);
    let dir = temp_dir("malformed");
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let (_, dims0, ty0, off0) = lay.tensors[0];
    let (_, _, _, off_last) = lay.tensors[6];

    let m = load_error(
        &dir,
        "bad_magic",
        &mutate(&|b| b[..4].copy_from_slice(b"GGML")),
    );
    expect(&m, &["not a GGUF file", "bad magic"]);
    let m = load_error(&dir, "empty", &[]);
    expect(&m, &["not a GGUF file"]);
    let m = load_error(&dir, "version1", &mutate(&|b| put_u32(b, 4, 1)));
    expect(&m, &["version 1"]);
    let m = load_error(
        &dir,
        "version_big_endian",
        &mutate(&|b| put_u32(b, 4, 3u32.swap_bytes())),
    );
    expect(&m, &["big-endian"]);
    let m = load_error(&dir, "version99", &mutate(&|b| put_u32(b, 4, 99)));
    expect(&m, &["unsupported GGUF version 99"]);

    // Truncated: half the file, inside the data, and in the header.
    let m = load_error(&dir, "truncated_half", &good[..good.len() / 2]);
    expect(&m, &["past the end of the file"]);
    // The end of the last tensor's data (the writer pads the file after it; padding may go).
    let parsed = GgufFile::open(&fixture("gguf/types.gguf")).unwrap();
    let data_end = parsed
        .tensor_infos()
        .iter()
        .map(|t| parsed.data_start + t.offset + t.nbytes)
        .max()
        .unwrap();
    assert!(data_end <= good.len());
    let m = load_error(&dir, "truncated_last_byte", &good[..data_end - 1]);
    expect(&m, &["tensor `t_q4_1_3d`", "past the end of the file"]);
    let m = load_error(&dir, "truncated_header", &good[..lay.header_end - 3]);
    expect(&m, &["truncated", "data offset of tensor `t_q4_1_3d`"]);
    // Every shorter prefix of the file is an error (never a panic); the unpadded file parses.
    for n in 0..data_end {
        let e = GgufFile::from_bytes(Path::new("prefix.gguf"), good[..n].to_vec());
        assert!(e.is_err(), "prefix of {n} bytes parsed");
    }
    assert!(GgufFile::from_bytes(Path::new("unpadded.gguf"), good[..data_end].to_vec()).is_ok());

    // A tensor's data past the end: its offset, or its size.
    let m = load_error(
        &dir,
        "offset_past_end",
        &mutate(&|b| put_u64(b, off_last, 1 << 40)),
    );
    expect(
        &m,
        &[
            "tensor `t_q4_1_3d`",
            "offset 1099511627776",
            "past the end of the file",
        ],
    );
    let m = load_error(
        &dir,
        "offset_overflow",
        &mutate(&|b| put_u64(b, off0, u64::MAX - 31)),
    );
    expect(&m, &["tensor `t_f32`", "past the end"]);
    let m = load_error(
        &dir,
        "size_past_end",
        &mutate(&|b| put_u64(b, dims0 + 8, 1 << 20)),
    );
    expect(&m, &["tensor `t_f32`", "past the end of the file"]);
    let m = load_error(
        &dir,
        "misaligned_offset",
        &mutate(&|b| put_u64(b, off_last, u64_at(&good, off_last) + 4)),
    );
    expect(
        &m,
        &["tensor `t_q4_1_3d`", "not a multiple of the alignment 32"],
    );

    // Counts that would overflow or ask for absurd allocations.
    let m = load_error(
        &dir,
        "tensor_count_huge",
        &mutate(&|b| put_u64(b, lay.tensor_count, u64::MAX)),
    );
    expect(&m, &["tensor count is 18446744073709551615", "bytes left"]);
    let m = load_error(
        &dir,
        "kv_count_huge",
        &mutate(&|b| put_u64(b, lay.kv_count, u64::MAX / 2)),
    );
    expect(&m, &["metadata key count", "bytes left"]);
    let m = load_error(
        &dir,
        "array_count_huge",
        &mutate(&|b| put_u64(b, lay.string_array_count, u64::MAX)),
    );
    expect(
        &m,
        &[
            "element count of metadata key `rear.test.strings`",
            "18446744073709551615",
        ],
    );
    let m = load_error(
        &dir,
        "key_length_huge",
        &mutate(&|b| put_u64(b, lay.first_key_len, u64::MAX - 7)),
    );
    expect(&m, &["length of key of metadata entry 0"]);
    let m = load_error(
        &dir,
        "dims_overflow",
        &mutate(&|b| {
            put_u64(b, dims0, 1 << 40);
            put_u64(b, dims0 + 8, 1 << 40);
        }),
    );
    expect(&m, &["tensor `t_f32`", "product overflows"]);
    let m = load_error(
        &dir,
        "n_dims_bad",
        &mutate(&|b| put_u32(b, lay.tensors[0].0, 9)),
    );
    expect(&m, &["tensor `t_f32`", "9 dimensions"]);

    // Tensor types: unknown, and known but unsupported.
    let m = load_error(&dir, "unknown_type", &mutate(&|b| put_u32(b, ty0, 99)));
    expect(&m, &["tensor `t_f32`", "unknown ggml type id 99"]);
    for (ty, name) in [(23, "IQ4_XS"), (34, "TQ1_0"), (9, "Q8_1")] {
        let m = load_error(&dir, "unsupported_type", &mutate(&|b| put_u32(b, ty0, ty)));
        expect(&m, &["tensor `t_f32`", name, "not support", "Q4_K", "Q6_K"]);
        assert_eq!(m.lines().count(), 1, "{m}");
    }
    // A type dequantized at load, on rows that are not whole blocks (t_f32 rows are 8 long).
    let m = load_error(&dir, "kquant_short_rows", &mutate(&|b| put_u32(b, ty0, 12)));
    expect(
        &m,
        &[
            "tensor `t_f32`",
            "ne0 = 8",
            "not a multiple of the Q4_K block size 256",
        ],
    );

    // A well-formed file of another architecture.
    let m = load_error(&dir, "model_unknown_arch", &good);
    expect(&m, &["unsupported architecture `rear-test`"]);

    std::fs::remove_dir_all(&dir).ok();
}

/// Position of the value of metadata key `key` (after its type), and of the name bytes of
/// tensor `tensor`.
fn find_key_value(b: &[u8], key: &str) -> usize {
    let n_kv = u64_at(b, 16) as usize;
    let mut p = 24;
    let mut unused = None;
    for _ in 0..n_kv {
        let len = u64_at(b, p) as usize;
        let k = std::str::from_utf8(&b[p + 8..p + 8 + len])
            .unwrap()
            .to_string();
        p += 8 + len;
        let ty = u32_at(b, p);
        p += 4;
        if k == key {
            return p;
        }
        skip_value(b, &mut p, ty, &mut unused);
    }
    panic!("no key {key}");
}

fn find_bytes(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle")
}

#[test]
fn malformed_models_are_clear_errors() {
    let good = std::fs::read(fixture("gguf/tiny_llama.gguf")).unwrap();
    let dir = temp_dir("models");
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let m = load_error(
        &dir,
        "model_block_count",
        &mutate(&|b| put_u32(b, find_key_value(&good, "llama.block_count"), 4_000_000_000)),
    );
    expect(&m, &["`llama.block_count` is 4000000000", "21 tensors"]);
    let m = load_error(
        &dir,
        "model_heads",
        &mutate(&|b| put_u32(b, find_key_value(&good, "llama.attention.head_count"), 3)),
    );
    expect(
        &m,
        &["`llama.attention.head_count` 3 is not a multiple of `llama.attention.head_count_kv` 2"],
    );
    let m = load_error(
        &dir,
        "model_arch",
        &mutate(&|b| {
            let p = find_key_value(&good, "general.architecture");
            b[p + 8..p + 13].copy_from_slice(b"llamb");
        }),
    );
    expect(&m, &["unsupported architecture `llamb`"]);
    let m = load_error(
        &dir,
        "model_missing_tensor",
        &mutate(&|b| {
            let p = find_bytes(&good, b"blk.1.ffn_down.weight");
            b[p..p + 21].copy_from_slice(b"blk.1.ffn_dowX.weight");
        }),
    );
    expect(
        &m,
        &["`model.layers.1.mlp.down_proj.weight` (GGUF `blk.1.ffn_down.weight`) is missing"],
    );
    let m = load_error(
        &dir,
        "model_eps_missing",
        &mutate(&|b| {
            let p = find_bytes(&good, b"layer_norm_rms_epsilon");
            b[p] = b'X';
        }),
    );
    expect(
        &m,
        &["metadata key `llama.attention.layer_norm_rms_epsilon` is missing"],
    );
    let m = load_error(
        &dir,
        "model_ctx_type",
        &mutate(&|b| {
            // llama.context_length's value type (u32) set to f32: same size, wrong kind.
            let p = find_key_value(&good, "llama.context_length");
            put_u32(b, p - 4, 6);
        }),
    );
    expect(
        &m,
        &[
            "metadata key `llama.context_length`",
            "expected a positive integer",
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_binary_exits_2_with_one_line_on_a_bad_gguf() {
    let good = std::fs::read(fixture("gguf/types.gguf")).unwrap();
    let dir = temp_dir("cli");
    let path = dir.join("bad.gguf");
    let mut b = good[..good.len() / 2].to_vec();
    b[..4].copy_from_slice(b"GGUF");
    std::fs::write(&path, &b).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rear"))
        .args(["generate", "--model"])
        .arg(&path)
        .args(["--prompt-ids", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains("bad.gguf") && stderr.contains("past the end of the file"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------------------------------------------------------
// Model goldens (tiny llama always; SmolLM2 when cached)
// ------------------------------------------------------------------------------------------------

fn single(p: Vec<u32>) -> Prompt {
    Prompt {
        contexts: vec![p],
        mixture: Mixture::Single,
    }
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// Tokenizer and chat-template goldens: encode, decode, every chat case.
fn check_text(name: &str, r: &Rear, g: &Value) {
    let tok = r.tokenizer.as_ref().expect("GGUF tokenizer");
    for c in g["encode"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let sp = c["add_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.encode(text, sp).unwrap(),
            ids(&c["ids"]),
            "{name}: encode {text:?} (special {sp})"
        );
    }
    for c in g["decode"].as_array().unwrap() {
        let skip = c["skip_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.decode(&ids(&c["ids"]), skip).unwrap(),
            c["text"].as_str().unwrap(),
            "{name}: decode"
        );
    }
    let tpl = r.template.as_ref().expect("GGUF chat template");
    for c in g["chat"].as_array().unwrap() {
        let msgs = messages(&c["messages"]);
        let text = tpl.render(&msgs, true).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap(), "{name}: rendered chat");
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&c["ids"]),
            "{name}: chat ids"
        );
    }
}

/// Model goldens: per-token log-probs within `tol`, greedy and guided-greedy tokens identical.
fn check_model(name: &str, r: &mut Rear, g: &Value, tol: f64) -> f64 {
    let mut worst = 0f64;
    for c in g["logprobs"].as_array().unwrap() {
        let got = r
            .score(&single(ids(&c["prompt_ids"])), &ids(&c["response_ids"]))
            .unwrap();
        for (a, b) in got.token_logprobs[0]
            .iter()
            .zip(floats(&c["token_logprobs"]))
        {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    eprintln!("{name}: max |Δ logprob| = {worst:.3e} (tolerance {tol:e})");
    assert!(worst <= tol, "{name}: max |Δ logprob| {worst:e} > {tol:e}");
    for c in g["greedy"].as_array().unwrap() {
        let mut p = SearchParams {
            algo: Algo::Greedy,
            max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
            ..r.default_params()
        };
        p.ignore_eos = c["ignore_eos"].as_bool().unwrap();
        p.eos_token_ids = ids(&c["eos_token_ids"]);
        let out = r.generate(&single(ids(&c["prompt_ids"])), &p).unwrap();
        assert_eq!(
            out[0].token_ids,
            ids(&c["token_ids"]),
            "{name}: greedy tokens"
        );
        let want = if c["finish_reason"] == "eos" {
            FinishReason::Eos
        } else {
            FinishReason::Length
        };
        assert_eq!(out[0].finish_reason, want, "{name}: finish reason");
    }
    for c in g["cfg"].as_array().unwrap() {
        let lambda = c["lambda"].as_f64().unwrap() as f32;
        let prompt = Prompt {
            contexts: vec![ids(&c["prompt_ids"]), ids(&c["base_ids"])],
            mixture: Mixture::Guided {
                lambdas: vec![lambda],
            },
        };
        let p = SearchParams {
            algo: Algo::Greedy,
            max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
            ignore_eos: true,
            ..r.default_params()
        };
        let out = r.generate(&prompt, &p).unwrap();
        assert_eq!(
            out[0].token_ids,
            ids(&c["token_ids"]),
            "{name}: guided greedy λ={lambda}"
        );
    }
    assert_eq!(r.engine().used_blocks(), 0, "{name}: blocks leaked");
    worst
}

#[test]
fn tiny_llama_gguf_matches_transformers() {
    let path = fixture("gguf/tiny_llama.gguf");
    let g = json(&fixture("gguf/tiny_llama_golden.json"));
    let mut r = Rear::load(&path, &LoadOptions::default()).unwrap();
    let c = r.config().clone();
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (2, 64, 4, 2, 16)
    );
    assert!(!c.tie_word_embeddings);
    assert_eq!(
        c.eos_token_ids,
        vec![r
            .tokenizer
            .as_ref()
            .unwrap()
            .token_to_id("<|im_end|>")
            .unwrap()]
    );
    check_text("tiny_llama", &r, &g);
    // BOS is added (tokenizer.ggml.add_bos_token) and the template writes it itself: no double BOS.
    let (prompt, _) = r
        .text_prompt(
            "Tell me about France.",
            &["Talk like a pirate.".to_string()],
            &[3.0],
            PreferenceIn::System,
            false,
        )
        .unwrap();
    assert_eq!(prompt.contexts[0], ids(&g["cfg"][0]["prompt_ids"]));
    assert_eq!(prompt.contexts[1], ids(&g["cfg"][0]["base_ids"]));
    check_model("tiny_llama", &mut r, &g, 1e-4);
}

#[test]
fn smollm_pre_tokenizer_matches_transformers() {
    let g = json(&fixture("gguf/tiny_tok_smollm_golden.json"));
    let file = GgufFile::open(&fixture("gguf/tiny_tok_smollm.gguf")).unwrap();
    let tok = rear::model::gguf::tokenizer_from_gguf(&file)
        .unwrap()
        .unwrap();
    let tpl = rear::model::gguf::chat_template_from_gguf(&file, Some(&tok))
        .unwrap()
        .unwrap();
    for c in g["encode"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let sp = c["add_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.encode(text, sp).unwrap(),
            ids(&c["ids"]),
            "encode {text:?}"
        );
    }
    for c in g["decode"].as_array().unwrap() {
        let skip = c["skip_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.decode(&ids(&c["ids"]), skip).unwrap(),
            c["text"].as_str().unwrap()
        );
    }
    for c in g["chat"].as_array().unwrap() {
        let text = tpl.render(&messages(&c["messages"]), true).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text, false).unwrap(), ids(&c["ids"]));
    }
    assert_eq!(tok.special_token("unk_token"), Some("<|endoftext|>"));
    assert_eq!(tok.special_token("pad_token"), Some("<|im_end|>"));
}

#[test]
fn smollm2_default_model_matches_transformers() {
    let Some(path) = rear::model::fetch::cached_default_model() else {
        let at = rear::model::fetch::default_model_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("skipped: SmolLM2 GGUF not in cache ({at})");
        return;
    };
    let g = json(&fixture("smollm2/golden.json"));
    let mut r = Rear::load(&path, &LoadOptions::default()).unwrap();
    let c = r.config().clone();
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.vocab_size
        ),
        (30, 576, 9, 3, 49152)
    );
    assert!(c.tie_word_embeddings);
    check_text("smollm2", &r, &g);
    let pref = g["preference"].as_str().unwrap().to_string();
    let (prompt, _) = r
        .text_prompt(
            g["question"].as_str().unwrap(),
            &[pref],
            &[3.0],
            PreferenceIn::System,
            false,
        )
        .unwrap();
    assert_eq!(
        prompt.contexts[0],
        ids(&g["chat"][1]["ids"]),
        "pref context"
    );
    assert_eq!(
        prompt.contexts[1],
        ids(&g["chat"][0]["ids"]),
        "base context"
    );
    assert_eq!(prompt.contexts[0], ids(&g["cfg"][0]["prompt_ids"]));
    check_model("smollm2", &mut r, &g, 2e-3);
}

#[test]
fn default_model_name_resolves_without_network_when_cached() {
    // An existing path is returned as is; an unknown name is a clear error (no fetch).
    let p = fixture("gguf/types.gguf");
    assert_eq!(
        rear::model::fetch::resolve_model(Some(p.to_str().unwrap())).unwrap(),
        p
    );
    let e = rear::model::fetch::resolve_model(Some("no-such-model-xyz"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-model-xyz") && e.contains("smollm2-135m-instruct"),
        "{e}"
    );
    if let Some(cached) = rear::model::fetch::cached_default_model() {
        assert_eq!(rear::model::fetch::resolve_model(None).unwrap(), cached);
        assert_eq!(
            rear::model::fetch::resolve_model(Some("SmolLM2-135M-Instruct")).unwrap(),
            cached
        );
    }
}

// ------------------------------------------------------------------------------------------------
// SentencePiece tokenizers (`tokenizer.ggml.model = "llama"`) and unsupported kinds
// ------------------------------------------------------------------------------------------------

/// The SentencePiece fixtures against transformers' goldens: named special tokens, BOS/EOS added,
/// vocabulary size with added tokens, added tokens and their special flags, encode (with and
/// without special tokens), decode, and the chat template's text and ids.
fn check_spm(name: &str) {
    let g = json(&fixture(&format!("gguf/{name}_golden.json")));
    let file = GgufFile::open(&fixture(&format!("gguf/{name}.gguf"))).unwrap();
    let tok = rear::model::gguf::tokenizer_from_gguf(&file)
        .unwrap()
        .expect("tokenizer");
    for (k, v) in g["special_tokens"].as_object().unwrap() {
        assert_eq!(tok.special_token(k), v.as_str(), "{name}: {k}");
    }
    assert_eq!(
        tok.vocab_size() as u64,
        g["len"].as_u64().unwrap(),
        "{name}: len"
    );
    let added = tok.inner().get_added_tokens_decoder();
    for t in g["added_tokens"].as_array().unwrap() {
        let id = t["id"].as_u64().unwrap() as u32;
        let a = added
            .get(&id)
            .unwrap_or_else(|| panic!("{name}: added token {t}"));
        assert_eq!(a.content, t["content"].as_str().unwrap(), "{name}: {t}");
        assert_eq!(a.special, t["special"].as_bool().unwrap(), "{name}: {t}");
        assert_eq!(
            a.normalized,
            t["normalized"].as_bool().unwrap(),
            "{name}: {t}"
        );
    }
    assert_eq!(
        added.len(),
        g["added_tokens"].as_array().unwrap().len(),
        "{name}: added tokens"
    );
    let bos = tok.bos_token_id().unwrap();
    let eos = tok.eos_token_id().unwrap();
    let probe = tok.encode("a", true).unwrap();
    assert_eq!(
        probe.first() == Some(&bos),
        g["add_bos_token"].as_bool().unwrap(),
        "{name}: BOS added"
    );
    assert_eq!(
        probe.last() == Some(&eos),
        g["add_eos_token"].as_bool().unwrap(),
        "{name}: EOS added"
    );
    for c in g["encode"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let sp = c["add_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.encode(text, sp).unwrap(),
            ids(&c["ids"]),
            "{name}: encode {text:?} (special {sp})"
        );
    }
    for c in g["decode"].as_array().unwrap() {
        let skip = c["skip_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.decode(&ids(&c["ids"]), skip).unwrap(),
            c["text"].as_str().unwrap(),
            "{name}: decode {} (skip {skip})",
            c["ids"]
        );
    }
    let tpl = rear::model::gguf::chat_template_from_gguf(&file, Some(&tok))
        .unwrap()
        .expect("chat template");
    for c in g["chat"].as_array().unwrap() {
        let msgs = messages(&c["messages"]);
        if c.get("error").is_some() {
            assert!(tpl.render(&msgs, true).is_err(), "{name}: {msgs:?}");
            continue;
        }
        let text = tpl.render(&msgs, true).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap(), "{name}: rendered chat");
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&c["ids"]),
            "{name}: chat ids"
        );
    }
}

#[test]
fn sentencepiece_gguf_tokenizer_matches_transformers() {
    check_spm("tiny_spm");
}

#[test]
fn sentencepiece_gguf_defaults_match_transformers() {
    // No add_bos_token key (BOS added all the same), add_eos_token, no unknown/padding ids, and a
    // template that writes bos_token itself.
    check_spm("tiny_tok_spm_mistral");
}

#[test]
fn sentencepiece_gguf_renamed_specials_and_given_merges_match_transformers() {
    // <unk> <s> </s> absent: transformers appends them as special added tokens (ids 640..642);
    // the file's merges (reversed score order) are used as given; add_bos false, add_eos true.
    check_spm("tiny_tok_spm_renamed");
}

#[test]
fn byte_level_gguf_without_endoftext_matches_transformers() {
    // transformers' inner GPT2Tokenizer appends its default special token <|endoftext|>.
    check_spm("tiny_tok_gpt2_noeot");
}

#[test]
fn sentencepiece_gguf_model_loads_and_builds_chat_contexts() {
    let path = fixture("gguf/tiny_spm.gguf");
    let g = json(&fixture("gguf/tiny_spm_golden.json"));
    let r = Rear::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(r.config().vocab_size, 640);
    assert_eq!(r.config().bos_token_id, Some(1));
    assert_eq!(r.config().eos_token_ids, vec![2]);
    let chat = g["chat"].as_array().unwrap();
    assert_eq!(chat[1]["messages"][0]["role"], "system");
    let (prompt, _) = r
        .text_prompt(
            chat[1]["messages"][1]["content"].as_str().unwrap(),
            &[chat[1]["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()],
            &[3.0],
            PreferenceIn::System,
            false,
        )
        .unwrap();
    assert_eq!(prompt.contexts[0], ids(&chat[1]["ids"]), "pref context");
    assert_eq!(prompt.contexts[1], ids(&chat[0]["ids"]), "base context");

    // The binary: the chat-rendered ids of a text prompt, and a short generation.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rear"))
        .args(["tokenize", "--json", "--model"])
        .arg(&path)
        .args([
            "--prompt",
            chat[0]["messages"][0]["content"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&j["pref_ids"]), ids(&chat[0]["ids"]));
    assert_eq!(j["pref_text"], chat[0]["text"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rear"))
        .args(["generate", "--json", "--max-new-tokens", "4", "--model"])
        .arg(&path)
        .args(["--prompt", "Tell me a joke!", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// tiny_llama.gguf with `tokenizer.ggml.model` set to `kind` (same length as "gpt2").
fn with_tokenizer_kind(dir: &Path, kind: &str) -> PathBuf {
    assert_eq!(kind.len(), 4);
    let mut b = std::fs::read(fixture("gguf/tiny_llama.gguf")).unwrap();
    let p = find_key_value(&b, "tokenizer.ggml.model");
    b[p + 8..p + 12].copy_from_slice(kind.as_bytes());
    let path = dir.join(format!("tok_{kind}.gguf"));
    std::fs::write(&path, &b).unwrap();
    path
}

#[test]
fn unsupported_tokenizer_kind_loads_for_token_ids_and_names_itself_on_text() {
    let dir = temp_dir("unsupported_tok");
    let path = with_tokenizer_kind(&dir, "bert");
    let file = GgufFile::open(&path).unwrap();
    let why = rear::model::gguf::unsupported_tokenizer(&file)
        .unwrap()
        .unwrap();
    assert!(
        why.contains("`bert`") && why.contains("tokenizer.ggml.model"),
        "{why}"
    );
    let e = rear::model::gguf::tokenizer_from_gguf(&file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported tokenizer `bert`"), "{e}");

    // The library: loads, no tokenizer, token ids work, text is one clear error.
    let mut r = Rear::load(&path, &LoadOptions::default()).unwrap();
    assert!(r.tokenizer.is_none());
    let p = SearchParams {
        algo: Algo::Greedy,
        max_new_tokens: 3,
        ignore_eos: true,
        ..r.default_params()
    };
    let out = r.generate(&single(vec![442, 100, 200]), &p).unwrap();
    assert_eq!(out[0].token_ids.len(), 3);
    let e = r
        .text_prompt("hi", &[], &[], PreferenceIn::System, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tok_bert.gguf") && e.contains("`bert`") && e.contains("--prompt-ids"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    // The binary: --prompt-ids generates; --prompt exits 2 with one line naming file and kind.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rear"))
            .args(args)
            .arg("--model")
            .arg(&path)
            .args(["--device", "cpu"])
            .output()
            .unwrap()
    };
    let out = run(&[
        "generate",
        "--json",
        "--max-new-tokens",
        "3",
        "--prompt-ids",
        "442,100",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert!(j.to_string().contains("token_ids"), "{j}");
    for args in [
        &["generate", "--prompt", "hi"][..],
        &["tokenize", "--prompt", "hi"][..],
        &["score", "--prompt-ids", "442", "--response", "hi"][..],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("tok_bert.gguf")
                && stderr.contains("`bert`")
                && stderr.contains("tokenizer.ggml.model"),
            "{args:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn malformed_sentencepiece_metadata_is_a_clear_error() {
    let good = std::fs::read(fixture("gguf/tiny_tok_spm_mistral.gguf")).unwrap();
    let dir = temp_dir("spm_bad");
    let tokenizer_error = |name: &str, b: &[u8]| -> String {
        let path = dir.join(format!("{name}.gguf"));
        let g = GgufFile::from_bytes(&path, b.to_vec()).unwrap();
        let e = rear::model::gguf::tokenizer_from_gguf(&g)
            .err()
            .unwrap_or_else(|| panic!("{name}: loaded"))
            .to_string();
        assert!(
            e.contains(&format!("{name}.gguf")) && !e.contains('\n'),
            "{e}"
        );
        e
    };
    // No merges and no scores: nothing to recover the merges from.
    let mut b = good.clone();
    let p = find_bytes(&good, b"tokenizer.ggml.scores");
    b[p + 20] = b'X';
    let e = tokenizer_error("no_scores", &b);
    assert!(e.contains("`tokenizer.ggml.scores` is missing"), "{e}");
    // Scores of the wrong element type (the token types' integers are fine; strings are not).
    let mut b = good.clone();
    let p = find_key_value(&good, "tokenizer.ggml.scores");
    assert_eq!(u32_at(&good, p), 6, "f32 elements");
    put_u32(&mut b, p, 8);
    let path = dir.join("scores_strings.gguf");
    // Reinterpreting f32s as strings makes the file itself unreadable or the key a string array.
    if let Ok(g) = GgufFile::from_bytes(&path, b) {
        let e = rear::model::gguf::tokenizer_from_gguf(&g)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.ggml.scores"), "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------------------------------------------------------
// K-quants, Q5_0 and Q5_1 (dequantized to f32 at load)
// ------------------------------------------------------------------------------------------------

#[test]
fn kquant_tiny_llama_gguf_matches_transformers() {
    let path = fixture("gguf/tiny_llama_kquant.gguf");
    let g = json(&fixture("gguf/tiny_llama_kquant_golden.json"));
    assert!(g["min_gap"].as_f64().unwrap() >= 1e-3, "golden argmax gaps");
    let file = GgufFile::open(&path).unwrap();
    let types = g["types"].as_object().unwrap();
    assert_eq!(file.tensor_infos().len(), types.len());
    let mut seen = Vec::new();
    for t in file.tensor_infos() {
        assert_eq!(
            t.stored.name(),
            types[&t.name].as_str().unwrap(),
            "{}",
            t.name
        );
        if let StoredType::Dequantized(q) = t.stored {
            // Handed over as f32, the file's bytes counted as stored.
            assert_eq!(t.dtype.name(), "F32");
            assert_eq!(Some(t.nbytes), q.bytes_for(t.dims.iter().product()));
            let h = file.tensor(&t.name).unwrap();
            assert_eq!(h.dtype.name(), "F32");
            assert_eq!(h.shape, t.shape());
            seen.push(q);
        }
    }
    for q in QuantType::ALL {
        assert!(seen.contains(&q), "the fixture has no {} tensor", q.name());
    }
    // Every weight (HF names, q/k un-permuted) is bit for bit transformers' (gguf-py's
    // dequantization): [Σ b_i, Σ (i+1)·b_i] mod 2^64 over the f32 bit patterns.
    let cfg = rear::model::gguf::config_from_gguf(&file).unwrap();
    let tensors = rear::model::gguf::hf_tensors(&file, &cfg).unwrap();
    let digests = g["weight_digests"].as_object().unwrap();
    assert_eq!(tensors.len(), digests.len());
    for (name, want) in digests {
        let (mut sum, mut weighted) = (0u64, 0u64);
        for (i, x) in tensors[name].to_f32().iter().enumerate() {
            let b = x.to_bits() as u64;
            sum = sum.wrapping_add(b);
            weighted = weighted.wrapping_add(b.wrapping_mul(i as u64 + 1));
        }
        let want: Vec<u64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            vec![sum, weighted],
            want,
            "{name}: weights differ from transformers'"
        );
    }
    let mut r = Rear::load(&path, &LoadOptions::default()).unwrap();
    let c = r.config().clone();
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (2, 256, 512, 4, 2, 64)
    );
    check_model("tiny_llama_kquant", &mut r, &g, 1e-4);
}

#[test]
fn truncated_kquant_file_is_a_clear_error() {
    let good = std::fs::read(fixture("gguf/tiny_llama_kquant.gguf")).unwrap();
    let dir = temp_dir("kquant_truncated");
    let m = load_error(&dir, "kquant_truncated", &good[..good.len() - 300]);
    expect(&m, &["tensor `output.weight`", "past the end of the file"]);
    std::fs::remove_dir_all(&dir).ok();
}
