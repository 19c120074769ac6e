/*
 * rear_kernels.h — the structs and constants that the CUDA kernels (kernels/NAME.cu) and the Rust
 * host code (src/backend/cuda) both read. build.rs turns this file into Rust with bindgen
 * ($OUT_DIR/kernel_types.rs, with layout assertions), so a field added here exists on both sides
 * with the same offsets. Plain C types only: the file is compiled by NVRTC (no libc headers) and
 * parsed by libclang.
 *
 * Every kernel receives its parameters as one of these structs, by value.
 */
#ifndef REAR_KERNELS_H
#define REAR_KERNELS_H

/* ---- limits shared by host checks and device code ---------------------------------------- */

/* Contexts one REAR score combines (pref_1 .. pref_n, base). */
#define REAR_MAX_CONTEXTS 8
/* Candidates rear_sample keeps per response row in beam mode (and top-k of sampling). */
#define REAR_MAX_TOPK 64
/* Query heads sharing one KV head that the attention kernel handles in one block. */
#define REAR_MAX_GROUP 16
/* Largest head dimension of the attention and rope kernels. */
#define REAR_MAX_HEAD_DIM 256
/* Threads of one attention block; also the number of keys scored per chunk. */
#define REAR_ATTN_THREADS 128
/* Rows of x one block of the CUDA-core matmul handles (more rows: more blocks in grid.y). */
#define REAR_MM_ROW_TILE 8
/* Output features one block of the CUDA-core matmul computes. */
#define REAR_MM_OUT_TILE 4
/* Threads of one CUDA-core matmul block (they split the input dimension). */
#define REAR_MM_THREADS 256
/* Rows and output features of one block of the tensor-core (mma.sync) matmul. */
#define REAR_MMA_ROW_TILE 32
#define REAR_MMA_OUT_TILE 16
/* Warps of one tensor-core matmul block (they split the input dimension). */
#define REAR_MMA_WARPS 8
/* Threads of one rear_sample block (one block per response row). */
#define REAR_SAMPLE_THREADS 512

/* rear_sample modes. */
#define REAR_MODE_ARGMAX 0
#define REAR_MODE_TOPK 1
#define REAR_MODE_SAMPLE 2

/* REAR mixtures (src/rear.rs Mixture). */
#define REAR_MIX_SINGLE 0
#define REAR_MIX_GUIDED 1
#define REAR_MIX_WEIGHTED 2

/* Matmul input transforms. */
#define REAR_ACT_NONE 0
/* x is [rows, 2*in] = [gate | up]; the matmul reads silu(gate) * up (SwiGLU fused). */
#define REAR_ACT_SWIGLU 1

/* ---- parameter structs -------------------------------------------------------------------- */

/* embedding_<dtype>: out[r, :] = table[tokens[r], :] (as f32). */
typedef struct RearEmbedParams {
    unsigned int rows;
    unsigned int width;
} RearEmbedParams;

/* rmsnorm_f32 / rmsnorm_add_f32 / rmsnorm_gather_f32:
 * out[r] = weight * x[src(r)] / sqrt(mean(x[src(r)]^2) + eps); with add: x[r] += y[r] first. */
typedef struct RearNormParams {
    unsigned int rows;
    unsigned int width;
    float eps;
    unsigned int pad;
} RearNormParams;

/* Elementwise kernels (add_f32, swiglu_f32, fill_f32). */
typedef struct RearEltParams {
    unsigned long long n;
    float value;
    unsigned int width; /* swiglu: inner width of gate|up rows */
} RearEltParams;

/* matmul_<wdtype> and matmul_mma_<wdtype>: out[r, j] = sum_i x'[r, i] W[j, i] (+ bias[j]),
 * W row-major [out, in] as stored; x f32 with row stride x_stride (floats); x' = x or SwiGLU. */
typedef struct RearMatmulParams {
    unsigned int rows;
    unsigned int in_features;
    unsigned int out_features;
    unsigned int x_stride;
    unsigned int out_stride;
    unsigned int has_bias;
    unsigned int act;
    /* 1: 16-byte vector loads are valid (in_features a multiple of 8 elements / 4 for f32). */
    unsigned int vec;
} RearMatmulParams;

/* The paged KV pool: one f32 buffer, block b, layer l, plane p (0 = K, 1 = V), slot s,
 * kv head h, element i at
 *   b*block_stride + l*layer_stride + p*plane_stride + s*kv_dim + h*head_dim + i
 * with plane_stride = block_size*kv_dim, layer_stride = 2*plane_stride,
 * block_stride = num_layers*layer_stride. Block tables: tables[seq*table_stride + j]. */
typedef struct RearKvLayout {
    unsigned long long block_stride;
    unsigned long long layer_offset; /* l * layer_stride of the layer being run */
    unsigned int plane_stride;
    unsigned int block_size;
    unsigned int table_stride;
    unsigned int kv_dim;
} RearKvLayout;

/* rope_qk_cache_f32: per row, optional q/k RMSNorm over each head, RoPE of q and k (rotate-half
 * pairs (i, i + d/2), angle = inv_freq[i] * position), K and V written to the row's cache slot.
 * qkv rows are [q (heads*d) | k (kv_heads*d) | v (kv_heads*d)]; q is rotated in place. */
typedef struct RearRopeParams {
    unsigned int rows;
    unsigned int heads;
    unsigned int kv_heads;
    unsigned int head_dim;
    unsigned int qkv_stride;
    unsigned int has_qk_norm;
    float eps;
    float attn_scale;       /* factor on cos and sin (YaRN attention factor; 1 otherwise) */
    RearKvLayout kv;
} RearRopeParams;

/* attention_f32: for row r (position pos of sequence seq) and head h, softmax over the keys
 * start..=pos of scale * q.k, times V; start = pos + 1 - window when window > 0 (else 0).
 * Reads q from the qkv rows, writes out [rows, heads*d]. */
typedef struct RearAttnParams {
    unsigned int rows;
    unsigned int heads;
    unsigned int kv_heads;
    unsigned int head_dim;
    unsigned int q_stride;
    unsigned int out_stride;
    unsigned int window;
    float scale;
    RearKvLayout kv;
} RearAttnParams;

/* kv_copy_blocks_f32: whole blocks (every layer, K and V) src -> dst. */
typedef struct RearCopyParams {
    unsigned long long block_stride;
    unsigned int pairs;
    unsigned int pad;
} RearCopyParams;

/* rear_sample_f32: one block per response row (hypothesis). Its K context rows of logits are
 * logits[(row*contexts + k) * vocab ...] (the engine's order: each hypothesis's contexts in
 * mixture order). */
typedef struct RearSampleParams {
    unsigned int rows;      /* response rows (hypotheses) */
    unsigned int contexts;  /* K */
    unsigned int vocab;
    unsigned int mode;      /* REAR_MODE_* */
    unsigned int mixture;   /* REAR_MIX_* */
    unsigned int top_k;     /* sampling top-k (0 = all); TOPK mode: candidates per row */
    float temperature;      /* sampling: T (<= 0: argmax) */
    float top_p;            /* sampling: nucleus (1 = all) */
    /* sample from context 0's log-probs instead of the REAR score (best-of-N) */
    unsigned int sample_context0;
    unsigned int pad;
    unsigned long long seed;
    /* Guided: lambdas[0..contexts-1] (base is the last context); Weighted: weights[0..contexts]. */
    float weights[REAR_MAX_CONTEXTS];
} RearSampleParams;

/* Per response row input of rear_sample. */
typedef struct RearSampleRow {
    float cum_score;          /* S(prefix), added to every candidate in TOPK mode */
    unsigned int group;       /* its logits: rows [group*contexts, (group+1)*contexts) */
    unsigned long long stream; /* Philox stream (the hypothesis's) */
    unsigned long long step;   /* Philox step (tokens generated so far) */
} RearSampleRow;

/* One candidate next token of a response row. */
typedef struct RearCandidate {
    unsigned int token;
    unsigned int row;
    float total;                        /* cum_score + score */
    float score;                        /* s_t(token) */
    float logprobs[REAR_MAX_CONTEXTS];  /* log pi(token | context k) */
} RearCandidate;

#endif /* REAR_KERNELS_H */
