//! Build script of the CUDA backend's device side.
//!
//! 1. bindgen turns `kernels/rear_kernels.h` (the structs host and device share) into
//!    `$OUT_DIR/kernel_types.rs`, with bindgen's layout assertions. Without libclang the committed
//!    snapshot `kernels/rear_kernels.snapshot.rs` is used instead (cargo warning), unless
//!    `REAR_REQUIRE_KERNELS=1`. `REAR_UPDATE_SNAPSHOT=1` rewrites the snapshot from bindgen.
//! 2. When NVRTC is found, every `kernels/*.cu` is compiled to cubin for sm_80 and sm_90 and to PTX
//!    for compute_80; `$OUT_DIR/kernels_embedded.rs` embeds them (include_bytes). A kernel compile
//!    error fails the build and prints NVRTC's log. Without NVRTC the crate builds with a cargo
//!    warning ("CUDA kernels not embedded") and the CUDA backend reports that at run time, unless
//!    `REAR_REQUIRE_KERNELS=1`, which makes a missing NVRTC an error (CI sets it).
//!
//! NVRTC is looked for, in order: `REAR_NVRTC_LIB` (the library file or its directory; `off`
//! builds without kernels),
//! `CUDA_PATH` / `CUDA_HOME` (lib64, lib, targets/*/lib), the `nvidia/cuda_nvrtc/lib` (CUDA 12
//! wheel) and `nvidia/cu13/lib` directories of Python's site-packages, /usr/local/cuda, the
//! system library directories, then the dynamic loader's own search. CUDA 12 libraries are
//! preferred over CUDA 13 in every directory (their cubins and PTX run on more drivers).
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

/// (NVRTC --gpu-arch, output kind, file suffix)
const TARGETS: &[(&str, Output, &str)] = &[
    ("sm_80", Output::Cubin, "sm80.cubin"),
    ("sm_90", Output::Cubin, "sm90.cubin"),
    ("compute_80", Output::Ptx, "compute80.ptx"),
];

#[derive(Clone, Copy, PartialEq)]
enum Output {
    Cubin,
    Ptx,
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in [
        "REAR_NVRTC_LIB",
        "CUDA_PATH",
        "CUDA_HOME",
        "REAR_REQUIRE_KERNELS",
        "REAR_UPDATE_SNAPSHOT",
        "REAR_KERNEL_VERBOSE",
        "REAR_KERNEL_CACHE",
        "LIBCLANG_PATH",
        "VIRTUAL_ENV",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let require = std::env::var("REAR_REQUIRE_KERNELS").is_ok_and(|v| v == "1");

    kernel_types(&kernels, &out, require);

    let sources = kernel_sources(&kernels);
    let embedded = match find_nvrtc() {
        Ok(nvrtc) => {
            let modules = compile_cached(&nvrtc, &kernels, &sources, &out);
            Some((nvrtc.describe(), modules))
        }
        Err(why) => {
            if require {
                panic!(
                    "REAR_REQUIRE_KERNELS=1 but NVRTC was not found ({why}). Install it, e.g. \
                     `pip install nvidia-cuda-nvrtc-cu12`, or point REAR_NVRTC_LIB at libnvrtc.so."
                );
            }
            println!(
                "cargo:warning=CUDA kernels not embedded: NVRTC not found ({why}); the CUDA \
                 backend will be unavailable. `pip install nvidia-cuda-nvrtc-cu12` or set \
                 REAR_NVRTC_LIB to embed them."
            );
            None
        }
    };
    write_embedded(&out, &sources, embedded);
}

// ---------------------------------------------------------------------------------------------
// bindgen

fn kernel_types(kernels: &Path, out: &Path, require: bool) {
    let header = kernels.join("rear_kernels.h");
    let snapshot = kernels.join("rear_kernels.snapshot.rs");
    let dst = out.join("kernel_types.rs");
    let generated = std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header(header.to_string_lossy())
            .allowlist_type("Rear.*")
            .allowlist_var("REAR_.*")
            .derive_default(true)
            .derive_copy(true)
            .derive_debug(true)
            .layout_tests(true)
            .generate_comments(true)
            .use_core()
            .generate()
    });
    match generated {
        Ok(Ok(b)) => {
            let text = b.to_string();
            std::fs::write(&dst, &text).expect("write kernel_types.rs");
            let old = std::fs::read_to_string(&snapshot).unwrap_or_default();
            let squash = |s: &str| s.split_whitespace().collect::<String>();
            if squash(&old) != squash(&text) {
                if std::env::var("REAR_UPDATE_SNAPSHOT").is_ok_and(|v| v == "1") {
                    std::fs::write(&snapshot, &text).expect("write snapshot");
                } else {
                    println!(
                        "cargo:warning=kernels/rear_kernels.snapshot.rs differs from bindgen's \
                         output for kernels/rear_kernels.h; rebuild with REAR_UPDATE_SNAPSHOT=1 \
                         and commit it"
                    );
                }
            }
        }
        other => {
            let why = match other {
                Ok(Err(e)) => format!("bindgen failed: {e}"),
                Err(_) => "bindgen panicked (libclang missing? `apt-get install libclang-dev` \
                           or set LIBCLANG_PATH)"
                    .to_string(),
                Ok(Ok(_)) => unreachable!(),
            };
            if require {
                panic!("REAR_REQUIRE_KERNELS=1: {why}");
            }
            println!(
                "cargo:warning=kernel structs taken from kernels/rear_kernels.snapshot.rs: {why}"
            );
            std::fs::copy(&snapshot, &dst).expect("copy kernels/rear_kernels.snapshot.rs");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NVRTC

type NvrtcProgram = *mut std::ffi::c_void;
type NvrtcResult = c_int;

struct Nvrtc {
    _lib: libloading::Library,
    path: String,
    version: (c_int, c_int),
    create: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    ptx_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> NvrtcResult,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
}

// The function pointers are plain C entry points of a thread-safe library.
unsafe impl Sync for Nvrtc {}

impl Nvrtc {
    fn load(path: &str) -> Result<Nvrtc, String> {
        // SAFETY: loading NVRTC runs its initialisers only; the symbols are looked up with the
        // signatures of nvrtc.h (CUDA 11.8 – 13.x).
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| format!("{path}: {e}"))?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name)
                        .map_err(|e| format!("{path}: {}: {e}", String::from_utf8_lossy($name)))?
                };
            }
            let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult =
                sym!(b"nvrtcVersion");
            let mut version = (0, 0);
            if version_fn(&mut version.0, &mut version.1) != 0 {
                return Err(format!("{path}: nvrtcVersion failed"));
            }
            Ok(Nvrtc {
                create: sym!(b"nvrtcCreateProgram"),
                compile: sym!(b"nvrtcCompileProgram"),
                log_size: sym!(b"nvrtcGetProgramLogSize"),
                log: sym!(b"nvrtcGetProgramLog"),
                ptx_size: sym!(b"nvrtcGetPTXSize"),
                ptx: sym!(b"nvrtcGetPTX"),
                cubin_size: sym!(b"nvrtcGetCUBINSize"),
                cubin: sym!(b"nvrtcGetCUBIN"),
                destroy: sym!(b"nvrtcDestroyProgram"),
                error_string: sym!(b"nvrtcGetErrorString"),
                path: path.to_owned(),
                version,
                _lib: lib,
            })
        }
    }

    fn describe(&self) -> String {
        format!(
            "NVRTC {}.{} ({})",
            self.version.0, self.version.1, self.path
        )
    }

    fn err(&self, r: NvrtcResult) -> String {
        // SAFETY: nvrtcGetErrorString returns a static string for any code.
        unsafe {
            let p = (self.error_string)(r);
            if p.is_null() {
                format!("NVRTC error {r}")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    /// Compiles one translation unit; Ok(binary) or Err(log).
    fn compile_one(
        &self,
        src: &str,
        name: &str,
        arch: &str,
        kind: Output,
        include: &Path,
    ) -> Result<(Vec<u8>, String), String> {
        let c_src = CString::new(src).map_err(|_| format!("{name}: NUL byte in source"))?;
        let c_name = CString::new(name).unwrap();
        let opts: Vec<CString> = [
            format!("--gpu-architecture={arch}"),
            format!("--include-path={}", include.display()),
        ]
        .into_iter()
        .chain(OPTIONS.iter().map(|s| s.to_string()))
        .map(|s| CString::new(s).unwrap())
        .collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: every pointer passed lives until the call returns; the program is destroyed on
        // every path.
        unsafe {
            let mut prog: NvrtcProgram = std::ptr::null_mut();
            let r = (self.create)(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            if r != 0 {
                return Err(format!("{name}: nvrtcCreateProgram: {}", self.err(r)));
            }
            let r = (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut log_len = 0usize;
            (self.log_size)(prog, &mut log_len);
            let mut log = vec![0u8; log_len.max(1)];
            (self.log)(prog, log.as_mut_ptr() as *mut c_char);
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .trim()
                .to_string();
            if r != 0 {
                (self.destroy)(&mut prog);
                return Err(format!("{name} ({arch}): {}\n{log}", self.err(r)));
            }
            let (size_fn, get_fn) = match kind {
                Output::Cubin => (self.cubin_size, self.cubin),
                Output::Ptx => (self.ptx_size, self.ptx),
            };
            let mut n = 0usize;
            let r = size_fn(prog, &mut n);
            if r != 0 {
                (self.destroy)(&mut prog);
                return Err(format!(
                    "{name} ({arch}): getting the output size: {}",
                    self.err(r)
                ));
            }
            let mut bin = vec![0u8; n];
            let r = get_fn(prog, bin.as_mut_ptr() as *mut c_char);
            (self.destroy)(&mut prog);
            if r != 0 {
                return Err(format!(
                    "{name} ({arch}): getting the output: {}",
                    self.err(r)
                ));
            }
            if kind == Output::Ptx {
                // Keep exactly one trailing NUL (the driver reads PTX as a C string).
                while bin.last() == Some(&0) {
                    bin.pop();
                }
                bin.push(0);
            }
            Ok((bin, log))
        }
    }
}

/// Directories of Python's site-packages (any interpreter named python3 / python on PATH, and a
/// virtualenv if one is active).
fn python_site_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        if let Ok(rd) = std::fs::read_dir(Path::new(&v).join("lib")) {
            for e in rd.flatten() {
                dirs.push(e.path().join("site-packages"));
            }
        }
    }
    let code = "import site, sys\nfor p in site.getsitepackages() + [site.getusersitepackages()] + sys.path: print(p)";
    for py in ["python3", "python"] {
        if let Ok(o) = std::process::Command::new(py).arg("-c").arg(code).output() {
            if o.status.success() {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    let p = PathBuf::from(line.trim());
                    if !line.trim().is_empty() && !dirs.contains(&p) {
                        dirs.push(p);
                    }
                }
                break;
            }
        }
    }
    dirs
}

fn find_nvrtc() -> Result<Nvrtc, String> {
    if std::env::var("REAR_NVRTC_LIB").is_ok_and(|v| v == "off") {
        return Err("REAR_NVRTC_LIB=off".into());
    }
    const NAMES: &[&str] = &[
        "libnvrtc.so.12",
        "libnvrtc.so.13",
        "libnvrtc.so",
        "nvrtc64_120_0.dll",
    ];
    let mut tried: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut try_file = |p: &Path, tried: &mut Vec<String>| -> Option<Nvrtc> {
        let s = p.to_string_lossy().into_owned();
        if tried.contains(&s) {
            return None;
        }
        tried.push(s.clone());
        if !p.is_file() && p.components().count() > 1 {
            return None;
        }
        match Nvrtc::load(&s) {
            Ok(n) => Some(n),
            Err(e) => {
                errors.push(e);
                None
            }
        }
    };
    let in_dir = |d: &Path| -> Vec<PathBuf> { NAMES.iter().map(|n| d.join(n)).collect() };

    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("REAR_NVRTC_LIB") {
        let p = PathBuf::from(&v);
        if p.is_dir() {
            candidates.extend(in_dir(&p));
        } else {
            candidates.push(p);
        }
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Ok(v) = std::env::var(var) {
            let root = PathBuf::from(v);
            for sub in [
                "lib64",
                "lib",
                "targets/x86_64-linux/lib",
                "targets/sbsa-linux/lib",
            ] {
                candidates.extend(in_dir(&root.join(sub)));
            }
        }
    }
    let sites = python_site_dirs();
    for sub in ["nvidia/cuda_nvrtc/lib", "nvidia/cu13/lib"] {
        for s in &sites {
            candidates.extend(in_dir(&s.join(sub)));
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        candidates.extend(in_dir(Path::new(d)));
    }
    for c in &candidates {
        if let Some(n) = try_file(c, &mut tried) {
            return Ok(n);
        }
    }
    // Last: the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache).
    for n in NAMES {
        if let Ok(l) = Nvrtc::load(n) {
            return Ok(l);
        }
    }
    if errors.is_empty() {
        Err(
            "no libnvrtc in REAR_NVRTC_LIB, CUDA_PATH, CUDA_HOME, Python's nvidia wheels, \
             /usr/local/cuda or the system library path"
                .into(),
        )
    } else {
        Err(errors.join("; "))
    }
}

fn kernel_sources(kernels: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(kernels)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Compiles every source for every target (two threads); panics with the NVRTC log on error.
/// Returns each module's name and output files (in TARGETS order).
fn compile_all(
    nvrtc: &Nvrtc,
    kernels: &Path,
    sources: &[(String, PathBuf)],
    out: &Path,
) -> Vec<(String, Vec<PathBuf>)> {
    let jobs: Vec<(usize, usize)> = (0..sources.len())
        .flat_map(|s| (0..TARGETS.len()).map(move |t| (s, t)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<(Vec<u8>, String), String>>>> =
        std::sync::Mutex::new(vec![None; jobs.len()]);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs.len() {
                    break;
                }
                let (s, t) = jobs[i];
                let (name, path) = &sources[s];
                let (arch, kind, _) = TARGETS[t];
                let r = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|src| {
                        nvrtc.compile_one(&src, &format!("{name}.cu"), arch, kind, kernels)
                    });
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    let results = results.into_inner().unwrap();
    let verbose = std::env::var("REAR_KERNEL_VERBOSE").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut modules: Vec<(String, Vec<PathBuf>)> = sources
        .iter()
        .map(|(n, _)| (n.clone(), Vec::new()))
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        let (s, t) = jobs[i];
        match r.unwrap() {
            Ok((bin, log)) => {
                if verbose && !log.is_empty() {
                    for l in log.lines() {
                        println!("cargo:warning={}: {l}", sources[s].0);
                    }
                }
                let file = out.join(format!("{}.{}", sources[s].0, TARGETS[t].2));
                std::fs::write(&file, bin).expect("write kernel binary");
                modules[s].1.push(file);
            }
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        eprintln!("CUDA kernel compilation failed with {}:", nvrtc.describe());
        for f in &failures {
            eprintln!("{f}\n");
        }
        panic!(
            "{} CUDA kernel compilation(s) failed with {} (log above):\n{}",
            failures.len(),
            nvrtc.describe(),
            failures.join("\n")
        );
    }
    modules
}

/// NVRTC options besides the architecture (part of the cache key).
const OPTIONS: &[&str] = &["-std=c++17", "-lineinfo", "-DREAR_NVRTC=1"];

/// The compiled kernels for these exact sources, NVRTC version and options are kept in
/// `REAR_KERNEL_CACHE` (default `~/.cache/rear/kernels/<hash>`), so that other checkouts and
/// target directories on the machine do not compile them again (a cache that cannot be written
/// is skipped).
fn compile_cached(
    nvrtc: &Nvrtc,
    kernels: &Path,
    sources: &[(String, PathBuf)],
    out: &Path,
) -> Vec<(String, Vec<PathBuf>)> {
    // FNV-1a over every file of kernels/ (top level), the NVRTC version, options and targets.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(kernels)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in &files {
        feed(f.file_name().unwrap().to_string_lossy().as_bytes());
        feed(&std::fs::read(f).unwrap_or_default());
    }
    feed(format!("{:?}{:?}", nvrtc.version, OPTIONS).as_bytes());
    for t in TARGETS {
        feed(t.0.as_bytes());
    }
    let root = std::env::var_os("REAR_KERNEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rear/kernels")));
    let dir = root.map(|r| r.join(format!("{h:016x}")));
    let names = |d: &Path| -> Vec<(String, Vec<PathBuf>)> {
        sources
            .iter()
            .map(|(n, _)| {
                (
                    n.clone(),
                    TARGETS
                        .iter()
                        .map(|t| d.join(format!("{n}.{}", t.2)))
                        .collect(),
                )
            })
            .collect()
    };
    if let Some(d) = &dir {
        let cached = names(d);
        if cached.iter().all(|(_, fs)| fs.iter().all(|f| f.is_file())) {
            let local = names(out);
            for ((_, from), (_, to)) in cached.iter().zip(&local) {
                for (a, b) in from.iter().zip(to) {
                    std::fs::copy(a, b).expect("copy cached kernel");
                }
            }
            return local;
        }
    }
    let modules = compile_all(nvrtc, kernels, sources, out);
    if let Some(d) = &dir {
        if std::fs::create_dir_all(d).is_ok() {
            for (_, files) in &modules {
                for f in files {
                    let _ = std::fs::copy(f, d.join(f.file_name().unwrap()));
                }
            }
        }
    }
    modules
}

fn write_embedded(
    out: &Path,
    sources: &[(String, PathBuf)],
    embedded: Option<(String, Vec<(String, Vec<PathBuf>)>)>,
) {
    let mut s = String::from("// Generated by build.rs.\n");
    match embedded {
        Some((note, modules)) => {
            s += "pub const KERNELS_EMBEDDED: bool = true;\n";
            s += &format!("pub const KERNELS_NOTE: &str = {:?};\n", note);
            s += "pub static MODULES: &[EmbeddedModule] = &[\n";
            for (name, files) in modules {
                let inc = |p: &PathBuf| format!("include_bytes!({:?})", p.to_string_lossy());
                s += &format!(
                    "    EmbeddedModule {{ name: {:?}, sm80: {}, sm90: {}, ptx80: {} }},\n",
                    name,
                    inc(&files[0]),
                    inc(&files[1]),
                    inc(&files[2])
                );
            }
            s += "];\n";
        }
        None => {
            s += "pub const KERNELS_EMBEDDED: bool = false;\n";
            s += "pub const KERNELS_NOTE: &str = \"CUDA kernels were not embedded at build time \
                  (NVRTC not found; see the build warning)\";\n";
            s += "pub static MODULES: &[EmbeddedModule] = &[];\n";
        }
    }
    let names: Vec<String> = sources.iter().map(|(n, _)| format!("{n:?}")).collect();
    s += &format!("pub static SOURCES: &[&str] = &[{}];\n", names.join(", "));
    std::fs::write(out.join("kernels_embedded.rs"), s).expect("write kernels_embedded.rs");
}
