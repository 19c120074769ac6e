//! The GGML block types rear dequantizes to f32 when a GGUF file is loaded (the K-quants Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K and the 5-bit Q5_0, Q5_1), bit for bit as gguf-py's
//! `gguf.quants.dequantize` (what transformers uses) computes them: every f16 scale is widened to
//! f32 first, and the f32 operations happen in the same order (no fused multiply-add), so each
//! value is the same f32.
//!
//! Block layouts (bytes, little-endian; `QK_K` = 256 elements per K-quant block):
//! ```text
//! Q5_0 (32 el, 22 B):  d:f16  qh:u32  qs[16]                       x = d·(q − 16)
//! Q5_1 (32 el, 24 B):  d:f16  m:f16  qh:u32  qs[16]                x = d·q + m
//! Q2_K (256, 84 B):    scales[16]  qs[64]  d:f16  dmin:f16         x = (d·sc)·q − dmin·mn
//! Q3_K (256, 110 B):   hmask[32]  qs[64]  scales[12]  d:f16        x = (d·sc)·q
//! Q4_K (256, 144 B):   d:f16  dmin:f16  scales[12]  qs[128]        x = (d·sc)·q − dmin·mn
//! Q5_K (256, 176 B):   d:f16  dmin:f16  scales[12]  qh[32]  qs[128] x = (d·sc)·q − dmin·mn
//! Q6_K (256, 210 B):   ql[128]  qh[64]  scales[16]:i8  d:f16       x = (d·sc)·q
//! ```
//! The index arithmetic of each decoder mirrors the reshapes of gguf-py's numpy code (given in
//! the comments as numpy shapes).
use half::f16;

/// A GGML type that is dequantized to f32 at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// Elements per K-quant block.
const QK_K: usize = 256;

impl QuantType {
    /// Every type, in GGML id order.
    pub const ALL: [QuantType; 7] = [
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q2K,
        QuantType::Q3K,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// The type of a GGML type id, if it is one of these.
    pub fn from_ggml(id: u32) -> Option<Self> {
        Some(match id {
            6 => QuantType::Q5_0,
            7 => QuantType::Q5_1,
            10 => QuantType::Q2K,
            11 => QuantType::Q3K,
            12 => QuantType::Q4K,
            13 => QuantType::Q5K,
            14 => QuantType::Q6K,
            _ => return None,
        })
    }

    /// The GGML type id.
    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q2K => 10,
            QuantType::Q3K => 11,
            QuantType::Q4K => 12,
            QuantType::Q5K => 13,
            QuantType::Q6K => 14,
        }
    }

    /// The GGML name (`Q4_K`, …).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q2K => "Q2_K",
            QuantType::Q3K => "Q3_K",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantType::Q5_0 | QuantType::Q5_1 => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::Q2K => 84,
            QuantType::Q3K => 110,
            QuantType::Q4K => 144,
            QuantType::Q5K => 176,
            QuantType::Q6K => 210,
        }
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n / self.block_elems()).checked_mul(self.block_bytes())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of type `q`) into `out` (`block_elems` values per block).
/// Errors, without writing anything, when the lengths are not whole, matching block counts.
pub fn dequantize(q: QuantType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (be, bb) = (q.block_elems(), q.block_bytes());
    if !bytes.len().is_multiple_of(bb)
        || !out.len().is_multiple_of(be)
        || bytes.len() / bb != out.len() / be
    {
        return Err(format!(
            "{} bytes of {} blocks ({bb} bytes per {be} elements) do not fill {} values",
            bytes.len(),
            q.name(),
            out.len()
        ));
    }
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be));
    match q {
        QuantType::Q5_0 => blocks.for_each(|(b, o)| q5_0(b, o)),
        QuantType::Q5_1 => blocks.for_each(|(b, o)| q5_1(b, o)),
        QuantType::Q2K => blocks.for_each(|(b, o)| q2_k(b, o)),
        QuantType::Q3K => blocks.for_each(|(b, o)| q3_k(b, o)),
        QuantType::Q4K => blocks.for_each(|(b, o)| q4_k(b, o)),
        QuantType::Q5K => blocks.for_each(|(b, o)| q5_k(b, o)),
        QuantType::Q6K => blocks.for_each(|(b, o)| q6_k(b, o)),
    }
    Ok(())
}

/// Dequantizes whole blocks into little-endian f32 bytes (an F32 tensor's storage), block by
/// block, without a second full-size buffer.
pub fn dequantize_to_le_bytes(q: QuantType, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (be, bb) = (q.block_elems(), q.block_bytes());
    if !bytes.len().is_multiple_of(bb) {
        return Err(format!(
            "{} bytes are not a whole number of {} blocks ({bb} bytes)",
            bytes.len(),
            q.name()
        ));
    }
    let n_out = (bytes.len() / bb)
        .checked_mul(be)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| format!("{} bytes of {} overflow as f32", bytes.len(), q.name()))?;
    let mut v = Vec::with_capacity(n_out);
    let mut block = [0f32; QK_K];
    for b in bytes.chunks_exact(bb) {
        let o = &mut block[..be];
        dequantize(q, b, o)?;
        for x in o.iter() {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(v)
}

/// Q5_0: qh bit i is the fifth bit of element i; qs byte l holds elements l (low nibble) and
/// l + 16 (high nibble). numpy: ql (1, 2, 16) → 32; x = d · f32(i8(ql | qh<<4) − 16).
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (e, x) in o.iter_mut().enumerate() {
        let ql = (qs[e % 16] >> (4 * (e / 16))) & 0x0f;
        let h = ((qh >> e) & 1) as u8;
        let q = (ql | (h << 4)) as i8 - 16;
        *x = d * q as f32;
    }
}

/// Q5_1: as Q5_0 without the offset; x = (d · q) + m.
fn q5_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (e, x) in o.iter_mut().enumerate() {
        let ql = (qs[e % 16] >> (4 * (e / 16))) & 0x0f;
        let h = ((qh >> e) & 1) as u8;
        let q = (ql | (h << 4)) as f32;
        *x = d * q + m;
    }
}

/// Q2_K: 16 sub-blocks of 16; scales byte s: low nibble scale, high nibble min.
/// numpy: qs (2, 1, 32) >> [0, 2, 4, 6] → (2, 4, 32) → (16, 16): element e = j·128 + s·32 + l
/// is bits 2s..2s+2 of qs[j·32 + l]; its sub-block is e / 16.
/// x = dl · q − ml with dl = d · f32(sc & 15), ml = dmin · f32(sc >> 4).
fn q2_k(b: &[u8], o: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (e, x) in o.iter_mut().enumerate() {
        let (j, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let q = ((qs[j * 32 + l] >> (2 * s)) & 3) as f32;
        let sc = scales[e / 16];
        let dl = d * (sc & 0x0f) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *x = dl * q - ml;
    }
}

/// The 16 signed 6-bit scales of a Q3_K block. numpy: low 4 bits (1, 8) >> [0, 4] → 16 (index
/// i: byte i % 8, nibble i / 8); high 2 bits from scales[8..12] (1, 4) >> [0, 2, 4, 6] → 16
/// (index i: byte 8 + i % 4, bits 2·(i / 4)); value i8(low | high<<4) − 32.
fn q3_k_scale(scales: &[u8], i: usize) -> f32 {
    let low = (scales[i % 8] >> (4 * (i / 8))) & 0x0f;
    let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    ((low | (high << 4)) as i8 - 32) as f32
}

/// Q3_K: 16 sub-blocks of 16. Low 2 bits as Q2_K's qs; hmask (1, 32) >> [0..8] → (8, 32):
/// bit e / 32 of hmask[e % 32], and a clear bit subtracts 4. x = (d · scale) · f32(q).
fn q3_k(b: &[u8], o: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = &b[96..108];
    let d = f16_at(b, 108);
    for (e, x) in o.iter_mut().enumerate() {
        let (j, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let ql = ((qs[j * 32 + l] >> (2 * s)) & 3) as i8;
        let h = ((hmask[l] >> (e / 32)) & 1) ^ 1;
        let q = (ql - ((h << 2) as i8)) as f32;
        let dl = d * q3_k_scale(scales, e / 16);
        *x = dl * q;
    }
}

/// The 8 six-bit scales and mins of a Q4_K / Q5_K block (numpy `get_scale_min`: the 12 bytes as
/// (3, 4) = d, m, m_d): scale j < 4 is d[j] & 63, j ≥ 4 is (m_d[j−4] & 15) | ((d[j−4] >> 2) & 48);
/// min j < 4 is m[j] & 63, j ≥ 4 is (m_d[j−4] >> 4) | ((m[j−4] >> 2) & 48).
fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 0x3f, scales[j + 4] & 0x3f)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 2) & 0x30),
            (scales[j + 4] >> 4) | ((scales[j] >> 2) & 0x30),
        )
    }
}

/// Q4_K: 8 sub-blocks of 32. numpy: qs (4, 1, 32) >> [0, 4] → (4, 2, 32) → (8, 32): element
/// e = c·64 + h·32 + l is nibble h of qs[c·32 + l]; sub-block e / 32.
/// x = (d · f32(sc)) · q − dmin · f32(mn).
fn q4_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (sb, o) in o.chunks_exact_mut(32).enumerate() {
        let (sc, mn) = k_scale_min(scales, sb);
        let dl = d * sc as f32;
        let ml = dmin * mn as f32;
        let (c, h) = (sb / 2, sb % 2);
        for (l, x) in o.iter_mut().enumerate() {
            let q = ((qs[c * 32 + l] >> (4 * h)) & 0x0f) as f32;
            *x = dl * q - ml;
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit: qh (1, 32) >> [0..8] → (8, 32): bit sb of qh[l] for element
/// l of sub-block sb.
fn q5_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (sb, o) in o.chunks_exact_mut(32).enumerate() {
        let (sc, mn) = k_scale_min(scales, sb);
        let dl = d * sc as f32;
        let ml = dmin * mn as f32;
        let (c, h) = (sb / 2, sb % 2);
        for (l, x) in o.iter_mut().enumerate() {
            let ql = (qs[c * 32 + l] >> (4 * h)) & 0x0f;
            let hb = (qh[l] >> sb) & 1;
            let q = (ql | (hb << 4)) as f32;
            *x = dl * q - ml;
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with i8 scales. numpy: ql (2, 1, 64) >> [0, 4] → (2, 2, 64):
/// element e = j·128 + h·64 + m is nibble h of ql[j·64 + m]; qh (2, 1, 32) >> [0, 2, 4, 6] →
/// (2, 4, 32): element e = j·128 + s·32 + l is bits 2s..2s+2 of qh[j·32 + l].
/// x = (d · f32(scale[e / 16])) · f32(i8(ql | qh<<4) − 32).
fn q6_k(b: &[u8], o: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for (e, x) in o.iter_mut().enumerate() {
        let (j, r) = (e / 128, e % 128);
        let lo = (ql[j * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
        let hi = (qh[j * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = ((lo | (hi << 4)) as i8 - 32) as f32;
        let dl = d * (scales[e / 16] as i8) as f32;
        *x = dl * q;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of random bytes (f16 fields finite) and gguf-py's dequantized values, written by
    /// `scripts/make_fixtures.py --gguf-quants`.
    const FIXTURE: &str = include_str!("../../../tests/fixtures/gguf/quant_blocks.json");

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn dequantizes_bit_exactly_like_gguf_py() {
        let v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        let cases = v["cases"].as_array().unwrap();
        let mut seen = Vec::new();
        for c in cases {
            let name = c["type"].as_str().unwrap();
            let q = QuantType::ALL
                .into_iter()
                .find(|q| q.name() == name)
                .unwrap();
            assert_eq!(q.ggml_id(), c["ggml_type"].as_u64().unwrap() as u32);
            assert_eq!(QuantType::from_ggml(q.ggml_id()), Some(q));
            let bytes = hex(c["hex"].as_str().unwrap());
            let want: Vec<u32> = c["bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(q.bytes_for(want.len()), Some(bytes.len()), "{name}");
            let mut out = vec![0f32; want.len()];
            dequantize(q, &bytes, &mut out).unwrap();
            let got: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "{name} element {i}: {} vs gguf-py {}",
                    f32::from_bits(*g),
                    f32::from_bits(*w)
                );
            }
            let le = dequantize_to_le_bytes(q, &bytes).unwrap();
            let le: Vec<u32> = le
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(le, want, "{name} as bytes");
            seen.push(q);
        }
        for q in QuantType::ALL {
            assert!(seen.contains(&q), "no fixture blocks for {}", q.name());
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        for q in QuantType::ALL {
            let bb = q.block_bytes();
            let mut out = vec![0f32; q.block_elems()];
            assert!(dequantize(q, &vec![0; bb - 1], &mut out).is_err());
            assert!(dequantize(q, &vec![0; 2 * bb], &mut out).is_err());
            assert!(dequantize(q, &vec![0; bb], &mut out[1..]).is_err());
            assert!(dequantize_to_le_bytes(q, &vec![0; bb + 1]).is_err());
            assert_eq!(q.bytes_for(q.block_elems() + 1), None);
            dequantize(q, &vec![0; bb], &mut out).unwrap();
        }
    }
}
