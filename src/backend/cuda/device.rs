//! The device side of the CUDA backend: context and stream, the kernels embedded by build.rs
//! (loaded as cubin for the device's architecture, else as PTX), raw device buffers and the one
//! launch function every kernel wrapper goes through.
//!
//! Memory is managed as raw device pointers (`DevBuf`) rather than through cudarc's typed slices:
//! every kernel runs on the backend's one stream, so no cross-stream event tracking is needed,
//! and a launch costs one `cuLaunchKernel`.
use crate::error::{Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use std::ffi::c_void;
use std::sync::Arc;

/// One kernel family's binaries, as embedded by build.rs.
pub struct EmbeddedModule {
    pub name: &'static str,
    pub sm80: &'static [u8],
    pub sm90: &'static [u8],
    pub ptx80: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/kernels_embedded.rs"));

/// Whether build.rs embedded the kernels (NVRTC was found), and how they were built.
pub fn kernels_embedded() -> (bool, &'static str) {
    (KERNELS_EMBEDDED, KERNELS_NOTE)
}

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// Checks, without panicking, that a CUDA driver and at least one device are present.
pub fn cuda_available() -> std::result::Result<(), String> {
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) found".into());
    }
    result::init().map_err(|e| format!("CUDA driver init failed: {e}"))?;
    let n = result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
    if n == 0 {
        return Err("the CUDA driver reports no device".into());
    }
    Ok(())
}

/// Every kernel the backend launches: (module = kernels/<module>.cu, entry point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum K {
    EmbeddingF32,
    EmbeddingBf16,
    EmbeddingF16,
    RmsNorm,
    RmsNormAdd,
    RmsNormGather,
    Swiglu,
    Add,
    Fill,
    KvCopyBlocks,
    RopeQkCache,
    Attention,
    MatmulF32,
    MatmulBf16,
    MatmulF16,
    MatmulMmaBf16,
    MatmulWarpF32,
    MatmulWarpBf16,
    MatmulWarpF16,
    RearSample,
}

const KERNELS: &[(K, &str, &str)] = &[
    (K::EmbeddingF32, "embedding", "embedding_f32"),
    (K::EmbeddingBf16, "embedding", "embedding_bf16"),
    (K::EmbeddingF16, "embedding", "embedding_f16"),
    (K::RmsNorm, "rmsnorm", "rmsnorm_f32"),
    (K::RmsNormAdd, "rmsnorm", "rmsnorm_add_f32"),
    (K::RmsNormGather, "rmsnorm", "rmsnorm_gather_f32"),
    (K::Swiglu, "activation", "swiglu_f32"),
    (K::Add, "activation", "add_f32"),
    (K::Fill, "kvcache", "fill_f32"),
    (K::KvCopyBlocks, "kvcache", "kv_copy_blocks_f32"),
    (K::RopeQkCache, "rope", "rope_qk_cache_f32"),
    (K::Attention, "attention", "attention_f32"),
    (K::MatmulF32, "matmul", "matmul_f32"),
    (K::MatmulBf16, "matmul", "matmul_bf16"),
    (K::MatmulF16, "matmul", "matmul_f16"),
    (K::MatmulMmaBf16, "matmul", "matmul_mma_bf16"),
    (K::MatmulWarpF32, "matmul", "matmul_warp_f32"),
    (K::MatmulWarpBf16, "matmul", "matmul_warp_bf16"),
    (K::MatmulWarpF16, "matmul", "matmul_warp_f16"),
    (K::RearSample, "rear_sample", "rear_sample_f32"),
];

/// Launch geometry of one kernel call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

/// The context, stream and loaded kernels of one device.
pub(crate) struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    funcs: Vec<CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    pub name: String,
    pub cc: (i32, i32),
    pub ordinal: usize,
    /// Which binaries were loaded ("sm_90 cubin", "compute_80 PTX (JIT)").
    pub image: String,
    /// Synchronise after every launch and name the failing kernel (REAR_CUDA_SYNC=1).
    debug_sync: bool,
    /// A graph capture is in progress on the stream (no synchronisation allowed).
    capturing: std::sync::atomic::AtomicBool,
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Gpu> {
        cuda_available().map_err(Error::Cuda)?;
        if !KERNELS_EMBEDDED {
            return Err(Error::Cuda(format!(
                "{KERNELS_NOTE}; rebuild with NVRTC available (pip install nvidia-cuda-nvrtc-cu12)"
            )));
        }
        let count = result::device::get_count().map_err(|e| cuda_err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda(format!(
                "no CUDA device {ordinal} (the driver reports {count})"
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| cuda_err("creating the CUDA context", e))?;
        // SAFETY: this backend never uses cudarc's typed slices (no cross-stream tracking needed).
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx
            .compute_capability()
            .map_err(|e| cuda_err("reading the compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if cc.0 < 8 {
            return Err(Error::Cuda(format!(
                "{name} has compute capability {}.{}; the CUDA backend needs 8.0 or newer \
                 (bf16 tensor cores)",
                cc.0, cc.1
            )));
        }
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a CUDA stream", e))?;
        let mut modules = Vec::new();
        let mut images = Vec::new();
        for m in MODULES {
            let (module, image) = load_module(&ctx, m, cc)?;
            modules.push((m.name, module));
            images.push(image);
        }
        images.dedup();
        let mut funcs = Vec::with_capacity(KERNELS.len());
        for (i, &(k, module, entry)) in KERNELS.iter().enumerate() {
            debug_assert_eq!(k as usize, i);
            let m = modules
                .iter()
                .find(|(n, _)| *n == module)
                .map(|(_, m)| m)
                .ok_or_else(|| {
                    Error::Cuda(format!(
                        "kernel module `{module}` was not embedded (kernels/{module}.cu)"
                    ))
                })?;
            let f = m
                .load_function(entry)
                .map_err(|e| cuda_err(&format!("loading kernel {entry} from {module}"), e))?;
            funcs.push(f);
        }
        let debug_sync = std::env::var("REAR_CUDA_SYNC").is_ok_and(|v| v == "1");
        Ok(Gpu {
            ctx,
            stream,
            funcs,
            _modules: modules.into_iter().map(|(_, m)| m).collect(),
            name,
            cc,
            ordinal,
            image: images.join(", "),
            debug_sync,
            capturing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes this device's context current on the calling thread.
    #[inline]
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Launches kernel `k`. `args` holds a pointer to each kernel argument, in order.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and type, and every
    /// device pointer among them must be valid for what the kernel reads and writes.
    pub unsafe fn launch(&self, k: K, l: Launch, args: &mut [*mut c_void]) -> Result<()> {
        if l.grid.0 == 0 || l.grid.1 == 0 || l.grid.2 == 0 {
            return Ok(());
        }
        let f = self.funcs[k as usize].cu_function();
        result::launch_kernel(f, l.grid, l.block, l.smem, self.cu_stream(), args)
            .map_err(|e| cuda_err(&format!("launching {} {l:?}", KERNELS[k as usize].2), e))?;
        if self.debug_sync && !self.capturing.load(std::sync::atomic::Ordering::Relaxed) {
            self.stream
                .synchronize()
                .map_err(|e| cuda_err(&format!("kernel {} {l:?}", KERNELS[k as usize].2), e))?;
        }
        Ok(())
    }

    pub fn set_capturing(&self, on: bool) {
        self.capturing
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronising the CUDA stream", e))
    }

    /// Host → device copy on the stream (the host slice may be reused on return).
    pub fn htod<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller's `dst` holds at least `size_of_val(src)` bytes (DevBuf::ensure).
        unsafe { result::memcpy_htod_async(dst, src, self.cu_stream()) }
            .map_err(|e| cuda_err("copying to the device", e))
    }

    /// Device → host copy; waits for the stream.
    pub fn dtoh<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: `src` holds at least `size_of_val(dst)` bytes; the stream is synchronised
        // before `dst` is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.cu_stream()) }
            .map_err(|e| cuda_err("copying from the device", e))?;
        self.sync()
    }

    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both ranges are live device allocations of at least `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }
            .map_err(|e| cuda_err("device-to-device copy", e))
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(|e| cuda_err("cuMemGetInfo", e))
    }
}

fn load_module(
    ctx: &Arc<CudaContext>,
    m: &EmbeddedModule,
    cc: (i32, i32),
) -> Result<(Arc<CudaModule>, String)> {
    use cudarc::nvrtc::Ptx;
    // A cubin runs on its own major architecture at an equal or higher minor version.
    let cubin = match cc.0 {
        8 => Some((m.sm80, "sm_80 cubin")),
        9 => Some((m.sm90, "sm_90 cubin")),
        _ => None,
    };
    let mut cubin_err = None;
    if let Some((bin, what)) = cubin {
        match ctx.load_module(Ptx::from_binary(bin.to_vec())) {
            Ok(module) => return Ok((module, what.to_string())),
            Err(e) => cubin_err = Some(e),
        }
    }
    let text = std::str::from_utf8(m.ptx80)
        .map_err(|_| Error::Cuda(format!("embedded PTX of {} is not text", m.name)))?
        .trim_end_matches('\0')
        .to_string();
    match ctx.load_module(Ptx::from_src(text)) {
        Ok(module) => Ok((module, "compute_80 PTX (JIT)".to_string())),
        Err(e) => Err(Error::Cuda(format!(
            "loading kernels/{}.cu on compute capability {}.{}: PTX: {e}{}",
            m.name,
            cc.0,
            cc.1,
            cubin_err
                .map(|c| format!("; cubin: {c}"))
                .unwrap_or_default()
        ))),
    }
}

/// A raw device allocation, freed on drop. `ptr == 0` when empty.
pub(crate) struct DevBuf {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DevBuf {
    pub fn empty(gpu: &Gpu) -> DevBuf {
        DevBuf {
            ptr: 0,
            bytes: 0,
            ctx: gpu.ctx.clone(),
        }
    }

    pub fn alloc(gpu: &Gpu, bytes: usize) -> Result<DevBuf> {
        let mut b = DevBuf::empty(gpu);
        b.ensure(bytes)?;
        Ok(b)
    }

    /// A new buffer holding `data`.
    pub fn from_slice<T: Copy>(gpu: &Gpu, data: &[T]) -> Result<DevBuf> {
        let b = DevBuf::alloc(gpu, std::mem::size_of_val(data))?;
        gpu.htod(b.ptr, data)?;
        Ok(b)
    }

    #[inline]
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Makes the buffer at least `bytes` long; contents are not preserved when it grows.
    pub fn ensure(&mut self, bytes: usize) -> Result<()> {
        if bytes <= self.bytes {
            return Ok(());
        }
        self.release();
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))?;
        // Round up so that small growth steps do not reallocate every call.
        let want = bytes.next_multiple_of(4096);
        // SAFETY: a plain allocation; freed exactly once in `release`.
        let ptr = unsafe { result::malloc_sync(want) }.map_err(|e| {
            cuda_err(
                &format!("allocating {} MiB of device memory", want >> 20),
                e,
            )
        })?;
        self.ptr = ptr;
        self.bytes = want;
        Ok(())
    }

    fn release(&mut self) {
        if self.ptr != 0 {
            let _ = self.ctx.bind_to_thread();
            // SAFETY: `ptr` came from malloc_sync and is freed once. cuMemFree waits for the
            // work that uses it.
            let _ = unsafe { result::free_sync(self.ptr) };
            self.ptr = 0;
            self.bytes = 0;
        }
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        self.release();
    }
}

/// Builds the argument pointer array of a launch from places (locals, fields).
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {
        [$( (&$a) as *const _ as *mut ::std::ffi::c_void ),*]
    };
}
pub(crate) use kargs;
