#!/usr/bin/env bash
# An AArch64 (ARM64) Python under qemu-user on an x86-64 Debian/Ubuntu machine, with the aarch64 wheels intvit's
# runtime imports, so that modules compiled here with `intvit compile --cpu neoverse-n1` (or any ARM64 CPU) can be
# loaded and run by intvit.runtime exactly as on an ARM machine. Correctness only: emulated timings mean nothing.
#
#   bash bench/aarch64_emulator.sh [DIR]          # DIR defaults to ~/.cache/intvit-aarch64 (about 1.5 GB)
#   export INTVIT_AARCH64_PYTHON="$DIR/python"    # then: pytest tests/test_tvm_arm64.py
#
# Needs root for apt-get (qemu-user, the cross compilers gcc/g++-aarch64-linux-gnu, Debian's arm64 python3.11 packages)
# and reaches only the package registries (Debian, PyPI). The emulated CPU reports itself as a Neoverse N1
# (AWS Graviton2: NEON + dot product, no i8mm) through a /proc/cpuinfo in the sysroot, which qemu-user reads in
# place of the host's. A program the emulated Python starts (the linker TVM calls) runs natively, so the wrapper
# names the cross compiler as its C++ compiler (CXX): what g++ is on an ARM machine.
set -euo pipefail
DIR=${1:-$HOME/.cache/intvit-aarch64}
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$DIR/sysroot
mkdir -p "$ROOT/site" "$DIR/debs" "$DIR/wheels" "$DIR/pkg"

if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu >/dev/null
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
fi
(cd "$DIR/debs" && for p in python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g \
        libffi8 libssl3 libbz2-1.0 liblzma5 libstdc++6 libgcc-s1 libsqlite3-0 libncursesw6 libtinfo6 libuuid1 \
        libgomp1; do
    ls "${p}"_*_arm64.deb >/dev/null 2>&1 || apt-get download "$p:arm64" >/dev/null
done)
for d in "$DIR"/debs/*.deb; do dpkg-deb -x "$d" "$ROOT"; done

# intvit's pinned dependencies for aarch64, resolved by pip for that platform — except torch: PyPI's aarch64
# torch 2.14.1 is a CUDA build that will not import without CUDA's libraries, so torch 2.7.1 (PyPI's last
# CPU-only aarch64 wheel line) stands in for it (intvit's runtime only imports torch; the demo runs on it too).
PIP="python3 -m pip"
$HERE/.venv/bin/python -m pip --version >/dev/null 2>&1 && PIP="$HERE/.venv/bin/python -m pip"
AARCH64="--only-binary=:all: --python-version 3.11 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
         --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64"
$PIP download -q $AARCH64 -d "$DIR/wheels" apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 \
    onnx==1.23.2 onnxruntime==1.31.1 safetensors==0.8.0 tqdm==4.70.1 pillow==13.0.0 transformers==5.23.0 \
    matplotlib==3.10.7 sympy networkx jinja2 filelock fsspec
$PIP download -q $AARCH64 --no-deps -d "$DIR/wheels" torch==2.7.1
for w in "$DIR"/wheels/*.whl; do python3 -m zipfile -e "$w" "$ROOT/site/"; done
ln -sfn "$HERE" "$DIR/pkg/intvit"

mkdir -p "$ROOT/proc"
for cpu in 0 1; do
    printf 'processor\t: %s\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done > "$ROOT/proc/cpuinfo"

cat > "$DIR/python" <<EOF
#!/bin/sh
exec qemu-aarch64 -cpu max -L "$ROOT" -E PYTHONPATH="$DIR/pkg:$ROOT/site" -E HOME=/tmp -E CXX=aarch64-linux-gnu-g++ "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$DIR/python"
"$DIR/python" -c "import platform, numpy, tvm; print('aarch64 python ready:', platform.machine(), 'tvm', tvm.__version__)"
echo "export INTVIT_AARCH64_PYTHON=$DIR/python"
