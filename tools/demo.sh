#!/usr/bin/env bash
# README command 1: set up a fresh machine, then run rrgen's main job on the shipped model.
# It builds INT4 firmware for the STM32H743 and INT8 firmware for QEMU's Cortex-M7
# (mps2-an500). Then it solves sample puzzles in QEMU over the emulated serial port and
# checks every step byte for byte against the integer reference. Last, the zoo's maze
# model (TRM with attention) goes through the same pipeline, and its outputs print as grids.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

python3 -m rrgen build --board stm32h7 --bits 4
python3 -m rrgen build --board mps2-an500 --bits 8
python3 -m rrgen run --board mps2-an500 --check examples/sudoku_test10.txt "$@"

python3 -m rrgen build --board mps2-an500 --bits 4 --model maze-att --out build/mps2-an500-maze
python3 -m rrgen run --board mps2-an500 --build build/mps2-an500-maze --check \
    examples/maze9_test5.txt "$@"
