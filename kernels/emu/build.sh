#!/usr/bin/env bash
# Builds the kernel emulator: kernels/*.cu compiled for the host (g++, C++20) behind a fake
# libcuda.so, so that the CUDA backend and its tests run without a GPU — slowly, one fiber per
# CUDA thread. It checks indexing, launch geometry, the host/device struct contract and the
# numerics of the kernels against the CPU reference; it says nothing about speed or about
# resource limits of real hardware.
#
#   kernels/emu/build.sh [OUT_DIR]            (default: target/rear-emu)
#   LD_LIBRARY_PATH=target/rear-emu cargo test --test cuda_kernels --test cuda_engine
#
# REAR_EMU_TRACE=1 prints every launch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernels="$(dirname "$here")"
out="${1:-$(dirname "$kernels")/target/rear-emu}"
mkdir -p "$out/units"
objs=()
flags=(-std=c++20 -O2 -g -fPIC -ffp-contract=off -fno-fast-math -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=0 -w)
for cu in "$kernels"/*.cu; do
  name="$(basename "$cu" .cu)"
  unit="$out/units/$name.cpp"
  {
    echo "#include \"$cu\""
    echo "#include <functional>"
    echo "typedef void (*EmuEntry)(void**);"
    echo "typedef std::function<void()> (*EmuBinder)(void**);"
    echo "int emu_register(const char*, EmuEntry, EmuBinder);"
    echo "#include <tuple>"
    echo "#include <type_traits>"
    echo "#include <utility>"
    echo "template <class... A, std::size_t... I> static void emu_call(void (*f)(A...), void** p, std::index_sequence<I...>) { f(*static_cast<std::remove_reference_t<A>*>(p[I])...); }"
    echo "template <class... A> static void emu_call(void (*f)(A...), void** p) { emu_call(f, p, std::index_sequence_for<A...>{}); }"
    echo "template <class... A, std::size_t... I> static std::function<void()> emu_bind(void (*f)(A...), void** p, std::index_sequence<I...>) { auto t = std::make_tuple(std::remove_cvref_t<A>(*static_cast<std::remove_reference_t<A>*>(p[I]))...); return [f, t]() { std::apply(f, t); }; }"
    echo "template <class... A> static std::function<void()> emu_bind(void (*f)(A...), void** p) { return emu_bind(f, p, std::index_sequence_for<A...>{}); }"
    python3 - "$cu" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
for name in re.findall(r'extern "C" __global__ void(?:\s+__launch_bounds__\([^)]*\))?\s+(\w+)\s*\(', src):
    print(f'static int reg_{name} = emu_register("{name}", [](void** p) {{ emu_call(&{name}, p); }}, [](void** p) {{ return emu_bind(&{name}, p); }});')
EOF
  } > "$unit"
  g++ "${flags[@]}" -include "$here/emu.h" -I "$kernels" -c "$unit" -o "$out/units/$name.o"
  objs+=("$out/units/$name.o")
done
g++ "${flags[@]}" -I "$kernels" -c "$here/emu_runtime.cpp" -o "$out/units/emu_runtime.o"
g++ -shared -o "$out/libcuda.so" "${objs[@]}" "$out/units/emu_runtime.o"
echo "$out/libcuda.so"
