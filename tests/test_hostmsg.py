"""The guest stub's parser of the host's control messages (guest-stubs/src/hostmsg.c,
tracers/FORMAT.md 7.1), fed hostile bytes.

The parser is the stub's own C file, compiled here for the host with gcc (with address
and undefined-behaviour sanitizers, so a read or write out of bounds fails the test)
and linked to a small harness this test writes: it feeds the bytes it is given in the
chunks it is given and prints the parser's state after each. The messages are built
here from FORMAT.md's table, not by undebug's encoder (which is checked against them).
The same parser in a real guest taking garbage from its trace port: test_trace_lease.py.
"""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import pytest

from undebug.session.live_trace import message

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "guest-stubs" / "src"

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "hostmsg.h"

/* stdin: chunks of (u32 length, bytes); after each: "live_ms applied rejected changed" */
int main(void)
{
	struct undebug_hostmsg_parser p = {0};
	unsigned char lenb[4];
	while (fread(lenb, 1, 4, stdin) == 4) {
		uint32_t n = lenb[0] | lenb[1] << 8 | lenb[2] << 16 | (uint32_t)lenb[3] << 24;
		uint8_t *buf = malloc(n ? n : 1);   /* exactly n: the sanitizer sees overreads */
		if (!buf || fread(buf, 1, n, stdin) != n)
			return 2;
		int changed = undebug__hostmsg_feed(&p, buf, n);
		printf("%u %u %u %d\n", p.live_ms, p.applied, p.rejected, changed);
		free(buf);
	}
	return 0;
}
"""

MAGIC = 0x4C544355  # "UCTL"


def msg(op: int, value: int, *, magic: int = MAGIC, version: int = 1, reserved: int = 0,
        reserved2: int = 0) -> bytes:
    """FORMAT.md 7.1: magic u32, version u8, op u8, reserved u16, value u32, reserved u32."""
    return struct.pack("<IBBHII", magic, version, op, reserved, value, reserved2)


LIVE20 = msg(1, 20)
REST = msg(2, 0)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hostmsg")
    (tmp / "harness.c").write_text(HARNESS)
    exe = tmp / "harness"
    subprocess.run(["gcc", "-g", "-O1", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{SRC}", str(tmp / "harness.c"), str(SRC / "hostmsg.c"), "-o", str(exe)],
                   check=True)
    return exe


def feed(harness: Path, *chunks: bytes) -> list[tuple[int, int, int, int]]:
    data = b"".join(struct.pack("<I", len(c)) + c for c in chunks)
    run = subprocess.run([str(harness)], input=data, capture_output=True, timeout=60,
                         check=True)
    return [tuple(int(x) for x in line.split()) for line in run.stdout.splitlines()]  # type: ignore[misc]


def test_undebugs_encoder_writes_the_documented_messages() -> None:
    assert message(1, 20) == LIVE20
    assert message(2, 0) == REST


def test_live_then_rest_are_taken(harness: Path) -> None:
    assert feed(harness, LIVE20, REST) == [(20, 1, 0, 1), (0, 2, 0, 1)]


def test_a_message_split_byte_by_byte_or_packed_with_others_is_taken(harness: Path) -> None:
    split = feed(harness, *(bytes([b]) for b in msg(1, 33)))
    assert split[-1] == (33, 1, 0, 1)
    assert all(state[:2] == (0, 0) for state in split[:-1])
    assert feed(harness, msg(1, 7) + REST + msg(1, 1000)) == [(1000, 3, 0, 1)]


@pytest.mark.parametrize("bad", [
    msg(1, 20, magic=MAGIC ^ 1), msg(1, 20, version=2), msg(1, 20, version=0),
    msg(3, 20), msg(0, 20), msg(255, 20), msg(1, 20, reserved=1), msg(1, 20, reserved2=1),
    msg(1, 0), msg(1, 1001), msg(1, 0xFFFFFFFF), msg(2, 20)])
def test_each_malformed_message_is_refused_and_the_next_good_one_taken(
        harness: Path, bad: bytes) -> None:
    states = feed(harness, LIVE20, bad, msg(1, 40))
    assert states[1][0] == 20 and states[1][1] == 1 and states[1][2] >= 1  # refused
    assert states[2][:2] == (40, 2)  # found again right after


def test_garbage_never_stops_later_messages(harness: Path) -> None:
    rng = random.Random(12)
    garbage = bytes(rng.getrandbits(8) for _ in range(200_000))
    # magic bytes inside the garbage, and a truncated message right before a good one
    tricky = LIVE20[:4] * 50 + LIVE20[:15]
    states = feed(harness, garbage, tricky + msg(1, 55), garbage[:999], REST)
    assert states[0][2] > 0  # the garbage was refused
    assert states[1][0] == 55
    assert states[3][0] == 0 and states[3][1] == states[1][1] + 1
