"""Worst-case stack bound of Arm builds (codegen/rrgen/stack.py) and its build-time check.

Synthetic gcc call graphs check the sum along the deepest chain, indirect calls,
recursion and dynamic frames; the tiny model's mps2-an500 build checks the real report,
and a board with a too-small stack reservation checks the error. A source with a warning
must fail the host and the Arm build (-Wall -Wextra -Werror).

Run: python -m pytest tests/test_stack.py
"""

import dataclasses
import json

import pytest

from rrgen import build as build_module
from rrgen import stack
from rrgen.boards import load_board


def write_ci(path, nodes, edges):
    """Write a .ci file in gcc's VCG layout: nodes {title: (bytes, qualifier) or None}."""
    lines = ['graph: { title: "x.c"']
    for title, frame in nodes.items():
        name = title.split(":")[-1]
        label = f"{name}\\nx.c:1:1" + (f"\\n{frame[0]} bytes ({frame[1]})" if frame else "")
        shape = "" if frame else " shape : ellipse"
        lines.append(f'node: {{ title: "{title}" label: "{label}"{shape} }}')
    for source, target in edges:
        lines.append(f'edge: {{ sourcename: "{source}" targetname: "{target}" label: "x.c:2:1" }}')
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bound_sums_deepest_chain_and_handlers(tmp_path):
    ci = write_ci(tmp_path / "a.ci", {
        "Reset_Handler": (8, "static"), "main": (16, "static"), "x.c:small": (32, "static"),
        "big": (200, "static"), "write_uart": (40, "static"), "__indirect_call": None,
        "SysTick_Handler": (24, "static"), "memcpy": None,
    }, [("Reset_Handler", "main"), ("main", "x.c:small"), ("main", "big"),
        ("big", "__indirect_call"), ("x.c:small", "memcpy"), ("SysTick_Handler", "memcpy")])
    bound = stack.stack_bound(stack.read_callgraph([ci]), taken={"write_uart"})
    # main chain: 8 + 16 + 200 + 40 (indirect: write_uart); handler: 24 + 64 (memcpy) + 104.
    assert bound.main_chain == ["Reset_Handler", "main", "big", "(indirect) write_uart"]
    assert bound.handlers == {"SysTick_Handler": 24 + stack.LIBRARY_CALL_BYTES
                              + stack.EXCEPTION_FRAME_BYTES}
    assert bound.bytes == 264 + 24 + stack.LIBRARY_CALL_BYTES + stack.EXCEPTION_FRAME_BYTES
    assert bound.library_calls == ["memcpy"]


def test_recursion_is_rejected(tmp_path):
    ci = write_ci(tmp_path / "a.ci", {"Reset_Handler": (8, "static"), "walk": (16, "static")},
                  [("Reset_Handler", "walk"), ("walk", "walk")])
    with pytest.raises(stack.StackError, match="recursion .* walk -> walk"):
        stack.stack_bound(stack.read_callgraph([ci]), set())


def test_dynamic_frame_is_rejected(tmp_path):
    ci = write_ci(tmp_path / "a.ci", {"Reset_Handler": (8, "static"),
                                      "scratch": (16, "dynamic")},
                  [("Reset_Handler", "scratch")])
    with pytest.raises(stack.StackError, match="scratch has a dynamic stack frame"):
        stack.stack_bound(stack.read_callgraph([ci]), set())


def test_address_taken_from_readelf():
    text = ("00000044  00000702 R_ARM_ABS32            00000001   uart_write\n"
            "00000002  00001f0a R_ARM_THM_CALL         00000000   board_init\n"
            "00000010  00001f0a R_ARM_ABS32            00000000   .text.fault_report\n")
    assert stack.address_taken(text) == {"uart_write", "fault_report"}


def test_arm_build_reports_stack_bound(tiny_arm_build):
    report = json.loads((tiny_arm_build / "report.json").read_text())
    bound = report["stack"]
    assert bound["deepest_chain"][:2] == ["Reset_Handler", "main"]
    assert "rr_model_step" in bound["deepest_chain"]
    assert 1000 < bound["bound_bytes"] <= bound["reserved_bytes"]


def test_stack_over_reservation_is_a_build_error(tiny_arm_build, tmp_path):
    board = load_board("mps2-an500")
    small = dataclasses.replace(board, placement=dataclasses.replace(board.placement,
                                                                     stack_bytes=512))
    bound = stack.StackBound(3000, ["Reset_Handler", "main", "rr_model_step"], {}, [])
    with pytest.raises(build_module.BuildError,
                       match=r"worst-case stack is 3000 bytes .* over the 512-byte stack "
                             r"of board 'mps2-an500'; raise placement.stack_bytes"):
        build_module.check_stack(small, {"stack": bound})


@pytest.mark.parametrize("board_name", ["host", "mps2-an500"])
def test_warning_fails_the_build(tmp_path, board_name):
    # -Wall -Wextra -Werror apply to every source of a build, generated or hand-written.
    import shutil

    from rrgen import toolchain

    if board_name != "host" and shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
    source = tmp_path / "unused.c"
    source.write_text("int rr_unused_parameter(int value) { return 0; }\n")
    board = load_board(board_name)
    with pytest.raises(toolchain.ToolchainError, match="unused parameter"):
        toolchain.compile_and_link(board, [source], [toolchain.FIRMWARE_INCLUDE_DIR],
                                   tmp_path / "out", "firmware")
