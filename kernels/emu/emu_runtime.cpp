// The emulator's runtime: a fiber scheduler that runs one block at a time, and a fake
// libcuda.so implementing the driver-API calls cudarc makes for the rear CUDA backend (device
// pointers are host pointers; modules are ignored and functions are looked up by name among
// the emulated kernels). See emu.h and build.sh.
#include "emu.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

// ---- kernel registry (filled by the generated units) ---------------------------------------------

typedef void (*EmuEntry)(void**);
typedef std::function<void()> (*EmuBinder)(void**);
struct EmuKernel {
    EmuEntry run;    // runs with the launch's argument pointers
    EmuBinder bind;  // copies the arguments (graph capture) into a closure
};
static std::map<std::string, EmuKernel>& registry() {
    static std::map<std::string, EmuKernel> r;
    return r;
}
int emu_register(const char* name, EmuEntry e, EmuBinder b) {
    registry()[name] = EmuKernel{e, b};
    return 0;
}

// ---- fibers -----------------------------------------------------------------------------------------

enum { RUNNABLE = 0, AT_BLOCK = 1, AT_WARP = 2, DONE = 3 };
struct Fiber {
    ucontext_t uc;
    jmp_buf jb;
    int state;
    bool started;
};
static const size_t STACK = 256 * 1024;
static std::vector<Fiber> fibers;
static std::vector<char*> stacks;
static jmp_buf sched_jb;
static ucontext_t sched_uc;
static unsigned cur;
static const std::function<void()>* cur_fn;
static unsigned n_threads, n_warps, live, at_block;
static std::vector<unsigned> warp_live, warp_at;
static std::vector<unsigned char> warp_slots;  // n_warps × 32 × 64 bytes

unsigned emu_lane() { return cur & 31; }
unsigned char* emu_warp_slot(unsigned lane) { return &warp_slots[((cur >> 5) * 32 + lane) * 64]; }

static void yield_to_scheduler() {
    if (!_setjmp(fibers[cur].jb)) _longjmp(sched_jb, 1);
}

void __syncthreads() {
    fibers[cur].state = AT_BLOCK;
    at_block++;
    yield_to_scheduler();
}

void emu_warp_sync() {
    fibers[cur].state = AT_WARP;
    warp_at[cur >> 5]++;
    yield_to_scheduler();
}

static void fiber_start() {
    (*cur_fn)();
    fibers[cur].state = DONE;
    live--;
    warp_live[cur >> 5]--;
    _longjmp(sched_jb, 1);
}

static void set_thread_idx(unsigned i) {
    cur = i;
    threadIdx.x = i % blockDim.x;
    threadIdx.y = (i / blockDim.x) % blockDim.y;
    threadIdx.z = i / (blockDim.x * blockDim.y);
}

static void run_block() {
    while (stacks.size() < n_threads) stacks.push_back((char*)malloc(STACK));
    fibers.assign(n_threads, Fiber{});
    live = n_threads;
    at_block = 0;
    warp_live.assign(n_warps, 0);
    warp_at.assign(n_warps, 0);
    for (unsigned i = 0; i < n_threads; i++) warp_live[i >> 5]++;
    for (;;) {
        bool ran = false;
        for (unsigned i = 0; i < n_threads; i++) {
            if (fibers[i].state != RUNNABLE) continue;
            ran = true;
            set_thread_idx(i);
            if (!_setjmp(sched_jb)) {
                if (!fibers[i].started) {
                    fibers[i].started = true;
                    getcontext(&fibers[i].uc);
                    fibers[i].uc.uc_stack.ss_sp = stacks[i];
                    fibers[i].uc.uc_stack.ss_size = STACK;
                    fibers[i].uc.uc_link = nullptr;
                    makecontext(&fibers[i].uc, fiber_start, 0);
                    swapcontext(&sched_uc, &fibers[i].uc);
                } else {
                    _longjmp(fibers[i].jb, 1);
                }
            }
        }
        if (live == 0) return;
        bool released = false;
        for (unsigned w = 0; w < n_warps; w++) {
            if (warp_at[w] > 0 && warp_at[w] == warp_live[w]) {
                for (unsigned i = w * 32; i < std::min(n_threads, w * 32 + 32); i++)
                    if (fibers[i].state == AT_WARP) fibers[i].state = RUNNABLE;
                warp_at[w] = 0;
                released = true;
            }
        }
        if (at_block > 0 && at_block == live) {
            for (unsigned i = 0; i < n_threads; i++)
                if (fibers[i].state == AT_BLOCK) fibers[i].state = RUNNABLE;
            at_block = 0;
            released = true;
        }
        if (!ran && !released) {
            fprintf(stderr, "rear-emu: deadlock in block (%u,%u,%u): %u live, %u at __syncthreads\n", blockIdx.x,
                    blockIdx.y, blockIdx.z, live, at_block);
            abort();
        }
    }
}

// ---- mma.sync m16n8k16 bf16 (PTX ISA fragment layouts) -----------------------------------------------

struct MmaLane {
    unsigned a[4], b[2];
};

static float bf16_lo(unsigned r) { return __uint_as_float(r << 16); }
static float bf16_hi(unsigned r) { return __uint_as_float(r & 0xffff0000u); }

void emu_mma_bf16_16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
    const unsigned lane = emu_lane();
    MmaLane me = {{a[0], a[1], a[2], a[3]}, {b0, b1}};
    memcpy(emu_warp_slot(lane), &me, sizeof me);
    emu_warp_sync();
    // A (16x16, row): element (row, k) is in lane (row % 8) * 4 + (k % 8) / 2,
    //   register (row / 8) + 2 * (k / 8), half k % 2.
    // B (16x8, col): element (k, n) is in lane n * 4 + (k % 8) / 2, register k / 8, half k % 2.
    // C (16x8): lane holds (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1); g = lane / 4, t = lane % 4.
    auto A = [&](unsigned row, unsigned k) {
        MmaLane l;
        memcpy(&l, emu_warp_slot((row % 8) * 4 + (k % 8) / 2), sizeof l);
        const unsigned r = l.a[(row / 8) + 2 * (k / 8)];
        return k % 2 ? bf16_hi(r) : bf16_lo(r);
    };
    auto B = [&](unsigned k, unsigned n) {
        MmaLane l;
        memcpy(&l, emu_warp_slot(n * 4 + (k % 8) / 2), sizeof l);
        const unsigned r = l.b[k / 8];
        return k % 2 ? bf16_hi(r) : bf16_lo(r);
    };
    const unsigned g = lane / 4, t = lane % 4;
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    float out[4];
    for (int e = 0; e < 4; e++) {
        float s = d[e];
        for (unsigned k = 0; k < 16; k++) s += A(rows[e], k) * B(k, cols[e]);
        out[e] = s;
    }
    emu_warp_sync();
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

float emu_f16_to_f32(unsigned short h) {
    const unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}

// ---- the fake driver API --------------------------------------------------------------------------

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
};
struct Node {
    std::function<void()> fn;
    dim3 grid, block;
    const EmuKernel* k;
};
typedef std::vector<Node> Graph;
static Graph* capture = nullptr;
enum { CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900 };
static int dummy_ctx, dummy_stream, dummy_module;
static thread_local void* current_ctx = nullptr;
static std::map<void*, size_t> allocations;
// Tests run on several threads: one launch or allocation at a time.
static std::recursive_mutex mu;

static bool trace() {
    static int t = getenv("REAR_EMU_TRACE") ? 1 : 0;
    return t;
}

extern "C" {
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 12080;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice) {
    switch (attrib) {
        case 75: *v = getenv("REAR_EMU_CC_MAJOR") ? atoi(getenv("REAR_EMU_CC_MAJOR")) : 9; break;
        case 76: *v = 0; break;
        case 16: *v = 4; break;
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "rear-emu (host emulation of kernels/*.cu)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) {
    *b = (size_t)16 << 30;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &dummy_ctx;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void* c) {
    current_ctx = c;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(void** c) {
    *c = current_ctx;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
CUresult cuStreamCreate(void** s, unsigned) {
    *s = &dummy_stream;
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(void*) { return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(void*) { return capture ? 900 : CUDA_SUCCESS; }
CUresult cuModuleLoadData(void** m, const void*) {
    *m = &dummy_module;
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(void*) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    auto it = registry().find(name);
    if (it == registry().end()) {
        fprintf(stderr, "rear-emu: no emulated kernel `%s`\n", name);
        return CUDA_ERROR_NOT_FOUND;
    }
    *f = (void*)&it->second;
    return CUDA_SUCCESS;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (capture) return 900;  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    void* m = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(m, 0xff, n);  // NaN in every f32: reads of unwritten memory show up
    allocations[m] = n;
    *p = (CUdeviceptr)m;
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    auto it = allocations.find((void*)p);
    if (it == allocations.end()) {
        fprintf(stderr, "rear-emu: cuMemFree of unknown pointer %llx\n", p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    allocations.erase(it);
    free((void*)p);
    return CUDA_SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t* fr, size_t* total) {
    *fr = (size_t)15 << 30;
    *total = (size_t)16 << 30;
    return CUDA_SUCCESS;
}
static bool in_alloc(CUdeviceptr p, size_t n) {
    auto it = allocations.upper_bound((void*)p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= (CUdeviceptr)it->first && p + n <= (CUdeviceptr)it->first + it->second;
}
static CUresult copy(void* d, const void* s, size_t n, const char* what, CUdeviceptr dev) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (capture) {
        fprintf(stderr, "rear-emu: %s copy during graph capture\n", what);
        return 900;  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    }
    if (n && !in_alloc(dev, n)) {
        fprintf(stderr, "rear-emu: %s of %zu bytes outside any allocation (%llx)\n", what, n, dev);
        return CUDA_ERROR_INVALID_VALUE;
    }
    memmove(d, s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { return copy((void*)d, s, n, "HtoD", d); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { return copy((void*)d, s, n, "HtoD", d); }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { return copy(d, (void*)s, n, "DtoH", s); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { return copy(d, (void*)s, n, "DtoH", s); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) {
    if (n && !in_alloc(s, n)) return copy((void*)d, (void*)s, n, "DtoD source", s);
    return copy((void*)d, (void*)s, n, "DtoD", d);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return cuMemcpyDtoDAsync_v2(d, s, n, nullptr); }


static const char* kernel_name(const EmuKernel* k) {
    for (auto& kv : registry())
        if (&kv.second == k) return kv.first.c_str();
    return "?";
}

static void run_node(const Node& n) {
    blockDim = n.block;
    gridDim = n.grid;
    n_threads = n.block.x * n.block.y * n.block.z;
    n_warps = (n_threads + 31) / 32;
    warp_slots.assign((size_t)n_warps * 32 * 64, 0);
    cur_fn = &n.fn;
    if (trace())
        fprintf(stderr, "rear-emu: %s grid (%u,%u,%u) block %u\n", kernel_name(n.k), n.grid.x, n.grid.y, n.grid.z, n_threads);
    for (unsigned z = 0; z < n.grid.z; z++)
        for (unsigned y = 0; y < n.grid.y; y++)
            for (unsigned x = 0; x < n.grid.x; x++) {
                blockIdx = {x, y, z};
                run_block();
            }
}

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void*, void** params, void**) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (bx * by * bz > 1024 || bx * by * bz == 0 || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
    if (smem > 0) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;  // no kernel uses dynamic shared memory
    const EmuKernel* k = (const EmuKernel*)f;
    if (capture) {
        capture->push_back(Node{k->bind(params), {gx, gy, gz}, {bx, by, bz}, k});
        return CUDA_SUCCESS;
    }
    run_node(Node{[&] { k->run(params); }, {gx, gy, gz}, {bx, by, bz}, k});
    return CUDA_SUCCESS;
}
CUresult cuStreamBeginCapture_v2(void*, int) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (capture) return CUDA_ERROR_INVALID_VALUE;
    capture = new Graph();
    return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(void*, void** g) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (!capture) return CUDA_ERROR_INVALID_VALUE;
    *g = capture;
    capture = nullptr;
    return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(void** e, void* g, unsigned long long) {
    *e = new Graph(*(Graph*)g);
    return CUDA_SUCCESS;
}
CUresult cuGraphDestroy(void* g) {
    delete (Graph*)g;
    return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(void* e) {
    delete (Graph*)e;
    return CUDA_SUCCESS;
}
CUresult cuGraphLaunch(void* e, void*) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    for (const Node& n : *(Graph*)e) run_node(n);
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(int e, const char** s) {
    static char buf[64];
    snprintf(buf, sizeof buf, "rear-emu error %d", e);
    *s = buf;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(int e, const char** s) { return cuGetErrorString(e, s); }
}
