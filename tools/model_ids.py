"""Print the model id of every shipped zoo model at INT8 and INT4, and the calibration time.

Usage (from the repository root; PYTHONPATH selects the rrgen source tree to check):

    PYTHONPATH=codegen python tools/model_ids.py [--calibration 64] [MODEL ...]

The model id hashes every integer parameter (QModel.model_id), so two source trees that
print the same ids generate bit-identical firmware for these models. The calibration is
the build's: quantize.calibrate_model on the first --calibration puzzles of the
calibration split, then quantize.quantize_with_stats at each bit width.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from rrgen import calibrate, frontend, quantize, zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*",
                        help=f"zoo names (default all: {', '.join(zoo.ZOO)})")
    parser.add_argument("--calibration", type=int, default=64,
                        help="calibration puzzles (default 64, as rrgen build)")
    args = parser.parse_args(argv)
    for name in args.models or list(zoo.ZOO):
        if name not in zoo.ZOO:
            parser.error(f"unknown zoo model {name!r}; use one of {', '.join(zoo.ZOO)}")
        model = frontend.load_model(name)
        tokens, ids = calibrate.calibration_data(model.config, args.calibration)
        start = time.perf_counter()
        graph, stats = quantize.calibrate_model(model, calibration_tokens=tokens,
                                                calibration_ids=ids)
        seconds = time.perf_counter() - start
        found = []
        for bits in (8, 4):
            qm = quantize.quantize_with_stats(model, graph, stats, bits)
            found.append(f"INT{bits} 0x{qm.model_id():08x}")
        print(f"{name}: {', '.join(found)}; calibration {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
