#!/usr/bin/env bash
# Install what rrgen needs on a fresh Debian machine: the Arm cross compiler, newlib,
# QEMU, the CPU build of PyTorch and rrgen itself (editable, from this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null ||
   ! [ -e /usr/lib/arm-none-eabi/newlib ]; then
    echo "setup: installing gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm >/dev/null
fi

# torch first and pinned: the CPU build, never an unpinned (CUDA) one.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
echo "setup: done ($(arm-none-eabi-gcc --version | head -n 1); $(qemu-system-arm --version | head -n 1))"
