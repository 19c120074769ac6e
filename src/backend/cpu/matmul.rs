//! `y = x·Wᵀ` over weights in their stored type (f32, f16, bf16, Q8_0, Q4_0, Q4_1), for the few
//! rows of a decode step as well as the many rows of a prefill.
//!
//! Every weight is read from memory once per call: a micro-kernel decodes a chunk of 32 weights of
//! `NJ` output features to f32 in registers (quantised blocks included: the model is never
//! dequantised as a whole) and multiplies it into the `NR` input rows that share the read. Threads
//! split the output features. The kernels exist for AVX-512, AVX2+FMA+F16C and plain Rust; the
//! instruction set is detected once at run time (`REAR_CPU_ISA=scalar|avx2|avx512` can lower it).
//!
//! Exactness: the weight values are exactly `tensor::decode`'s. The sum for one (row, output)
//! pair is always computed by the same sequence of operations — lane `l` of one accumulator takes
//! elements `k ≡ l (mod lanes)` in order, then a fixed horizontal reduction — whatever the number
//! of rows in the call, how they are tiled or how threads share the work. So a row's result never
//! depends on the other rows of the batch, and results are deterministic on a machine (one code
//! path per (dtype, instruction set)). The SIMD paths use FMA, which rounds differently from the
//! scalar path's separate multiply and add.
use crate::model::tensor::{decode, DType};
use crate::model::weights::Linear;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Instruction set of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512",
        }
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The best instruction set of this CPU, lowered by `REAR_CPU_ISA` if set (read once).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        let want = match std::env::var("REAR_CPU_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::Avx2,
            _ => best,
        };
        want.min(best)
    })
}

/// Weights per chunk of the inner loop (one ggml block).
const CHUNK: usize = 32;
/// Output features per micro-tile.
const NJ: usize = 4;
/// Input rows per micro-tile: as many sums as the registers hold (the f32 kernels need fewer
/// registers per row than the ones that decode).
const NR_512_F32: usize = 4;
const NR_512: usize = 2;
const NR_256: usize = 2;
const NR_SCALAR: usize = 2;
/// Input rows kept hot in cache while a task walks its output features.
const ROW_BLOCK: usize = 64;
/// From this many rows on, quantised weight tiles are decoded to f32 once and then multiplied
/// (and f32 weights go through the sliced kernels).
const PREDECODE_ROWS: usize = 16;

/// Software prefetch of the weights in the kernels that read them from memory.
const PREFETCH: bool = true;
/// How many tiles ahead.
const PF_TILES: usize = 1;

/// Weights per slice of the sliced f32 kernels (a multiple of 32): the slice of a 4-row f32
/// tile and of 4 input rows then take 16 KiB of L1.
const K_SLICE: usize = 512;

thread_local! {
    /// Per thread: the f32 copy of a weight tile, and the running sums of the sliced kernels.
    #[allow(clippy::type_complexity)]
    static TILE_BUF: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

const DT_F32: u8 = 0;
const DT_F16: u8 = 1;
const DT_BF16: u8 = 2;
const DT_Q8_0: u8 = 3;
const DT_Q4_0: u8 = 4;
const DT_Q4_1: u8 = 5;

fn dt_code(d: DType) -> u8 {
    match d {
        DType::F32 => DT_F32,
        DType::F16 => DT_F16,
        DType::BF16 => DT_BF16,
        DType::Q8_0 => DT_Q8_0,
        DType::Q4_0 => DT_Q4_0,
        DType::Q4_1 => DT_Q4_1,
    }
}

/// Bytes of one 32-weight chunk of type `dt`.
const fn chunk_bytes(dt: u8) -> usize {
    match dt {
        DT_F32 => 128,
        DT_F16 | DT_BF16 => 64,
        DT_Q8_0 => 34,
        DT_Q4_0 => 18,
        _ => 20,
    }
}

fn dtype_of(dt: u8) -> DType {
    match dt {
        DT_F32 => DType::F32,
        DT_F16 => DType::F16,
        DT_BF16 => DType::BF16,
        DT_Q8_0 => DType::Q8_0,
        DT_Q4_0 => DType::Q4_0,
        _ => DType::Q4_1,
    }
}

/// One micro-tile: `out[r·os + j] = Σ_k x[r·xs + k] · W[j][k]` for `r < NR`, `j < NJ`, where
/// weight row `j` starts at `w + j·wrow` bytes and holds `k` weights.
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    xs: usize,
    w: *const u8,
    wrow: usize,
    k: usize,
    out: *mut f32,
    os: usize,
    /// Kernels that also keep their decoded weights write row `j` at `wbuf + j·k`.
    wbuf: *mut f32,
    /// Sliced f32 kernels: the weights `k0..k1` of this pass; the running sums of row `r`,
    /// output `j` live at `acc + (r·nj + j)·lanes` between passes (`first`: start from zero;
    /// `last`: finish into `out`).
    k0: usize,
    k1: usize,
    acc: *mut f32,
    first: bool,
    last: bool,
}

type Kernel = unsafe fn(&Tile);

/// Copies the last `k % 32` weights of a float row (decoded) and of an input row into
/// zero-padded chunks, so the tail goes through the same vector code as the body.
#[inline(always)]
unsafe fn tail_chunk(
    dt: u8,
    w: *const u8,
    x: *const f32,
    full: usize,
    k: usize,
) -> ([f32; 32], [f32; 32]) {
    let rem = k - full;
    let mut wb = [0f32; 32];
    let mut xb = [0f32; 32];
    let es = chunk_bytes(dt) / CHUNK;
    let bytes = std::slice::from_raw_parts(w.add(full * es), rem * es);
    decode(dtype_of(dt), bytes, &mut wb[..rem]);
    xb[..rem].copy_from_slice(std::slice::from_raw_parts(x.add(full), rem));
    (wb, xb)
}

// ---------------------------------------------------------------------------------------------
// Scalar kernels (any CPU): 16 lanes of separate multiply and add.

unsafe fn k_scalar<const DT: u8, const NR: usize, const NJ_: usize, const STORE: bool>(t: &Tile) {
    let mut acc = [[[0f32; 16]; NJ_]; NR];
    let cb = chunk_bytes(DT);
    let quant = matches!(DT, DT_Q8_0 | DT_Q4_0 | DT_Q4_1);
    let full = if quant { t.k } else { t.k / CHUNK * CHUNK };
    let mut wv = [[0f32; 32]; NJ_];
    let mut c = 0;
    while c < full {
        for (j, wj) in wv.iter_mut().enumerate() {
            let p = t.w.add(j * t.wrow + c / CHUNK * cb);
            decode(dtype_of(DT), std::slice::from_raw_parts(p, cb), wj);
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            let xr = std::slice::from_raw_parts(t.x.add(r * t.xs + c), CHUNK);
            for (aj, wj) in ar.iter_mut().zip(&wv) {
                for h in 0..2 {
                    for l in 0..16 {
                        aj[l] += wj[h * 16 + l] * xr[h * 16 + l];
                    }
                }
            }
        }
        c += CHUNK;
    }
    if full < t.k {
        for (j, wj) in wv.iter_mut().enumerate() {
            *wj = tail_chunk(DT, t.w.add(j * t.wrow), t.x, full, t.k).0;
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            let (_, xb) = tail_chunk(DT, t.w, t.x.add(r * t.xs), full, t.k);
            for (aj, wj) in ar.iter_mut().zip(&wv) {
                for h in 0..2 {
                    for l in 0..16 {
                        aj[l] += wj[h * 16 + l] * xb[h * 16 + l];
                    }
                }
            }
        }
    }
    for (r, ar) in acc.iter().enumerate() {
        for (j, a) in ar.iter().enumerate() {
            let mut s8 = [0f32; 8];
            for l in 0..8 {
                s8[l] = a[l] + a[l + 8];
            }
            let s = ((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7]));
            *t.out.add(r * t.os + j) = s;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 kernels: one 16-lane accumulator per (row, output); a chunk is two vectors.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The 32 weights of one chunk as two f32 vectors (elements 0..16, 16..32).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    unsafe fn load512<const DT: u8>(p: *const u8) -> (__m512, __m512) {
        match DT {
            DT_F32 => (
                _mm512_loadu_ps(p as *const f32),
                _mm512_loadu_ps((p as *const f32).add(16)),
            ),
            DT_F16 => (
                _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)),
            ),
            DT_BF16 => {
                let a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                let b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(32) as *const __m256i));
                (
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(a)),
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(b)),
                )
            }
            DT_Q8_0 => {
                let d = _mm512_cvtph_ps(_mm256_set1_epi16((p as *const i16).read_unaligned()));
                let a = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i));
                let b = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i));
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(a), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(b), d),
                )
            }
            // 4-bit blocks: the 16 possible weight values of the block are computed once (a
            // 16-entry table, each exactly as `tensor::decode` computes it) and looked up by
            // nibble with one permute per 16 weights (the permute reads the low 4 bits only).
            DT_Q4_0 => {
                let d = _mm512_cvtph_ps(_mm256_set1_epi16((p as *const i16).read_unaligned()));
                let iota = _mm512_setr_ps(
                    -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0,
                    6.0, 7.0,
                );
                let lut = _mm512_mul_ps(iota, d);
                let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i));
                (
                    _mm512_permutexvar_ps(q, lut),
                    _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), lut),
                )
            }
            _ => {
                let d = _mm512_cvtph_ps(_mm256_set1_epi16((p as *const i16).read_unaligned()));
                let mn =
                    _mm512_cvtph_ps(_mm256_set1_epi16((p.add(2) as *const i16).read_unaligned()));
                let iota = _mm512_setr_ps(
                    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0,
                    15.0,
                );
                let lut = _mm512_add_ps(_mm512_mul_ps(iota, d), mn);
                let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(4) as *const __m128i));
                (
                    _mm512_permutexvar_ps(q, lut),
                    _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), lut),
                )
            }
        }
    }

    /// The micro-kernel. Per (row, output) pair the operations are always: for each 16-weight
    /// vector in order, `acc = fma(w, x, acc)`; then `hsum512`. The f32 variant walks 16 weights
    /// at a time, the others a decoded 32-weight chunk at a time (two steps in the same order).
    /// Loops are arranged so that at most a few weight and input vectors are live besides the
    /// sums (no register spills).
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    pub(super) unsafe fn k512<
        const DT: u8,
        const NR: usize,
        const NJ_: usize,
        const STORE: bool,
    >(
        t: &Tile,
    ) {
        let cb = chunk_bytes(DT);
        let quant = matches!(DT, DT_Q8_0 | DT_Q4_0 | DT_Q4_1);
        let full = if quant { t.k } else { t.k / CHUNK * CHUNK };
        // The tail (k % 32 weights of a float type) is zero-padded into a chunk first: its
        // decoding calls out, and no sum may be live across a call (they would all be spilled).
        let (wt, xt) = tails::<DT, NR, NJ_, STORE>(t, full);
        let mut acc = [[_mm512_setzero_ps(); NJ_]; NR];
        // Weights are read straight from memory: prefetch the same column of the next tile's
        // rows (they follow this tile's in memory), `NJ` rows ahead.
        let pf = PF_TILES * NJ_ * t.wrow;
        let mut wp = [t.w; NJ_];
        for (j, p) in wp.iter_mut().enumerate() {
            *p = t.w.add(j * t.wrow);
        }
        let mut c = 0;
        if DT == DT_F32 {
            while c < full {
                let mut w = [_mm512_setzero_ps(); NJ_];
                for j in 0..NJ_ {
                    w[j] = _mm512_loadu_ps((wp[j] as *const f32).add(c));
                    if PREFETCH {
                        _mm_prefetch::<_MM_HINT_T0>(wp[j].add(c * 4 + pf) as *const i8);
                    }
                }
                for r in 0..NR {
                    let xv = _mm512_loadu_ps(t.x.add(r * t.xs + c));
                    for j in 0..NJ_ {
                        acc[r][j] = _mm512_fmadd_ps(w[j], xv, acc[r][j]);
                    }
                }
                c += 16;
            }
        } else {
            while c < full {
                for j in 0..NJ_ {
                    if PREFETCH {
                        _mm_prefetch::<_MM_HINT_T0>(wp[j].add(pf) as *const i8);
                        if cb > 64 {
                            _mm_prefetch::<_MM_HINT_T0>(wp[j].add(pf + 64) as *const i8);
                        }
                    }
                    let (a, b) = load512::<DT>(wp[j]);
                    wp[j] = wp[j].add(cb);
                    if STORE {
                        _mm512_storeu_ps(t.wbuf.add(c * NJ_ + j * 32), a);
                        _mm512_storeu_ps(t.wbuf.add(c * NJ_ + j * 32 + 16), b);
                    }
                    for r in 0..NR {
                        let xp = t.x.add(r * t.xs + c);
                        acc[r][j] = _mm512_fmadd_ps(a, _mm512_loadu_ps(xp), acc[r][j]);
                        acc[r][j] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xp.add(16)), acc[r][j]);
                    }
                }
                c += CHUNK;
            }
        }
        if full < t.k {
            tail512(&mut acc, &wt, &xt);
        }
        for r in 0..NR {
            for j in 0..NJ_ {
                *t.out.add(r * t.os + j) = hsum512(acc[r][j]);
            }
        }
    }

    /// The zero-padded last chunk of each weight row (decoded; stored to the packed tile when
    /// `STORE`) and of each input row, when `k` is not a multiple of 32.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    unsafe fn tails<const DT: u8, const NR: usize, const NJ_: usize, const STORE: bool>(
        t: &Tile,
        full: usize,
    ) -> ([[f32; 32]; NJ_], [[f32; 32]; NR]) {
        let mut wt = [[0f32; 32]; NJ_];
        let mut xt = [[0f32; 32]; NR];
        if full < t.k {
            for (j, wj) in wt.iter_mut().enumerate() {
                *wj = tail_chunk(DT, t.w.add(j * t.wrow), t.x, full, t.k).0;
                if STORE {
                    std::ptr::copy_nonoverlapping(
                        wj.as_ptr(),
                        t.wbuf.add(full * NJ_ + j * 32),
                        t.k - full,
                    );
                }
            }
            for (r, xr) in xt.iter_mut().enumerate() {
                *xr = tail_chunk(DT, t.w, t.x.add(r * t.xs), full, t.k).1;
            }
        }
        (wt, xt)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    unsafe fn tail512<const NR: usize, const NJ_: usize>(
        acc: &mut [[__m512; NJ_]; NR],
        wt: &[[f32; 32]; NJ_],
        xt: &[[f32; 32]; NR],
    ) {
        for j in 0..NJ_ {
            let a = _mm512_loadu_ps(wt[j].as_ptr());
            let b = _mm512_loadu_ps(wt[j].as_ptr().add(16));
            for r in 0..NR {
                acc[r][j] = _mm512_fmadd_ps(a, _mm512_loadu_ps(xt[r].as_ptr()), acc[r][j]);
                acc[r][j] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xt[r].as_ptr().add(16)), acc[r][j]);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tail256<const NR: usize, const NJ_: usize>(
        acc: &mut [[__m256; NJ_]; NR],
        wt: &[[f32; 32]; NJ_],
        xt: &[[f32; 32]; NR],
    ) {
        for j in 0..NJ_ {
            for r in 0..NR {
                for q in 0..4 {
                    let wq = _mm256_loadu_ps(wt[j].as_ptr().add(8 * q));
                    let xq = _mm256_loadu_ps(xt[r].as_ptr().add(8 * q));
                    acc[r][j] = _mm256_fmadd_ps(wq, xq, acc[r][j]);
                }
            }
        }
    }

    /// Address of f32 weight `c` of tile row `j`: row-major (`wrow` bytes per row), or packed
    /// (each 32-weight chunk of the `NJ_` rows together, as the storing kernels write it, so
    /// that those stores and the input loads never alias modulo 4 KiB).
    #[inline(always)]
    unsafe fn wrow_f32<const NJ_: usize, const PACKED: bool>(
        t: &Tile,
        j: usize,
        c: usize,
    ) -> *const f32 {
        if PACKED {
            (t.w as *const f32).add(c / CHUNK * (NJ_ * CHUNK) + j * CHUNK + c % CHUNK)
        } else {
            (t.w.add(j * t.wrow) as *const f32).add(c)
        }
    }

    /// `k512` for f32 weights over the slice `k0..k1` only, its sums carried in `acc` between
    /// slices: the same operations per pair as one pass over all of `k`, while the slice of the
    /// weight tile and of the inputs stays in L1.
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    pub(super) unsafe fn k512s<const NR: usize, const NJ_: usize, const PACKED: bool>(t: &Tile) {
        let full = t.k / CHUNK * CHUNK;
        let tail = t.last && full < t.k;
        let (wt, xt) = if tail {
            sliced_tails::<NR, NJ_, PACKED>(t, full)
        } else {
            ([[0f32; 32]; NJ_], [[0f32; 32]; NR])
        };
        let mut acc = [[_mm512_setzero_ps(); NJ_]; NR];
        if !t.first {
            for r in 0..NR {
                for j in 0..NJ_ {
                    acc[r][j] = _mm512_loadu_ps(t.acc.add((r * NJ_ + j) * 16));
                }
            }
        }
        let end = t.k1.min(full);
        let mut c = t.k0;
        while c < end {
            let mut w = [_mm512_setzero_ps(); NJ_];
            for j in 0..NJ_ {
                w[j] = _mm512_loadu_ps(wrow_f32::<NJ_, PACKED>(t, j, c));
            }
            for r in 0..NR {
                let xv = _mm512_loadu_ps(t.x.add(r * t.xs + c));
                for j in 0..NJ_ {
                    acc[r][j] = _mm512_fmadd_ps(w[j], xv, acc[r][j]);
                }
            }
            c += 16;
        }
        if tail {
            tail512(&mut acc, &wt, &xt);
        }
        for r in 0..NR {
            for j in 0..NJ_ {
                if t.last {
                    *t.out.add(r * t.os + j) = hsum512(acc[r][j]);
                } else {
                    _mm512_storeu_ps(t.acc.add((r * NJ_ + j) * 16), acc[r][j]);
                }
            }
        }
    }

    /// `k512s` with 8-lane vectors.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn k256s<const NR: usize, const NJ_: usize, const PACKED: bool>(t: &Tile) {
        let full = t.k / CHUNK * CHUNK;
        let tail = t.last && full < t.k;
        let (wt, xt) = if tail {
            sliced_tails::<NR, NJ_, PACKED>(t, full)
        } else {
            ([[0f32; 32]; NJ_], [[0f32; 32]; NR])
        };
        let mut acc = [[_mm256_setzero_ps(); NJ_]; NR];
        if !t.first {
            for r in 0..NR {
                for j in 0..NJ_ {
                    acc[r][j] = _mm256_loadu_ps(t.acc.add((r * NJ_ + j) * 8));
                }
            }
        }
        let end = t.k1.min(full);
        let mut c = t.k0;
        while c < end {
            let mut w = [_mm256_setzero_ps(); NJ_];
            for j in 0..NJ_ {
                w[j] = _mm256_loadu_ps(wrow_f32::<NJ_, PACKED>(t, j, c));
            }
            for r in 0..NR {
                let xv = _mm256_loadu_ps(t.x.add(r * t.xs + c));
                for j in 0..NJ_ {
                    acc[r][j] = _mm256_fmadd_ps(w[j], xv, acc[r][j]);
                }
            }
            c += 8;
        }
        if tail {
            tail256(&mut acc, &wt, &xt);
        }
        for r in 0..NR {
            for j in 0..NJ_ {
                if t.last {
                    *t.out.add(r * t.os + j) = hsum256(acc[r][j]);
                } else {
                    _mm256_storeu_ps(t.acc.add((r * NJ_ + j) * 8), acc[r][j]);
                }
            }
        }
    }

    #[inline(always)]
    #[allow(clippy::type_complexity)]
    unsafe fn sliced_tails<const NR: usize, const NJ_: usize, const PACKED: bool>(
        t: &Tile,
        full: usize,
    ) -> ([[f32; 32]; NJ_], [[f32; 32]; NR]) {
        let mut wt = [[0f32; 32]; NJ_];
        let mut xt = [[0f32; 32]; NR];
        let rem = t.k - full;
        for (j, wj) in wt.iter_mut().enumerate() {
            let p = wrow_f32::<NJ_, PACKED>(t, j, full);
            wj[..rem].copy_from_slice(std::slice::from_raw_parts(p, rem));
        }
        for (r, xr) in xt.iter_mut().enumerate() {
            xr[..rem].copy_from_slice(std::slice::from_raw_parts(t.x.add(r * t.xs + full), rem));
        }
        (wt, xt)
    }

    /// Decodes a row of `k` weights to f32 (the same values as `tensor::decode`).
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    pub(super) unsafe fn decode512<const DT: u8>(src: *const u8, dst: *mut f32, k: usize) {
        let cb = chunk_bytes(DT);
        let full = k / CHUNK * CHUNK;
        let mut c = 0;
        while c < full {
            let (a, b) = load512::<DT>(src.add(c / CHUNK * cb));
            _mm512_storeu_ps(dst.add(c), a);
            _mm512_storeu_ps(dst.add(c + 16), b);
            c += CHUNK;
        }
        if full < k {
            let es = cb / CHUNK;
            let bytes = std::slice::from_raw_parts(src.add(full * es), (k - full) * es);
            decode(
                dtype_of(DT),
                bytes,
                std::slice::from_raw_parts_mut(dst.add(full), k - full),
            );
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn decode256<const DT: u8>(src: *const u8, dst: *mut f32, k: usize) {
        let cb = chunk_bytes(DT);
        let full = k / CHUNK * CHUNK;
        let mut c = 0;
        while c < full {
            let v = load256::<DT>(src.add(c / CHUNK * cb));
            for (q, vq) in v.iter().enumerate() {
                _mm256_storeu_ps(dst.add(c + 8 * q), *vq);
            }
            c += CHUNK;
        }
        if full < k {
            let es = cb / CHUNK;
            let bytes = std::slice::from_raw_parts(src.add(full * es), (k - full) * es);
            decode(
                dtype_of(DT),
                bytes,
                std::slice::from_raw_parts_mut(dst.add(full), k - full),
            );
        }
    }

    /// Fixed-order horizontal sum of 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
    unsafe fn hsum512(v: __m512) -> f32 {
        let a = _mm512_castps512_ps256(v);
        let b = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum256(_mm256_add_ps(a, b))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let a = _mm256_castps256_ps128(v);
        let b = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(a, b);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    // -----------------------------------------------------------------------------------------
    // AVX2 kernels: one 8-lane accumulator per (row, output); a chunk is four vectors.

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bf16x8(p: *const u8) -> __m256 {
        let v = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> __m256 {
        let h = (p as *const i16).read_unaligned();
        _mm256_cvtph_ps(_mm_set1_epi16(h))
    }

    /// Elements 0..8 and 8..16 of 16 unsigned bytes as f32, each `(q - sub)·d (+ m)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn u8x16<const ADD_MIN: bool>(
        v: __m128i,
        sub: __m256i,
        d: __m256,
        m: __m256,
    ) -> (__m256, __m256) {
        let a = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(v), sub));
        let b = _mm256_cvtepi32_ps(_mm256_sub_epi32(
            _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v)),
            sub,
        ));
        if ADD_MIN {
            (
                _mm256_add_ps(_mm256_mul_ps(a, d), m),
                _mm256_add_ps(_mm256_mul_ps(b, d), m),
            )
        } else {
            (_mm256_mul_ps(a, d), _mm256_mul_ps(b, d))
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8x8(p: *const u8, d: __m256) -> __m256 {
        let v = _mm_loadl_epi64(p as *const __m128i);
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load256<const DT: u8>(p: *const u8) -> [__m256; 4] {
        match DT {
            DT_F32 => {
                let f = p as *const f32;
                [
                    _mm256_loadu_ps(f),
                    _mm256_loadu_ps(f.add(8)),
                    _mm256_loadu_ps(f.add(16)),
                    _mm256_loadu_ps(f.add(24)),
                ]
            }
            DT_F16 => {
                let h = p as *const __m128i;
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(h)),
                    _mm256_cvtph_ps(_mm_loadu_si128(h.add(1))),
                    _mm256_cvtph_ps(_mm_loadu_si128(h.add(2))),
                    _mm256_cvtph_ps(_mm_loadu_si128(h.add(3))),
                ]
            }
            DT_BF16 => [
                bf16x8(p),
                bf16x8(p.add(16)),
                bf16x8(p.add(32)),
                bf16x8(p.add(48)),
            ],
            DT_Q8_0 => {
                let d = f16_at(p);
                [
                    q8x8(p.add(2), d),
                    q8x8(p.add(10), d),
                    q8x8(p.add(18), d),
                    q8x8(p.add(26), d),
                ]
            }
            DT_Q4_0 => {
                let d = f16_at(p);
                let q = _mm_loadu_si128(p.add(2) as *const __m128i);
                let m = _mm_set1_epi8(0x0f);
                let eight = _mm256_set1_epi32(8);
                let z = _mm256_setzero_ps();
                let (a, b) = u8x16::<false>(_mm_and_si128(q, m), eight, d, z);
                let (c, e) = u8x16::<false>(_mm_and_si128(_mm_srli_epi16::<4>(q), m), eight, d, z);
                [a, b, c, e]
            }
            _ => {
                let d = f16_at(p);
                let mn = f16_at(p.add(2));
                let q = _mm_loadu_si128(p.add(4) as *const __m128i);
                let m = _mm_set1_epi8(0x0f);
                let zero = _mm256_setzero_si256();
                let (a, b) = u8x16::<true>(_mm_and_si128(q, m), zero, d, mn);
                let (c, e) = u8x16::<true>(_mm_and_si128(_mm_srli_epi16::<4>(q), m), zero, d, mn);
                [a, b, c, e]
            }
        }
    }

    /// The AVX2 micro-kernel: as `k512` with 8-lane vectors (four per chunk).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn k256<
        const DT: u8,
        const NR: usize,
        const NJ_: usize,
        const STORE: bool,
    >(
        t: &Tile,
    ) {
        let cb = chunk_bytes(DT);
        let quant = matches!(DT, DT_Q8_0 | DT_Q4_0 | DT_Q4_1);
        let full = if quant { t.k } else { t.k / CHUNK * CHUNK };
        let (wt, xt) = tails::<DT, NR, NJ_, STORE>(t, full);
        let mut acc = [[_mm256_setzero_ps(); NJ_]; NR];
        let mut c = 0;
        if DT == DT_F32 {
            while c < full {
                let mut w = [_mm256_setzero_ps(); NJ_];
                for j in 0..NJ_ {
                    w[j] = _mm256_loadu_ps((t.w.add(j * t.wrow) as *const f32).add(c));
                }
                for r in 0..NR {
                    let xv = _mm256_loadu_ps(t.x.add(r * t.xs + c));
                    for j in 0..NJ_ {
                        acc[r][j] = _mm256_fmadd_ps(w[j], xv, acc[r][j]);
                    }
                }
                c += 8;
            }
        } else {
            while c < full {
                for j in 0..NJ_ {
                    let w = load256::<DT>(t.w.add(j * t.wrow + c / CHUNK * cb));
                    if STORE {
                        for (q, v) in w.iter().enumerate() {
                            _mm256_storeu_ps(t.wbuf.add(c * NJ_ + j * 32 + 8 * q), *v);
                        }
                    }
                    for r in 0..NR {
                        let xp = t.x.add(r * t.xs + c);
                        for (q, wq) in w.iter().enumerate() {
                            acc[r][j] =
                                _mm256_fmadd_ps(*wq, _mm256_loadu_ps(xp.add(8 * q)), acc[r][j]);
                        }
                    }
                }
                c += CHUNK;
            }
        }
        if full < t.k {
            tail256(&mut acc, &wt, &xt);
        }
        for r in 0..NR {
            for j in 0..NJ_ {
                *t.out.add(r * t.os + j) = hsum256(acc[r][j]);
            }
        }
    }
}

/// Kernels of one (instruction set, dtype): `[nr - 1]` for full-width tiles (`NJ` outputs) and
/// for single-output tiles, the row count of a full tile, and the full-row-count kernels that also
/// store the decoded weights (`[NJ outputs, 1 output]`).
struct Kernels {
    nr: usize,
    full: [Kernel; 4],
    one: [Kernel; 4],
    /// `[nj == 1][nr - 1]` for `nr` up to 2 (the direct kernels' row count).
    store: [[Kernel; 2]; 2],
}

/// The sliced f32 kernels of an instruction set: `[nr - 1]` for `NJ` outputs and for 1, the row
/// count of a full tile, and the lanes of one sum.
struct Sliced {
    nr: usize,
    lanes: usize,
    /// `[packed as usize]`.
    full: [[Kernel; 4]; 2],
    one: [[Kernel; 4]; 2],
}

macro_rules! sliced {
    ($f:ident, $nr:expr, $lanes:expr) => {
        Sliced {
            nr: $nr,
            lanes: $lanes,
            full: [sliced!(@row $f, $nr, NJ, false), sliced!(@row $f, $nr, NJ, true)],
            one: [sliced!(@row $f, $nr, 1, false), sliced!(@row $f, $nr, 1, true)],
        }
    };
    (@row $f:ident, $nr:expr, $nj:expr, $p:expr) => {
        [
            $f::<1, { $nj }, { $p }>,
            $f::<{ if $nr >= 2 { 2 } else { 1 } }, { $nj }, { $p }>,
            $f::<{ if $nr >= 3 { 3 } else { 1 } }, { $nj }, { $p }>,
            $f::<{ if $nr >= 4 { 4 } else { 1 } }, { $nj }, { $p }>,
        ]
    };
}

/// `None` for the scalar kernels (they run over all of `k` at once).
fn sliced_for(isa: Isa) -> Option<Sliced> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            use x86::k512s;
            Some(sliced!(k512s, NR_512_F32, 16))
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            use x86::k256s;
            Some(sliced!(k256s, NR_256, 8))
        }
        _ => None,
    }
}

macro_rules! kernels {
    ($f:ident, $dt:expr, $nr:expr) => {
        Kernels {
            nr: $nr,
            full: [
                $f::<{ $dt }, 1, NJ, false>,
                $f::<
                    { $dt },
                    {
                        if $nr >= 2 {
                            2
                        } else {
                            1
                        }
                    },
                    NJ,
                    false,
                >,
                $f::<
                    { $dt },
                    {
                        if $nr >= 3 {
                            3
                        } else {
                            1
                        }
                    },
                    NJ,
                    false,
                >,
                $f::<
                    { $dt },
                    {
                        if $nr >= 4 {
                            4
                        } else {
                            1
                        }
                    },
                    NJ,
                    false,
                >,
            ],
            one: [
                $f::<{ $dt }, 1, 1, false>,
                $f::<
                    { $dt },
                    {
                        if $nr >= 2 {
                            2
                        } else {
                            1
                        }
                    },
                    1,
                    false,
                >,
                $f::<
                    { $dt },
                    {
                        if $nr >= 3 {
                            3
                        } else {
                            1
                        }
                    },
                    1,
                    false,
                >,
                $f::<
                    { $dt },
                    {
                        if $nr >= 4 {
                            4
                        } else {
                            1
                        }
                    },
                    1,
                    false,
                >,
            ],
            store: [
                [
                    $f::<{ $dt }, 1, NJ, true>,
                    $f::<
                        { $dt },
                        {
                            if $nr >= 2 {
                                2
                            } else {
                                1
                            }
                        },
                        NJ,
                        true,
                    >,
                ],
                [
                    $f::<{ $dt }, 1, 1, true>,
                    $f::<
                        { $dt },
                        {
                            if $nr >= 2 {
                                2
                            } else {
                                1
                            }
                        },
                        1,
                        true,
                    >,
                ],
            ],
        }
    };
}

macro_rules! per_dtype {
    ($f:ident, $dt:expr, $nr:expr) => {
        match $dt {
            DT_F32 => kernels!($f, DT_F32, $nr),
            DT_F16 => kernels!($f, DT_F16, $nr),
            DT_BF16 => kernels!($f, DT_BF16, $nr),
            DT_Q8_0 => kernels!($f, DT_Q8_0, $nr),
            DT_Q4_0 => kernels!($f, DT_Q4_0, $nr),
            _ => kernels!($f, DT_Q4_1, $nr),
        }
    };
}

fn kernels_for(isa: Isa, dt: DType) -> Kernels {
    let dt = dt_code(dt);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            use x86::k512;
            if dt == DT_F32 {
                kernels!(k512, DT_F32, NR_512_F32)
            } else {
                per_dtype!(k512, dt, NR_512)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            use x86::k256;
            per_dtype!(k256, dt, NR_256)
        }
        _ => per_dtype!(k_scalar, dt, NR_SCALAR),
    }
}

/// Decodes one weight row (`k` weights of type `dt` at `src`) into `dst`, vectorised; the values
/// are exactly `tensor::decode`'s.
unsafe fn decode_row(isa: Isa, dt: DType, src: *const u8, dst: *mut f32, k: usize) {
    macro_rules! go {
        ($f:ident) => {
            match dt_code(dt) {
                DT_F32 => $f::<DT_F32>(src, dst, k),
                DT_F16 => $f::<DT_F16>(src, dst, k),
                DT_BF16 => $f::<DT_BF16>(src, dst, k),
                DT_Q8_0 => $f::<DT_Q8_0>(src, dst, k),
                DT_Q4_0 => $f::<DT_Q4_0>(src, dst, k),
                _ => $f::<DT_Q4_1>(src, dst, k),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            use x86::decode512;
            go!(decode512)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            use x86::decode256;
            go!(decode256)
        }
        _ => {
            let bytes = std::slice::from_raw_parts(src, dt.bytes_for(k).unwrap_or(0));
            decode(dt, bytes, std::slice::from_raw_parts_mut(dst, k));
        }
    }
}

/// A raw output pointer shared by the tasks of one call (they write disjoint columns).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One projection of a fused call: its weights and its `[rows, out_features]` output.
pub struct Job<'a> {
    pub lin: &'a Linear,
    pub out: &'a mut [f32],
}

/// `out[r, j] = Σ_i x[r, i] · W[j, i] (+ b[j])` for several projections of the same input at
/// once (e.g. q, k and v), in one parallel pass. `x: [rows, in]`; each `out: [rows, out_j]`.
pub fn matmul_many(x: &[f32], rows: usize, jobs: &mut [Job<'_>]) {
    if rows == 0 || jobs.is_empty() {
        return;
    }
    let k = jobs[0].lin.in_features();
    assert_eq!(
        x.len(),
        rows * k,
        "matmul: input is not [rows, in_features]"
    );
    for j in jobs.iter() {
        assert_eq!(j.lin.in_features(), k, "matmul_many: in_features differ");
        assert_eq!(
            j.out.len(),
            rows * j.lin.out_features(),
            "matmul: output size"
        );
    }
    let isa = isa();
    let threads = rayon::current_num_threads().max(1);
    let total: usize = jobs.iter().map(|j| j.lin.out_features()).sum();
    // Output features per task: enough tasks to balance the threads, whole micro-tiles, and
    // not so few features that the task overhead shows.
    let per = total.div_ceil(threads * 8).next_multiple_of(NJ).max(16);
    let mut spec: [(usize, OutPtr, Option<&Linear>); 8] =
        [(0, OutPtr(std::ptr::null_mut()), None); 8];
    assert!(
        jobs.len() <= spec.len(),
        "matmul_many: at most 8 projections"
    );
    let mut ntasks = 0;
    for (i, j) in jobs.iter_mut().enumerate() {
        let n = j.lin.out_features().div_ceil(per);
        spec[i] = (n, OutPtr(j.out.as_mut_ptr()), Some(j.lin));
        ntasks += n;
    }
    let spec = &spec[..jobs.len()];
    let run = |t: usize| {
        let mut t = t;
        let mut ji = 0;
        while t >= spec[ji].0 {
            t -= spec[ji].0;
            ji += 1;
        }
        let (_, out, lin) = spec[ji];
        let lin = lin.expect("job");
        let o = lin.out_features();
        let j0 = t * per;
        let j1 = (j0 + per).min(o);
        // SAFETY: tasks write disjoint column ranges [j0, j1) of their job's output, which
        // outlives the call; the pointer is valid for rows · o elements.
        unsafe { task(isa, x, rows, k, lin, out.0, j0, j1) };
    };
    if ntasks == 1 || threads == 1 {
        (0..ntasks).for_each(run);
    } else {
        (0..ntasks).into_par_iter().for_each(run);
    }
}

/// Output features `j0..j1` of every row.
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    isa: Isa,
    x: &[f32],
    rows: usize,
    k: usize,
    lin: &Linear,
    out: *mut f32,
    j0: usize,
    j1: usize,
) {
    let dt = lin.weight.dtype;
    // With many rows the decode (shared by the rows) would compete with the multiply-adds for
    // the same execution ports: decode each tile of NJ weight rows to f32 once and run the f32
    // kernels over it. The f32 values are exactly the in-register ones and the f32 kernels sum
    // in the same order, so the results are bit for bit those of the direct path.
    let many = rows >= PREDECODE_ROWS;
    // Only the block-quantised types gain from it (measured: bf16/f16 decode is cheap enough
    // that the direct kernels stay faster at every row count).
    let predecode = many && dt.block_elems() > 1;
    let kern = kernels_for(isa, dt);
    let kf32 = kernels_for(isa, DType::F32);
    let sliced = if predecode || (many && dt == DType::F32) {
        sliced_for(isa)
    } else {
        None
    };
    let o = lin.out_features();
    let wbytes = lin.weight.bytes();
    let wrow = lin.weight.row_bytes();
    TILE_BUF.with(|buf| {
        let (wb, ab) = &mut *buf.borrow_mut();
        if predecode {
            // Row-major rows of k, or packed chunks of 32 (the last one padded).
            wb.resize(NJ * k.next_multiple_of(CHUNK), 0.0);
        }
        if sliced.is_some() {
            ab.resize(ROW_BLOCK * NJ * 16, 0.0);
        }
        let wbuf = wb.as_mut_ptr();
        let accp = ab.as_mut_ptr();
        let mut rb = 0;
        while rb < rows {
            let re = (rb + ROW_BLOCK).min(rows);
            let mut j = j0;
            while j < j1 {
                let nj = if j1 - j >= NJ { NJ } else { 1 };
                let w = wbytes.as_ptr().add(j * wrow);
                let tile = |r: usize, w: *const u8, wrow: usize| Tile {
                    x: x.as_ptr().add(r * k),
                    xs: k,
                    w,
                    wrow,
                    k,
                    out: out.add(r * o + j),
                    os: o,
                    wbuf,
                    k0: 0,
                    k1: k,
                    acc: std::ptr::null_mut(),
                    first: true,
                    last: true,
                };
                let mut r = rb;
                let packed = predecode && sliced.is_some();
                if packed {
                    // The first rows decode the tile from memory (the loads overlap their
                    // multiply-adds) and keep it, packed; the other rows reuse the f32 copy.
                    let nr = (re - rb).min(kern.nr).min(2);
                    (kern.store[(nj != NJ) as usize][nr - 1])(&tile(r, w, wrow));
                    r += nr;
                } else if predecode {
                    for jj in 0..nj {
                        decode_row(isa, dt, w.add(jj * wrow), wbuf.add(jj * k), k);
                    }
                }
                let (w, wr) = if predecode {
                    (wbuf as *const u8, k * 4)
                } else {
                    (w, wrow)
                };
                if let Some(sk) = &sliced {
                    // The remaining rows over the f32 tile, one L1-sized slice of k at a time.
                    let table = if nj == NJ {
                        &sk.full[packed as usize]
                    } else {
                        &sk.one[packed as usize]
                    };
                    let r0 = r;
                    let mut k0 = 0;
                    loop {
                        let k1 = if k - k0 <= K_SLICE { k } else { k0 + K_SLICE };
                        let mut r = r0;
                        while r < re {
                            let nr = (re - r).min(sk.nr);
                            let mut t = tile(r, w, wr);
                            t.k0 = k0;
                            t.k1 = k1;
                            t.first = k0 == 0;
                            t.last = k1 == k;
                            t.acc = accp.add((r - r0) * nj * sk.lanes);
                            (table[nr - 1])(&t);
                            r += nr;
                        }
                        if k1 == k {
                            break;
                        }
                        k0 = k1;
                    }
                } else {
                    let kk = if predecode { &kf32 } else { &kern };
                    let table = if nj == NJ { &kk.full } else { &kk.one };
                    while r < re {
                        let nr = (re - r).min(kk.nr);
                        (table[nr - 1])(&tile(r, w, wr));
                        r += nr;
                    }
                }
                j += nj;
            }
            rb = re;
        }
    });
    if let Some(b) = &lin.bias {
        let es = b.dtype.block_bytes();
        let bytes = b.bytes();
        for j in j0..j1 {
            let mut bj = [0f32];
            decode(b.dtype, &bytes[j * es..(j + 1) * es], &mut bj);
            for r in 0..rows {
                *out.add(r * o + j) += bj[0];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensor::HostTensor;
    use half::{bf16, f16};

    fn quantize(dt: DType, w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in w.chunks(32) {
            let amax = b.iter().fold(0f32, |a, &v| a.max(v.abs()));
            match dt {
                DType::Q8_0 => {
                    let d = amax / 127.0;
                    out.extend(f16::from_f32(d).to_le_bytes());
                    for &v in b {
                        out.push(((v / d).round() as i8) as u8);
                    }
                }
                DType::Q4_0 => {
                    let d = amax / 8.0;
                    out.extend(f16::from_f32(d).to_le_bytes());
                    for i in 0..16 {
                        let q = |v: f32| ((v / d).round() as i32 + 8).clamp(0, 15) as u8;
                        out.push(q(b[i]) | q(b[i + 16]) << 4);
                    }
                }
                _ => {
                    let (mn, mx) = b
                        .iter()
                        .fold((f32::MAX, f32::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
                    let d = (mx - mn) / 15.0;
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(f16::from_f32(mn).to_le_bytes());
                    for i in 0..16 {
                        let q = |v: f32| (((v - mn) / d).round() as i32).clamp(0, 15) as u8;
                        out.push(q(b[i]) | q(b[i + 16]) << 4);
                    }
                }
            }
        }
        out
    }

    fn tensor(dt: DType, o: usize, i: usize, w: &[f32]) -> HostTensor {
        let bytes: Vec<u8> = match dt {
            DType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => w
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            DType::BF16 => w
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => quantize(dt, w),
        };
        HostTensor::from_bytes("w", dt, vec![o, i], bytes).unwrap()
    }

    fn naive(x: &[f32], rows: usize, t: &HostTensor) -> Vec<f32> {
        let (o, i) = (t.shape[0], t.shape[1]);
        let w = t.to_f32();
        let mut out = vec![0f32; rows * o];
        for r in 0..rows {
            for j in 0..o {
                out[r * o + j] = (0..i)
                    .map(|k| x[r * i + k] as f64 * w[j * i + k] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    fn run_isa(isa: Isa, x: &[f32], rows: usize, lin: &Linear) -> Vec<f32> {
        let o = lin.out_features();
        let k = lin.in_features();
        let mut out = vec![0f32; rows * o];
        unsafe { task(isa, x, rows, k, lin, out.as_mut_ptr(), 0, o) };
        out
    }

    #[test]
    fn every_dtype_and_isa_matches_the_decoded_reference() {
        let best = detect();
        for dt in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
        ] {
            let shapes: &[(usize, usize)] = if dt.block_elems() == 1 {
                &[(7, 37), (9, 64), (5, 100), (13, 3)]
            } else {
                &[(7, 32), (9, 96), (6, 160)]
            };
            for &(o, i) in shapes {
                for rows in [1usize, 2, 3, 5, 9, 17] {
                    let w: Vec<f32> = (0..o * i)
                        .map(|k| (((k * 37 + 11) % 29) as f32 - 14.0) / 9.0)
                        .collect();
                    let x: Vec<f32> = (0..rows * i)
                        .map(|k| (((k * 13 + 5) % 17) as f32 - 8.0) / 5.0)
                        .collect();
                    let lin = Linear {
                        weight: tensor(dt, o, i, &w),
                        bias: None,
                    };
                    let want = naive(&x, rows, &lin.weight);
                    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512]
                        .into_iter()
                        .filter(|&a| a <= best)
                    {
                        let got = run_isa(isa, &x, rows, &lin);
                        for (a, b) in got.iter().zip(&want) {
                            assert!(
                                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                                "{dt:?} {isa:?} {o}x{i} rows {rows}: {a} vs {b}"
                            );
                        }
                        // A row's result does not depend on the other rows of the call.
                        for r in 0..rows {
                            let alone = run_isa(isa, &x[r * i..(r + 1) * i], 1, &lin);
                            assert_eq!(
                                alone[..],
                                got[r * o..(r + 1) * o],
                                "{dt:?} {isa:?} row {r}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fused_jobs_and_bias_match_separate_calls() {
        let (rows, i) = (3, 70);
        let x: Vec<f32> = (0..rows * i)
            .map(|k| ((k % 7) as f32 - 3.0) / 4.0)
            .collect();
        let mk = |o: usize, s: usize| Linear {
            weight: tensor(
                DType::BF16,
                o,
                i,
                &(0..o * i)
                    .map(|k| (((k + s) % 11) as f32 - 5.0) / 8.0)
                    .collect::<Vec<_>>(),
            ),
            bias: Some(
                HostTensor::from_f32(
                    "b",
                    vec![o],
                    &(0..o).map(|j| j as f32 / 3.0).collect::<Vec<_>>(),
                )
                .unwrap(),
            ),
        };
        let (a, b) = (mk(50, 1), mk(21, 2));
        let mut oa = vec![0f32; rows * 50];
        let mut ob = vec![0f32; rows * 21];
        matmul_many(
            &x,
            rows,
            &mut [
                Job {
                    lin: &a,
                    out: &mut oa,
                },
                Job {
                    lin: &b,
                    out: &mut ob,
                },
            ],
        );
        let mut sa = vec![0f32; rows * 50];
        matmul_many(
            &x,
            rows,
            &mut [Job {
                lin: &a,
                out: &mut sa,
            }],
        );
        assert_eq!(oa, sa);
        let want = naive(&x, rows, &b.weight);
        for r in 0..rows {
            for j in 0..21 {
                assert!((ob[r * 21 + j] - want[r * 21 + j] - j as f32 / 3.0).abs() < 1e-4);
            }
        }
    }
}
