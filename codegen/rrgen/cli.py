"""Command-line interface: train, eval, build, flash, run.

Every subcommand reports a user error as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np

from . import __version__

log = logging.getLogger("rrgen")


def plural(count: int, noun: str) -> str:
    """Format a count with its noun, adding an s unless the count is 1."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


def cmd_train(args) -> int:
    import torch

    from . import zoo
    from .train import TrainOptions, train

    torch.set_num_threads(args.threads)
    if Path(args.out).suffix != ".safetensors":
        raise UserError(f"--out {args.out!r} must end in .safetensors, the checkpoint format "
                        "that train writes")
    overrides = {k: v for k, v in {"hidden_size": args.hidden, "H_cycles": args.h_cycles,
                                   "L_cycles": args.l_cycles,
                                   "halt_max_steps": args.max_steps}.items() if v is not None}
    try:
        base = zoo.config(args.arch)
    except ValueError as err:
        raise UserError(f"--arch: {err}") from None
    config = dataclasses.replace(base, **overrides)
    start = None
    if args.init is not None:
        from . import checkpoint

        if not Path(args.init).is_file():
            raise UserError(f"--init {args.init!r} not found; pass a checkpoint written by "
                            "rrgen train")
        start = checkpoint.load(args.init)
        differ = [f"{f.name} {getattr(start.config, f.name)!r} (--arch {args.arch}: "
                  f"{getattr(config, f.name)!r})" for f in dataclasses.fields(config)
                  if getattr(start.config, f.name) != getattr(config, f.name)]
        if differ:
            raise UserError(f"--init {args.init!r} differs from the training config in "
                            f"{', '.join(differ)}; pass the --arch and sizes it was trained with")
    opts = TrainOptions(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                        pool=args.pool, eval_every=args.eval_every)
    print(f"training {config} for {opts.steps} steps, batch {opts.batch}", flush=True)
    train(config, opts, Path(args.out), progress=lambda line: print(line, flush=True), start=start)
    print(f"checkpoint: {args.out}")
    return 0


def parse_bits(value: str) -> int | str:
    """Parse --bits of build: 4, 8 or auto."""
    if value in ("4", "8"):
        return int(value)
    if value == "auto":
        return value
    raise UserError(f"--bits {value} is not supported; use 4, 8 or auto")


def parse_flash_budget(value: str | None) -> int | None:
    """Parse --flash-budget: a positive number of bytes, or None when not given."""
    if value is None:
        return None
    try:
        budget = int(value)
    except ValueError:
        budget = 0
    if budget < 1:
        raise UserError(f"--flash-budget {value} is invalid; use a positive number of bytes "
                        "such as 131072")
    return budget


def parse_size(value: str, option: str, example: str) -> int:
    """Parse a byte count given in decimal or 0x hex; raise UserError naming the option."""
    try:
        size = int(value, 0)
    except ValueError:
        size = 0
    if size < 1:
        raise UserError(f"{option} {value} is invalid; use a positive number of bytes such as "
                        f"{example}")
    return size


def precision_summary(p: dict) -> str:
    """Format one line on the layers that --bits auto made INT4, their weight bytes and fidelity."""
    if p["flash_budget_bytes"] is None:
        against = "(no flash budget on the host)"
    else:
        against = f"of {p['weight_budget_bytes']:,} bytes"
    return (f"auto precision: {p['int4_layers']} of {plural(p['layers'], 'layer')} INT4, "
            f"weights {p['weight_bytes']:,} {against}, fidelity {p['fidelity']:.4f}")


def cmd_build(args) -> int:
    from .build import build

    bits = parse_bits(args.bits)
    flash_budget = parse_flash_budget(args.flash_budget)
    out = Path(args.out or f"build/{args.board}")
    external = None
    if args.external_flash_bytes is not None:
        external = parse_size(args.external_flash_bytes, "--external-flash-bytes", "33554432")
    macs = args.calibration_macs
    if macs is not None and not (macs >= 0 and macs != float("inf")):
        raise UserError(f"--calibration-macs {macs:g} is invalid; use a number of "
                        "multiply-accumulates such as 256e9, or 0 for no cap")
    kwargs = {} if macs is None else {"calibration_macs": macs}
    result = build(args.model, args.board, bits, out, args.calibration,
                   public_config=args.public_config, task=args.task, flash_budget=flash_budget,
                   external_flash_bytes=external, count_instructions=args.count_instructions,
                   **kwargs)
    r = result.report
    print(f"built {r['board']} {r['weight_precision']} model {r['model_id']} in {out}/")
    if "precision" in r:
        print(f"  {precision_summary(r['precision'])}")
    for region in r["regions"]:
        print(f"  {region['name']:10s} {region['used_bytes']:9d} of {region['length_bytes']:9d} bytes")
    if r.get("ram"):
        print(f"  RAM (.data + .bss + .arena + .stack) {r['ram']['bytes']} bytes")
    if "stack" in r:
        print(f"  stack bound {r['stack']['bound_bytes']} of {r['stack']['reserved_bytes']} "
              "bytes reserved (deepest call chain plus exception handlers)")
    a = r["arena"]
    where = ", ".join(f"{arr['region']} {arr['bytes']}" for arr in a["arrays"] if arr["region"])
    print(f"  arena {a['bytes']} bytes{' (' + where + ')' if where else ''}, lower bound "
          f"{a['lower_bound_bytes']}, greedy by size {a['greedy_by_size_bytes']}, without reuse "
          f"{a['no_reuse_bytes']}; {r['macs']['total']} MACs per supervision step")
    if "instructions" in r:
        ic = r["instructions"]
        print(f"  linear layers: {ic['total_per_step']} instructions per supervision step "
              f"({ic['total_per_mac']:.3f} per MAC), QEMU {ic['qemu_machine']} -icount, "
              "kernels alone, not cycles")
    firmware = "firmware (host executable)" if args.board == "host" else "firmware.elf, firmware.bin"
    print(f"  {firmware}, src/, report.md, report.json")
    return 0


def cmd_flash(args) -> int:
    from . import flash

    plan = flash.plan_flash(Path(args.build or f"build/{args.board}"), args.board, args.target)
    for line in flash.describe(plan):
        print(line)
    if plan.part("qspi"):
        if not args.internal_only:
            raise UserError(flash.qspi_rejection_message(plan))
        print("  --internal-only: the QSPI part is not programmed")
    if args.dry_run:
        print("dry run: nothing programmed")
        return 0
    written = flash.program(plan, args.probe)
    print(f"programmed {written:,} bytes of internal flash through pyocd and reset the board")
    return 0


def cmd_run(args) -> int:
    from . import tasks
    from .boards import load_board
    from .build import load_build, load_reference
    from .run import open_device, run_puzzles

    if args.limit < 0:
        raise UserError(f"--limit {args.limit} is invalid; use 0 (all puzzles) or more")
    if not args.timeout > 0:
        raise UserError(f"--timeout {args.timeout} is invalid; use a positive number of seconds")
    if not 0 <= args.max_steps <= 255:
        raise UserError(f"--max-steps {args.max_steps} is invalid; use 0 (the model's "
                        "halt_max_steps) to 255")
    if args.puzzle_id < 0:
        raise UserError(f"--puzzle-id {args.puzzle_id} is invalid; use 0 or more")
    if not args.port:
        load_board(args.board)   # an unknown board name is reported as such
    build_dir = Path(args.build or f"build/{args.board}")
    info = None
    if not args.port or args.build:
        info = load_build(build_dir, args.board)
    task_name, seq_len = args.task, None
    if info is not None:
        built = info.get("task", "sudoku")
        if args.task and args.task != built:
            raise UserError(f"--task {args.task} does not match the build in {build_dir}, "
                            f"which is for {built!r}; pass --task {built} or another --build")
        task_name, seq_len = built, info.get("seq_len")
    task = tasks.get_task(task_name or "sudoku", seq_len)
    try:
        tokens = task.read_puzzle_file(args.puzzles)
    except ValueError as err:
        raise UserError(f"{err} (the build is for {task.name} puzzles; the README describes "
                        "each task's file format)") from None
    table = info.get("num_puzzle_identifiers") if info is not None else None
    if table is not None and args.puzzle_id >= table:
        raise UserError(f"--puzzle-id {args.puzzle_id} is out of range; the model's puzzle "
                        f"table has rows 0..{table - 1}")
    if args.limit:
        tokens = tokens[:args.limit]
    qm = None
    if args.check:
        if info is None:
            raise UserError("--check with --port needs --build DIR, the folder the board's "
                            "firmware was built into")
        qm = load_reference(info)
    ids = np.full(len(tokens), args.puzzle_id, dtype=np.int64)
    with open_device(None if args.port else build_dir, args.port, icount=args.icount,
                     board=args.board, timeout=args.timeout) as client:
        summary = run_puzzles(client, tokens, qm, max_steps=args.max_steps, halt=args.halt,
                              task=task, puzzle_ids=ids)
    if summary.cells:
        print(f"accuracy: {summary.exact}/{summary.puzzles} puzzles exact "
              f"({100 * summary.exact / summary.puzzles:.1f}%), cells "
              f"{100 * summary.cells_right / summary.cells:.2f}%")
    print(f"steps used: mean {sum(summary.steps_used) / len(summary.steps_used):.2f}; "
          f"cycles per puzzle: mean {sum(summary.cycles) / len(summary.cycles):.0f}")
    if qm is not None:
        if summary.mismatches:
            print(f"bit-exact check FAILED: {len(summary.mismatches)} mismatches")
            return 1
        print(f"bit-exact check passed: {plural(summary.steps_checked, 'step')} of "
              f"{plural(summary.puzzles, 'puzzle')} equal the integer reference "
              "(tokens, q_halt, carry y and z)")
    return 0


def cmd_eval(args) -> int:
    import tempfile

    import torch

    from . import frontend, tasks
    from .build import build
    from .run import run_batch
    from .train import evaluate, scores

    if args.puzzles < 1:
        raise UserError(f"--puzzles {args.puzzles} is invalid; use 1 or more")
    torch.set_num_threads(args.threads)
    model = frontend.load_model(args.model, args.public_config)
    cfg = model.config
    task = tasks.get_task(cfg.task, cfg.seq_len)
    inputs, labels, ids = task.generate(args.puzzles, args.seed)
    ids = np.where(ids < cfg.num_puzzle_identifiers, ids, 0)
    steps = cfg.halt_max_steps
    print(f"{args.puzzles} held-out {task.name} puzzles (seed {args.seed}), {steps} supervision "
          "steps, no early halting")
    cell, exact = evaluate(model, inputs, labels, puzzle_ids=ids)
    print(f"fp32      cell {100 * cell:.2f}%  puzzle-exact {100 * exact:.2f}%")
    supervised = max(1, int((labels != 0).sum()))

    def score(records):
        final = torch.from_numpy(np.stack([r["tokens"][-1] for r in records]).astype(np.int64))
        right, solved = scores(final, torch.from_numpy(labels))
        return 100 * right.sum().item() / supervised, 100 * solved.float().mean().item()

    for bits in args.bits:
        with tempfile.TemporaryDirectory() as tmp:
            built = build(args.model, "host", bits, Path(tmp) / "host", args.calibration,
                          public_config=args.public_config)
            records = run_batch(built.out_dir / "batch", inputs, jobs=args.threads,
                                puzzle_ids=ids)
            halted = run_batch(built.out_dir / "batch", inputs, halt=True, jobs=args.threads,
                               puzzle_ids=ids)
        cell, exact = score(records)
        print(f"INT{bits} w/INT8 a  cell {cell:.2f}%  puzzle-exact {exact:.2f}%  "
              "(host build of the generated C)")
        cell, exact = score(halted)
        steps_used = np.mean([r["steps_used"] for r in halted])
        print(f"  with halting at q_halt > 0: cell {cell:.2f}%  puzzle-exact {exact:.2f}%  "
              f"mean steps {steps_used:.2f}")
    return 0


def cmd_puzzles(args) -> int:
    from . import sudoku, tasks

    if args.count < 1:
        raise UserError(f"--count {args.count} is invalid; use 1 or more")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; pass a file name")
    if not out.parent.is_dir():
        raise UserError(f"folder {str(out.parent)!r} of --out does not exist; create it first")
    seq_len = args.size * args.size if args.task == "maze" else None
    task = tasks.get_task(args.task, seq_len)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if task.name == "sudoku":
                puzzles, solutions = sudoku.generate(args.count, args.seed, args.min_blanks,
                                                     args.max_blanks)
                f.write(f"# {args.count} Sudoku puzzles, seed {args.seed}, "
                        f"{args.min_blanks}..{args.max_blanks} blanks; puzzle,solution per line\n")
                for p, s in zip(puzzles, solutions):
                    f.write(f"{sudoku.format_grid(p)},{sudoku.format_grid(s)}\n")
            else:
                inputs, _, _ = task.generate(args.count, args.seed)
                if task.name == "maze":
                    f.write(f"; {args.count} mazes {args.size}x{args.size}, seed {args.seed}\n")
                f.write("\n\n".join(task.format_puzzle(row) for row in inputs) + "\n")
        tmp.replace(out)
    except OSError as err:
        raise UserError(f"cannot write {str(out)!r}: {err.strerror}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {plural(args.count, task.name + ' puzzle')} to {out}")
    return 0


def cmd_sweep(args) -> int:
    import shutil
    import tempfile

    import torch
    from tqdm import tqdm

    from . import calibrate, compress, frontend, sweep, tasks

    if args.puzzles < 1 or args.calibration < 1:
        raise UserError("--puzzles and --calibration must be 1 or more")
    schemes = args.schemes.split(",") if args.schemes else list(compress.SCHEMES)
    for scheme in schemes:
        compress.check_scheme(scheme)
    activations = args.activations.split(",")
    if not activations or any(a not in ("float", "int8") for a in activations):
        raise UserError(f"--activations {args.activations!r} is invalid; use float, int8 or "
                        "float,int8")
    if args.bits is not None and args.bits != "auto":
        raise UserError(f"--bits {args.bits} is not supported by sweep; use --bits auto (the "
                        "schemes already cover uniform INT4 and INT8)")
    if args.bits == "auto" and "int8" not in activations:
        raise UserError("--bits auto chooses for the firmware, which has INT8 activations; "
                        "add int8 to --activations")
    flash_budget = parse_flash_budget(args.flash_budget)
    if "int4-qat" in schemes and args.qat_steps < 1:
        raise UserError(f"--qat-steps {args.qat_steps} is invalid; use 1 or more, or leave "
                        "int4-qat out of --schemes")
    try:
        depths = [int(v) for v in args.h_cycles.split(",")] if args.h_cycles else None
    except ValueError:
        raise UserError(f"--h-cycles {args.h_cycles!r} is invalid; use a comma-separated list "
                        "of integers such as 1,2") from None
    if depths is not None and min(depths) < 1:
        raise UserError(f"--h-cycles {args.h_cycles!r} is invalid; every value must be 1 or more")
    out = Path(args.out)
    if out.exists() and not (out / "sweep.json").is_file():
        raise UserError(f"--out {str(out)!r} exists and is not an earlier sweep; pass a new folder")
    if not out.parent.is_dir():
        raise UserError(f"folder {str(out.parent)!r} of --out does not exist; create it first")
    torch.set_num_threads(args.threads)
    model = frontend.load_model(args.model, args.public_config, args.task)
    cfg = model.config
    depths = depths or [cfg.H_cycles]
    if args.task and args.task != cfg.task:
        raise UserError(f"--task {args.task} does not match the model, which was made for "
                        f"{cfg.task!r}")
    task = tasks.get_task(cfg.task, cfg.seq_len)
    inputs, labels, ids = task.generate(args.puzzles, args.seed)
    ids = np.where(ids < cfg.num_puzzle_identifiers, ids, 0)
    cal_tokens, cal_ids = calibrate.calibration_data(cfg, args.calibration)
    print(f"sweep of {len(schemes)} weight schemes at H_cycles {depths} on {args.puzzles} held-out {task.name} "
          f"puzzles (seed {args.seed}), {cfg.halt_max_steps} supervision steps", flush=True)
    rows = compress.calibration_rows(model, cal_tokens, cal_ids) if "int4" in schemes else None
    qat_model = None
    if "int4-qat" in schemes:
        from .train import TrainOptions, train

        opts = TrainOptions(steps=args.qat_steps, batch=64, lr=1e-4, ema=0.0, pool=2000,
                            warmup_steps=max(1, args.qat_steps // 10), eval_every=args.qat_steps,
                            eval_puzzles=200, fake_quant="int4-qat")
        print(f"quantization-aware fine-tune: {opts.steps} steps, batch {opts.batch}, "
              f"lr {opts.lr:g}, per-tensor INT4 weights with straight-through rounding", flush=True)
        with tempfile.TemporaryDirectory(prefix="rrgen-qat-") as tmp:
            qat_model = train(cfg, opts, Path(tmp) / "qat.safetensors",
                              progress=lambda line: args.quiet or print(line, flush=True),
                              start=model)
    auto_qm = precision = None
    if args.bits == "auto":
        from . import boards, budget, build, quantize

        board = boards.load_board(args.board)
        build.check_build_options(board, "auto", flash_budget, None)
        graph, stats = quantize.calibrate_model(model, calibration_tokens=cal_tokens,
                                                calibration_ids=cal_ids)
        with tempfile.TemporaryDirectory(prefix="rrgen-probe-") as tmp:
            auto = budget.choose_for_board(model, graph, stats, board, flash_budget,
                                           (cal_tokens, cal_ids), Path(tmp))
        auto_qm = quantize.quantize_with_stats(model, graph, stats, 8,
                                               layer_bits=auto.choice.layer_bits)
        precision = {"board": board.name, **auto.report(),
                     "summary": f"Board {board.name}: " + precision_summary(auto.report())
                     + f" (fidelity on {auto.fidelity_puzzles} calibration puzzles)",
                     "table": auto.choice.table()}
        print(precision["summary"], flush=True)
    configs = sum(len(depths) * (1 + ("int8" in activations and s in compress.INTEGER_SCHEMES)
                                 - ("float" not in activations)) for s in schemes)
    configs += len(depths) if auto_qm is not None else 0
    bar = tqdm(total=configs, unit="config", disable=args.quiet)

    def progress(result):
        bar.update(1)
        bar.write(f"{sweep.label(result):14s} T={result.h_cycles} cell {100 * result.cell:6.2f}%  "
                  f"puzzle-exact {100 * result.exact:6.2f}%  fidelity {result.fidelity:.4f}")

    results = sweep.run(model, inputs, labels, ids, rows, schemes, progress, depths,
                        calibration=(cal_tokens, cal_ids), activations=activations,
                        qat_model=qat_model, check_puzzles=args.check_puzzles, auto_qm=auto_qm)
    bar.close()
    name = Path(str(getattr(model, "source_path", args.model or "model"))).stem
    meta = {"model": str(getattr(model, "source_path", args.model)), "task": task.name,
            "puzzles": args.puzzles, "seed": args.seed, "calibration": args.calibration,
            "config": json.loads(cfg.to_json()), "activations": activations,
            "qat_steps": args.qat_steps if qat_model is not None else 0}
    if precision is not None:
        meta["precision"] = precision
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sweep.write(results, staging, f"Weight schemes of {name} on {args.puzzles} {task.name} "
                                      "puzzles", meta)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {out}/sweep.md, sweep.json and 3 plots")
    return 0


def cmd_export_onnx(args) -> int:
    from . import frontend, onnx_io

    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise UserError(f"--out {str(out)!r} must be a file in an existing folder")
    model = frontend.load_model(args.model, args.public_config)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx_io.export_step(model, tmp, opset=args.opset)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote one recursion step of {model.config.arch.upper()} "
          f"({model.config.task}) to {out}, opset {args.opset}")
    return 0


MODEL_HELP = ("zoo name (sudoku-mlp, sudoku-att, maze-att, hrm-maze), a .safetensors "
              "checkpoint, a .onnx recursion step, or a public TRM/HRM checkpoint; "
              "default: sudoku-mlp")
PUBLIC_HELP = "YAML config of a public TRM/HRM checkpoint (default: all_config.yaml beside it)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrgen", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rrgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each pipeline stage")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo configuration (Sudoku or Maze) on the CPU")
    p.add_argument("--out", required=True, help="checkpoint path to write (.safetensors)")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    p.add_argument("--batch", type=int, default=128, help="puzzles per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and sampling")
    p.add_argument("--pool", type=int, default=20000, help="generated training puzzles")
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    p.add_argument("--hidden", type=int, help="hidden size (default 64)")
    p.add_argument("--h-cycles", type=int, help="T, outer cycles per step (default 2)")
    p.add_argument("--l-cycles", type=int, help="n, z updates per cycle (default 3)")
    p.add_argument("--max-steps", type=int, help="supervision steps (default 8)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--init", help="start from this checkpoint's weights (same --arch)")
    p.add_argument("--arch", default="sudoku-mlp",
                   help="zoo configuration: sudoku-mlp, sudoku-att, maze-att or hrm-maze")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("build", help="quantize, emit C and build firmware for a board")
    p.add_argument("--board", required=True, help="board name: stm32h7, mps2-an500, corstone300 or host")
    p.add_argument("--bits", default="8",
                   help="block weight bits: 4, 8, or auto (INT4 or INT8 per layer, the "
                   "highest fidelity that fits --flash-budget); default 8")
    p.add_argument("--flash-budget", metavar="BYTES",
                   help="flash bytes the firmware may use (default: all of the board's "
                   "flash); on the host it bounds the block weights")
    p.add_argument("--external-flash-bytes", metavar="BYTES",
                   help="size of the board's external flash region (stm32h7: the QSPI window "
                   "at 0x90000000, 2 MB by default, up to 256 MB); decimal or 0x hex")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--public-config", help=PUBLIC_HELP)
    p.add_argument("--task", choices=("sudoku", "maze", "arc"),
                   help="check that the model was made for this task")
    p.add_argument("--out", help="output folder (default build/BOARD)")
    p.add_argument("--calibration", type=int, default=64, help="calibration puzzles")
    p.add_argument("--calibration-macs", type=float, metavar="MACS",
                   help="cap on the multiply-accumulates of the float calibration run; a "
                   "larger model calibrates on fewer puzzles (then steps) to stay under it. "
                   "Default 256e9 (about 8 s on one core); 0 for no cap")
    p.add_argument("--count-instructions", action="store_true",
                   help="after linking, time each linear layer's kernel with its shape in one "
                   "QEMU -icount run and add instructions per call, per MAC and per "
                   "supervision step to report.md and report.json (Arm boards; stm32h7 runs "
                   "on mps2-an500, its QEMU twin)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("flash", help="program a build into a real board through pyocd")
    p.add_argument("--board", required=True, help="board of the build: stm32h7")
    p.add_argument("--build", help="build folder (default build/BOARD)")
    p.add_argument("--probe", metavar="UID", help="unique ID of the debug probe (pyocd list); "
                   "needed when more than one is connected")
    p.add_argument("--target", help="pyocd target type (default stm32h743xx, built into "
                   "pyocd; stm32h743zitx needs `pyocd pack install stm32h743zitx`)")
    p.add_argument("--internal-only", action="store_true",
                   help="program internal flash even though the build has a QSPI part, which "
                   "must then be programmed separately")
    p.add_argument("--dry-run", action="store_true",
                   help="print the regions, addresses and sizes to program; needs no pyocd")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("run", help="solve puzzles on the host build, in QEMU or on a board")
    p.add_argument("puzzles", help="puzzle file: Sudoku lines of 81 characters, mazes as grids "
                   "of '# SGo.', or ARC JSON")
    p.add_argument("--task", choices=("sudoku", "maze", "arc"),
                   help="task of the puzzles (default: the build's task)")
    p.add_argument("--puzzle-id", type=int, default=0,
                   help="row of the puzzle-embedding table for every puzzle (default 0)")
    p.add_argument("--board", default="mps2-an500", help="board of the build (default mps2-an500)")
    p.add_argument("--build", help="build folder (default build/BOARD)")
    p.add_argument("--port", help="serial device of a real board, e.g. /dev/ttyACM0")
    p.add_argument("--check", action="store_true",
                   help="compare every step with the integer reference, byte for byte")
    p.add_argument("--max-steps", type=int, default=0,
                   help="supervision steps per puzzle (default: the model's halt_max_steps)")
    p.add_argument("--halt", action="store_true", help="stop a puzzle once its halt logit is > 0")
    p.add_argument("--limit", type=int, default=0, help="run only the first N puzzles")
    p.add_argument("--icount", action="store_true",
                   help="QEMU -icount shift=0: deterministic virtual time (1 ns per instruction)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait in QEMU for each puzzle's SOLVE reply, which comes "
                   "after all its steps (default 600)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="accuracy in fp32 and of the integer model on held-out puzzles")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--public-config", help=PUBLIC_HELP)
    p.add_argument("--puzzles", type=int, default=1000, help="held-out puzzles")
    p.add_argument("--seed", type=int, default=2, help="seed of the held-out puzzles (test split: 2)")
    p.add_argument("--bits", type=int, nargs="*", choices=(4, 8), default=[8, 4],
                   help="weight bits to evaluate on the host build")
    p.add_argument("--calibration", type=int, default=64, help="calibration puzzles")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("puzzles", help="write generated puzzles to a file")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--task", choices=("sudoku", "maze", "arc"), default="sudoku")
    p.add_argument("--size", type=int, default=9, help="maze side N, 9..30 (default 9)")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=2, help="seed (2 is the test split)")
    p.add_argument("--min-blanks", type=int, default=30)
    p.add_argument("--max-blanks", type=int, default=45)
    p.set_defaults(func=cmd_puzzles)

    p = sub.add_parser("sweep", help="accuracy and carry fidelity of each weight scheme")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--public-config", help=PUBLIC_HELP)
    p.add_argument("--task", choices=("sudoku", "maze", "arc"),
                   help="check that the model was made for this task")
    p.add_argument("--out", required=True, help="output folder (sweep.md, sweep.json, PNG plots)")
    p.add_argument("--puzzles", type=int, default=200, help="held-out puzzles (default 200)")
    p.add_argument("--seed", type=int, default=2, help="seed of the held-out puzzles (test split: 2)")
    p.add_argument("--calibration", type=int, default=64, help="calibration puzzles (int4 and int8 activations)")
    p.add_argument("--schemes", help="comma-separated subset of: fp32, fp16, bf16, int8, "
                   "int4-naive, int4, int4-g128, int4-g32, int4-qat, prune25 (default: all)")
    p.add_argument("--h-cycles", help="comma-separated H_cycles values to run each scheme at "
                   "(default: the model's)")
    p.add_argument("--activations", default="float,int8",
                   help="float, int8 (static INT8, run as the generated C) or float,int8 (default)")
    p.add_argument("--qat-steps", type=int, default=300,
                   help="fine-tuning steps of the int4-qat scheme (default 300)")
    p.add_argument("--bits", help="auto: add a row with the per-layer INT4/INT8 choice that "
                   "build --bits auto makes for --board")
    p.add_argument("--board", default="stm32h7", help="board of --bits auto (default stm32h7)")
    p.add_argument("--flash-budget", help="flash bytes --bits auto may use (default: the board's)")
    p.add_argument("--check-puzzles", type=int, default=20,
                   help="puzzles of each int8 row compared with the numpy reference (default 20)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export-onnx", help="write one recursion step as ONNX")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--public-config", help=PUBLIC_HELP)
    p.add_argument("--out", required=True, help="file to write (.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=cmd_export_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    from .client import DeviceError
    from .qemu import QemuError
    from .toolchain import ToolchainError

    # Input validation in the library raises ValueError subclasses with a full message;
    # missing tools, QEMU and device failures have their own types.
    handled = (UserError, ValueError, ToolchainError, QemuError, DeviceError, TimeoutError)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"rrgen {args.command}: interrupted", file=sys.stderr)
        return 130
    except handled as err:
        text = str(err).strip().splitlines()
        print(f"rrgen {args.command}: error: {text[0] if text else type(err).__name__}",
              file=sys.stderr)
        if len(text) > 1:
            print("\n".join(text[1:]), file=sys.stderr)
        return 2
