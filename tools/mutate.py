"""Mutation testing of the modules that decide whether an event survives (``make mutate``).

One small change at a time is made to a module and its tests are run: its own
fast files first, then the slower files that drive it through the app or the
worker. A mutant the tests let through is a behaviour nobody pins down.

Why our own mutator rather than mutmut: mutmut rewrites functions into
trampolines and reports module-level work (a preset dictionary built at import,
a compiled regex, a Lua script) as survived without running it. Here every
mutant is a whole edited source file, imported fresh by a fresh pytest process,
so code that runs at import time is mutated like any other. Lua scripts and
regexes are strings to Python: their mutants are hand-listed (:data:`HAND`).

The working tree is never touched (others work in it): the committed tree
(``HEAD``, resolved once at the start) is extracted to a scratch directory and
the tests run there with ``PYTHONPATH`` pointing at the copy, which wins over the
editable install (its finder is appended to ``sys.meta_path``) and is inherited
by the processes the tests start. The mutants are made from that commit too, so
uncommitted edits in the working tree (someone else's half-done change) never
leak into a run; ``--worktree`` copies the working tree instead.

    python tools/mutate.py                         # every module in MODULES
    python tools/mutate.py --module flusher/claim.py --sample 2
    python tools/mutate.py --only-survivors build/mutate/report.json
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent

#: module -> (fast test files, slower test files). Fast ones run first; a mutant
#: they kill never pays for the slow ones.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "flusher/claim.py": (
        ["tests/flusher/test_claim_pinned.py", "tests/flusher/test_claim.py"],
        ["tests/flusher/test_lost_replies.py", "tests/flusher/test_poison.py", "tests/flusher/test_runner.py"],
    ),
    "oceanus/buffer.py": (
        ["tests/oceanus/test_buffer_pinned.py", "tests/oceanus/test_buffer.py"],
        ["tests/flusher/test_claim.py", "tests/collector/test_app.py", "tests/flusher/test_frame_cap.py"],
    ),
    "collector/spool.py": (
        [
            "tests/collector/test_spool_pinned.py",
            "tests/collector/test_spool_corrupt.py",
            "tests/collector/test_spool_usage.py",
            "tests/collector/test_spool.py",
        ],
        ["tests/collector/test_pusher_drain.py"],
    ),
    "flusher/worker.py": (
        ["tests/flusher/test_worker_pinned.py", "tests/flusher/test_runner.py"],
        ["tests/flusher/test_poison.py"],
    ),
    "flusher/runner.py": (
        [
            "tests/flusher/test_runner_pinned.py",
            "tests/flusher/test_runner_drain_pinned.py",
            "tests/flusher/test_runner.py",
            "tests/oceanus/test_discovery.py",
        ],
        [
            "tests/flusher/test_lost_replies.py",
            "tests/flusher/test_process.py",
            "tests/flusher/test_admin.py",
            "tests/flusher/test_upgrade.py",
        ],
    ),
    "flusher/batch.py": (
        ["tests/flusher/test_batch_pinned.py", "tests/flusher/test_runner.py"],
        ["tests/oceanus/test_dead.py", "tests/flusher/test_poison.py"],
    ),
    "flusher/controller.py": (["tests/flusher/test_controller_pinned.py", "tests/flusher/test_controller.py"], []),
    "collector/validate.py": (
        [
            "tests/collector/test_validate_pinned.py",
            "tests/collector/test_validate.py",
            "tests/collector/test_validate_edge.py",
            "tests/collector/test_validate_fast_path.py",
        ],
        ["tests/collector/test_legacy.py", "tests/collector/test_app.py"],
    ),
    "collector/pusher.py": (
        [
            "tests/collector/test_pusher_pinned.py",
            "tests/collector/test_pusher_drain.py",
            "tests/collector/test_pusher_refused.py",
        ],
        [
            "tests/collector/test_pusher_notify.py",
            "tests/collector/test_app.py",
            "tests/collector/test_pusher_replicas.py",
        ],
    ),
    "collector/resp.py": (["tests/collector/test_resp.py"], ["tests/collector/test_app.py"]),
}

#: Mutants the AST cannot reach: Lua scripts and regexes, which are strings to
#: Python. (module, exact text, replacement, description); the text must occur once.
HAND: list[tuple[str, str, str, str]] = [
    ("flusher/claim.py", "math.min(i + 999, count)", "math.min(i + 998, count)", "lua claim: slice bound - 1"),
    ("flusher/claim.py", "for i = 1, count, 1000 do", "for i = 1, count, 999 do", "lua claim: slice step"),
    ("flusher/claim.py", "LRANGE', KEYS[1], 0, n - 1)", "LRANGE', KEYS[1], 0, n)", "lua claim: LRANGE end + 1"),
    ("flusher/claim.py", "'LTRIM', KEYS[1], count, -1", "'LTRIM', KEYS[1], count - 1, -1", "lua claim: LTRIM start"),
    ("flusher/claim.py", "'_frames', count)", "'_frames', count - 1)", "lua claim: _frames count"),
    ("flusher/claim.py", "'_claimed_ms', ARGV[3]", "'_claimed_ms', ARGV[2]", "lua claim: _claimed_ms arg"),
    ("flusher/claim.py", "if count == 0 then return items end\n", "", "lua claim: empty check dropped"),
    ("flusher/claim.py", "if ARGV[1] ~= '1' and", "if ARGV[1] == '1' and", "lua reclaim: own-key waiver"),
    (
        "flusher/claim.py",
        "and redis.call('EXISTS', KEYS[4]) == 1 then",
        "and redis.call('EXISTS', KEYS[4]) == 0 then",
        "lua reclaim: liveness check inverted",
    ),
    ("flusher/claim.py", "  redis.call('DEL', KEYS[5])\n", "", "lua reclaim: orphan state kept"),
    (
        "flusher/claim.py",
        "if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('RENAME', KEYS[5], KEYS[6]) end\n",
        "",
        "lua reclaim: state not carried over",
    ),
    (
        "flusher/claim.py",
        "redis.call('SADD', KEYS[3], KEYS[2])\nreturn redis.call",
        "return redis.call",
        "lua reclaim: new key not indexed",
    ),
    ("flusher/claim.py", "'RIGHT', 'LEFT'", "'LEFT', 'LEFT'", "lua give back: order"),
    (
        "flusher/claim.py",
        "redis.call('DEL', KEYS[4])\nredis.call('SREM'",
        "redis.call('SREM'",
        "lua give back: state kept",
    ),
    (
        "flusher/claim.py",
        "redis.call('SREM', KEYS[3], KEYS[1])\nreturn moved",
        "return moved",
        "lua give back: index kept",
    ),
    ("flusher/claim.py", "moved = moved + 1", "moved = moved + 2", "lua give back: count"),
    ("flusher/claim.py", 're.sub(r"[^A-Za-z0-9_.-]"', 're.sub(r"[^A-Za-z0-9_.:-]"', "regex owner: ':' allowed"),
    (
        "collector/validate.py",
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\Z")',
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")',
        "regex email: end anchor dropped",
    ),
    (
        "collector/validate.py",
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\Z")',
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)*\Z")',
        "regex email: TLD optional",
    ),
    (
        "collector/validate.py",
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\Z")',
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")',
        "regex email: '\\Z' -> '$'",
    ),
    (
        "collector/validate.py",
        r'EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\Z")',
        r'EMAIL_RE = re.compile(r"^[^@]+@[^@\s.]+(\.[^@\s.]+)+\Z")',
        "regex email: space in local part",
    ),
    (
        "collector/validate.py",
        r'_INT_RE = re.compile(r"-?[0-9]+\Z")',
        r'_INT_RE = re.compile(r"-?[0-9]+")',
        r"regex int: '\Z' dropped",
    ),
    (
        "collector/validate.py",
        r'_INT_RE = re.compile(r"-?[0-9]+\Z")',
        r'_INT_RE = re.compile(r"[0-9]+\Z")',
        "regex int: sign dropped",
    ),
    ("collector/validate.py", r'(?:[eE][-+]?[0-9]+)?\Z")', r'(?:[eE][-+]?[0-9]+)?")', r"regex number: '\Z' dropped"),
    ("collector/validate.py", r'(?:[eE][-+]?[0-9]+)?\Z")', r'\Z")', "regex number: exponent dropped"),
    (
        "collector/validate.py",
        r'_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")',
        r'_CONTROL_RE = re.compile(r"[\x00-\x1e]")',
        "regex control: \\x1f and DEL allowed",
    ),
]

_RSPLIT = "a larger maxsplit leaves the same last parts: str.rsplit splits from the right"
_LAST_OF_TWO = "rsplit(':', 1) gives two parts: [1] is [-1]"
_BATCH_ID_LINE = 'batch_id = key.rsplit(":", 2)[-2] + "-" + key.rsplit(":", 1)[-1]'
_RECLAIM_BATCH_ID_LINE = (
    'batch_id = state.get(STATE_BATCH_ID) or orphan.rsplit(":", 2)[-2] + "-" + orphan.rsplit(":", 1)[-1]'
)
#: Mutants that change no behaviour, keyed by "description @ stripped source line":
#: listed with the reason instead of being counted as killed.
EQUIVALENT: dict[str, dict[str, str]] = {
    "flusher/claim.py": {
        "1000 -> 1001 @ LUA_PUSH_SLICE = 1000": "names the Lua script's own literal for readers; nothing reads it",
        "1000 -> 999 @ LUA_PUSH_SLICE = 1000": "names the Lua script's own literal for readers; nothing reads it",
        **{f"{d} @ {line}": _RSPLIT for line in (_BATCH_ID_LINE, _RECLAIM_BATCH_ID_LINE) for d in ("2 -> 3", "1 -> 2")},
        **{f"unary - dropped @ {line} #1": _LAST_OF_TWO for line in (_BATCH_ID_LINE, _RECLAIM_BATCH_ID_LINE)},
        "False -> True @ async with self.client.pipeline(transaction=False) as pipe:": (
            "read-only EXISTS/LINDEX round: inside MULTI/EXEC the replies are the same"
        ),
        **{
            f"{d} @ return bool(results[1 if dead_items else 0])": (
                "the batch's list, state hash and index entry are made and dropped together (claim and"
                " re-claim scripts, this MULTI): each DEL/SREM reply says the same"
            )
            for d in ("1 -> 2", "0 -> 1", "0 -> -1")
        },
        **{
            f"{d} @ out[stream] = frames[0] if len(frames) == 1 else min(frames, key=_frame_sort_key)": (
                "a shortcut that skips decoding: min() of one frame is that frame"
            )
            for d in ("1 -> 0", "0 -> -1")
        },
        **{
            f"{d} @ return frame_oldest_ms(frame) or 2**62": "any value past every real millisecond sorts last"
            for d in ("2 -> 3", "62 -> 63", "62 -> 61")
        },
        "True -> False @ return mine + [k for k, a in zip(others, alive, strict=True) if not a]": (
            "one reply per key pipelined: the lengths are always equal"
        ),
    },
    "collector/spool.py": {
        "<= -> < @ return size - offset if 0 <= offset <= size else size": "at offset 0 both branches give size",
        "return value -> None @ return False": "every caller tests the result for truth only; None is as false",
        "> -> >= @ if pos + _HEADER.size > size:": "a bare header at the end has no payload to pass its CRC and decode",
        "< -> <= @ while pos + _HEADER.size < size:": "at the end the read is empty: the scan returns None either way",
    },
    "flusher/batch.py": {
        "True -> False @ class Built(msgspec.Struct, kw_only=True):": (
            "every Built is made with keywords: kw_only only refuses positional calls nobody makes"
        ),
        '== -> != @ c: (event_id_hex(v) if c == "event_id" and isinstance(v, bytes) else _jsonable(v))': (
            "event_id_hex(raw) is raw.hex(), which _jsonable also gives for bytes: either branch, the same text"
        ),
        **{
            f"1 -> 2 @ {line}": "-1 and -2 are both 'no such column': only the sign is tested"
            for line in (
                "self.take = tuple(pos.get(c, -1) for c in target if c != EXTRA_COLUMN)",
                "self.extra_src = pos.get(EXTRA_COLUMN, -1)",
            )
        },
        **{
            f"{d} @ return 1.0": "only frames that decoded reach _expansion, so frame_payload cannot fail there"
            for d in ("return value -> None", "1.0 -> 2.0")
        },
        **{
            f"{d} @ return len(raw) / max(1, len(frame))": (
                "a frame that decoded has its magic and checksum: it is never shorter than 6 bytes"
            )
            for d in ("1 -> 2", "1 -> 0")
        },
    },
    "flusher/worker.py": {
        **{
            f"{d} @ written = 0": "overwritten by _write_part's result, or never read: a give-back returns first"
            for d in ("0 -> 1", "0 -> -1")
        },
        "> -> >= @ if part.wait_s > 0:": "a pause of 0 s returns at once: the same as no pause",
        **{
            f"{d} @ {line}": (
                "the controller decreases on a too-large, throttled or timed-out write and ignores other"
                " failures whatever their duration and backlog: both only count for a write that went through"
            )
            for d, line in (
                (
                    "- -> +",
                    "self.controller.observe_write(len(batch.rows), time.perf_counter() - t0, Outcome.TOO_LARGE, True)",
                ),
                (
                    "True -> False",
                    "self.controller.observe_write(len(batch.rows), time.perf_counter() - t0, Outcome.TOO_LARGE, True)",
                ),
                (
                    "True -> False",
                    "self.controller.observe_write(len(batch.rows), elapsed, Outcome.of(err.reason), True)",
                ),
            )
        },
        "1 -> 0 @ if len(batch.rows) > 1 and root.get(_split_key(batch)) is not None:": (
            "a split is recorded only for parts of two rows or more (a re-claim has the same rows), so a part"
            " of one row or none never finds one"
        ),
    },
    "flusher/runner.py": {
        **{
            f"{d} @ {line}": "INFO memory always reports used_memory and maxmemory: the default is never taken"
            for d in ("0 -> 1", "0 -> -1")
            for line in (
                'm.redis_used_memory.set(float(info.get("used_memory", 0)))',
                'm.redis_maxmemory.set(float(info.get("maxmemory", 0)))',
            )
        },
        (
            "True -> False @ threading.Thread(target=self._run_hosted, args=(task,),"
            ' name=f"oceanus-hosted-{i}", daemon=True)'
        ): (
            "a hosted thread still alive after the drain makes the run unclean, and an unclean serve() leaves"
            " by os._exit, which waits for no thread, daemon or not"
        ),
    },
    "collector/validate.py": {
        "1 -> 0 @ if len(funcs) == 1:": "a shortcut: apply() over one transform returns what that transform returns",
        "return value -> None @ return 0": "_plain_max's 0 is only ever tested for truth: None is as false",
        'return value -> None @ return "null"': (
            "no check sees None: both validators take a null as absent before calling the field's check"
        ),
    },
    "collector/pusher.py": {
        "return value -> None @ return []": "both callers that read it test it for truth only: None is as empty",
        ">= -> > @ with_stats = time.monotonic() >= self._stats_due": (
            "differs only on a clock reading equal to the float set STATS_EVERY_S earlier, and then only"
            " moves the stats to the next round, which 'at most every STATS_EVERY_S' allows"
        ),
        "0.0 -> 1.0 @ self._drain_deadline = 0.0": (
            "read only once _stopping is set, and drain() sets the deadline before it sets _stopping"
        ),
    },
    "collector/resp.py": {
        **{
            f"{d} @ self.expected = 0": (
                "_round sets expected with the waiter before writing; with no waiter any reply drops the connection"
            )
            for d in ("0 -> 1", "0 -> -1")
        },
        "True -> False @ protocol.lost = True": (
            "close() also forgets the protocol, so the link never reads that flag again; abort() sets it anyway"
        ),
        "0 -> -1 @ reply = (await self._round(protocol, command, 1))[0]": "a round of one reply: [-1] is [0]",
    },
    "oceanus/buffer.py": {
        '2 -> 3 @ return inflight_key.rsplit(":", 2)[-2]': _RSPLIT,
        **{
            f"1 -> 2 @ {line}": "any read past the cap is refused by _check_inflated: +1 or +2, never more is kept"
            for line in (
                "payload = z.decompress(body[:-_CRC_BYTES], FRAME_MAX_INFLATED_BYTES + 1)",
                "payload = z.decompress(body, FRAME_MAX_INFLATED_BYTES + 1)",
            )
        },
    },
}

_SWAP_BIN: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}
_SWAP_CMP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_SYMBOL = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.FloorDiv: "//",
    ast.Div: "/",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.And: "and",
    ast.Or: "or",
}


@dataclass
class Mutant:
    module: str
    index: int
    line: int
    description: str
    source_line: str
    source: str
    #: Which of the same description on the same line (``+ -> -`` twice in one expression).
    occurrence: int = 0

    @property
    def key(self) -> str:
        return f"{self.description} @ {self.source_line}" + (f" #{self.occurrence}" if self.occurrence else "")


class _Finder(ast.NodeVisitor):
    """Collects (node, replacement expression text, description) for one module."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.AST, str, str]] = []

    # Annotations, docstrings and decorators are not behaviour.
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_arg(self, node: ast.arg) -> None:
        return

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return  # f-strings: messages and key names, pinned by the key tests

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            return
        self.generic_visit(node)

    def _add(self, node: ast.AST, new: ast.AST | str, description: str) -> None:
        text = new if isinstance(new, str) else ast.unparse(new)
        self.found.append((node, text, description))

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = _SWAP_BIN.get(type(node.op))
        if swap is not None:
            self._add(node, ast.BinOp(node.left, swap(), node.right), f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[swap]}")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        swap = _SWAP_BIN.get(type(node.op))
        if swap is not None:
            new = ast.AugAssign(node.target, swap(), node.value)
            self._add(node, new, f"{_SYMBOL[type(node.op)]}= -> {_SYMBOL[swap]}=")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            swap = _SWAP_CMP.get(type(op))
            if swap is not None:
                ops = list(node.ops)
                ops[i] = swap()
                self._add(
                    node, ast.Compare(node.left, ops, node.comparators), f"{_SYMBOL[type(op)]} -> {_SYMBOL[swap]}"
                )
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, ast.BoolOp(other, node.values), f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[type(other)]}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._add(node, f"({ast.unparse(node.operand)})", "not dropped")
        elif isinstance(node.op, ast.USub):
            self._add(node, f"({ast.unparse(node.operand)})", "unary - dropped")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, bool):
            self._add(node, repr(not v), f"{v} -> {not v}")
        elif isinstance(v, int):
            self._add(node, repr(v + 1), f"{v} -> {v + 1}")
            self._add(node, repr(v - 1), f"{v} -> {v - 1}")
        elif isinstance(v, float):
            self._add(node, repr(v + 1.0), f"{v} -> {v + 1.0}")
        elif v is None:
            return

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "return None", "return value -> None")
        self.generic_visit(node)

    def visit_Slice(self, node: ast.Slice) -> None:
        for name in ("lower", "upper"):
            bound = getattr(node, name)
            if bound is not None:
                self._add(bound, f"({ast.unparse(bound)}) + 1", f"slice {name} + 1")
        self.generic_visit(node)


def _splice(source: str, node: ast.AST, text: str) -> str:
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    raw = source.encode()
    start = offsets[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    end = offsets[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    if not isinstance(node, ast.stmt):
        text = f"({text})"
    return (raw[:start] + text.encode() + raw[end:]).decode()


def _source(module: str, rev: str | None) -> str:
    """The module at commit ``rev``, or in the working tree when ``rev`` is None."""
    if rev is None:
        return (REPO / module).read_text()
    return subprocess.run(
        ["git", "show", f"{rev}:{module}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout


def mutants_of(module: str, rev: str | None = None) -> list[Mutant]:
    source = _source(module, rev)
    lines = source.splitlines()
    finder = _Finder()
    finder.visit(ast.parse(source))
    out: list[Mutant] = []
    for node, text, description in sorted(finder.found, key=lambda f: (f[0].lineno, f[0].col_offset)):  # type: ignore[attr-defined]
        new = _splice(source, node, text)
        ast.parse(new)  # a mutant must at least be Python
        line = node.lineno  # type: ignore[attr-defined]
        out.append(Mutant(module, len(out), line, description, lines[line - 1].strip(), new))
    for mod, old, repl, description in HAND:
        if mod != module:
            continue
        if source.count(old) != 1:
            raise SystemExit(f"hand mutant {description!r}: {old!r} occurs {source.count(old)} times in {module}")
        line = source[: source.index(old)].count("\n") + 1
        out.append(Mutant(module, len(out), line, description, lines[line - 1].strip(), source.replace(old, repl)))
    seen: dict[tuple[int, str], int] = {}
    for m in out:
        m.occurrence = seen.get((m.line, m.description), 0)
        seen[(m.line, m.description)] = m.occurrence + 1
    return out


def _copy_tree(scratch: Path, rev: str | None) -> None:
    if rev is not None:
        # Exactly the files committed at rev (``git ls-files`` content there), never the working tree's.
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, check=True, capture_output=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(scratch, filter="data")
        return
    ignore = shutil.ignore_patterns(
        ".venv",
        ".git",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        ".benchmarks",
        "build",
        "*.egg-info",
        ".oceanus",
    )
    shutil.copytree(REPO, scratch, ignore=ignore, dirs_exist_ok=True)


def _pytest(scratch: Path, files: list[str], timeout_s: float) -> str:
    """'pass', 'fail' or 'timeout' for one pytest run in the scratch tree."""
    files = [f for f in files if (scratch / f).exists()]
    if not files:
        return "pass"
    env = dict(os.environ, PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow", *files]
    try:
        proc = subprocess.run(
            cmd,
            cwd=scratch,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "pass" if proc.returncode == 0 else "fail"


def run_module(module: str, scratch: Path, mutants: list[Mutant], timeout_s: float, log: bool) -> dict[str, object]:
    fast, slow = MODULES[module]
    target = scratch / module
    original = target.read_text()
    if _pytest(scratch, fast + slow, timeout_s * 4) != "pass":
        raise SystemExit(f"{module}: its tests fail without any mutant; fix that first")
    equivalent = EQUIVALENT.get(module, {})
    results: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        for m in mutants:
            if m.key in equivalent:
                results.append({**_brief(m), "outcome": "equivalent", "reason": equivalent[m.key]})
                continue
            target.write_text(m.source)
            outcome = _pytest(scratch, fast, timeout_s)
            if outcome == "pass":
                outcome = _pytest(scratch, slow, timeout_s)
            outcome = {"pass": "survived", "fail": "killed", "timeout": "timeout"}[outcome]
            results.append({**_brief(m), "outcome": outcome})
            if log:
                print(f"  {module}:{m.line} {m.description}: {outcome}", flush=True)
    finally:
        target.write_text(original)
    return _summary(module, results, round(time.monotonic() - started))


def _summary(module: str, results: list[dict[str, object]], seconds: int) -> dict[str, object]:
    counted = [r for r in results if r["outcome"] != "equivalent"]
    killed = sum(1 for r in counted if r["outcome"] in ("killed", "timeout"))
    return {
        "module": module,
        "mutants": len(results),
        "equivalent": len(results) - len(counted),
        "killed": killed,
        "survived": len(counted) - killed,
        "score": round(100.0 * killed / len(counted), 1) if counted else 100.0,
        "seconds": seconds,
        "results": results,
    }


def _rerun_of(old: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The re-run outcome of an earlier mutant: same key, nearest line (the same text may
    occur on two lines, and lines move when the module is edited between runs)."""
    same = [x for x in rows if x["key"] == old["key"]]
    return min(same, key=lambda x: abs(int(x["line"]) - int(old["line"]))) if same else old


def _brief(m: Mutant) -> dict[str, object]:
    d = asdict(m)
    del d["source"]
    d["key"] = m.key
    return d


def markdown(report: list[dict[str, object]], command: str) -> str:
    out = [
        f"Command: `{command}`",
        "",
        "| module | mutants | equivalent | killed | survived | score |",
        "|---|---|---|---|---|---|",
    ]
    for r in report:
        out.append(
            f"| `{r['module']}` | {r['mutants']} | {r['equivalent']} | {r['killed']} | {r['survived']} "
            f"| {r['score']} % |"
        )
    for r in report:
        rows = cast(list[dict[str, object]], r["results"])
        survivors = [x for x in rows if x["outcome"] == "survived"]
        equivalents = [x for x in rows if x["outcome"] == "equivalent"]
        if survivors:
            out += ["", f"Survivors in `{r['module']}`:"]
            out += [f"- line {x['line']}: {x['description']} — `{x['source_line']}`" for x in survivors]
        if equivalents:
            out += ["", f"Equivalent in `{r['module']}`:"]
            out += [f"- line {x['line']}: {x['description']} — {x['reason']}" for x in equivalents]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--module", action="append", choices=sorted(MODULES), help="repeatable; default: all")
    p.add_argument("--sample", type=int, default=1, help="run every Nth mutant (an even sample)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per pytest run of one mutant")
    p.add_argument("--only-survivors", type=Path, help="re-run only the survivors of an earlier report.json")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument("--out", type=Path, default=REPO / "build" / "mutate")
    p.add_argument(
        "--worktree", action="store_true", help="mutate and test the working tree as it is, not the HEAD commit"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    rev = None
    if not args.worktree:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.strip()
        print(f"mutating commit {rev[:12]} (HEAD); uncommitted edits are not part of this run", flush=True)
    modules = args.module or list(MODULES)
    previous: dict[str, set[str]] = {}
    earlier: dict[str, dict[str, Any]] = {}
    if args.only_survivors:
        for r in json.loads(args.only_survivors.read_text()):
            previous[r["module"]] = {x["key"] for x in r["results"] if x["outcome"] == "survived"}
            earlier[r["module"]] = r
        modules = [m for m in modules if m in previous]
    report = []
    scratch = Path(tempfile.mkdtemp(prefix="oceanus-mutate-"))
    try:
        _copy_tree(scratch, rev)
        for module in modules:
            mutants = mutants_of(module, rev)
            if args.only_survivors:
                # By key, not by position: a commit since the first run may have shifted the sample.
                mutants = [m for m in mutants if m.key in previous[module]]
            else:
                mutants = mutants[:: args.sample]
            if args.list:
                for m in mutants:
                    print(f"{module}:{m.line} {m.description} — {m.source_line}")
                continue
            print(f"{module}: {len(mutants)} mutants", flush=True)
            r = run_module(module, scratch, mutants, args.timeout, args.verbose)
            print(
                f"{module}: {r['score']} % ({r['killed']} killed, {r['survived']} survived, "
                f"{r['equivalent']} equivalent) in {r['seconds']} s",
                flush=True,
            )
            if module in earlier:
                # The re-run replaces the earlier outcomes of those mutants: one complete report.
                # The same change on two lines with the same text shares a key: the line tells them apart.
                # If a commit since moved the lines, the same key on the nearest line is that mutant.
                rows = cast(list[dict[str, Any]], r["results"])
                merged = [_rerun_of(x, rows) for x in earlier[module]["results"]]
                # A survivor found equivalent since (its line may have left the module meanwhile).
                equivalent = EQUIVALENT.get(module, {})
                merged = [
                    {**x, "outcome": "equivalent", "reason": equivalent[x["key"]]}
                    if x["outcome"] == "survived" and x["key"] in equivalent
                    else x
                    for x in merged
                ]
                r = _summary(module, merged, int(earlier[module]["seconds"]) + cast(int, r["seconds"]))
                print(f"{module} with the earlier run: {r['score']} %", flush=True)
            report.append(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if report:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        command = "python tools/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
        (args.out / "report.md").write_text(markdown(report, command.strip()))
        print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
