"""The RSP packet splitter both the client and the server use: framing, noise, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from undebug.gdb.packets import Control, Dropped, Event, Packet, PacketSplitter, decode


def pkt(body: bytes, checksum: int | None = None) -> bytes:
    """``$body#cc`` written out here, independently of packets.frame()."""
    return b"$%b#%02x" % (body, sum(body) % 256 if checksum is None else checksum)


def feed_all(splitter: PacketSplitter, *pieces: bytes) -> list[Event]:
    return [event for piece in pieces for event in splitter.feed(piece)]


def test_a_packet_fed_a_byte_at_a_time_is_one_packet_at_its_last_byte() -> None:
    wire = pkt(b"m1000,40")
    splitter = PacketSplitter()
    events = [splitter.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert events[:-1] == [[]] * (len(wire) - 1)
    assert events[-1] == [Packet(b"m1000,40", True)]


def test_escaped_frame_bytes_stay_in_the_body_and_decode_undoes_them() -> None:
    body = b"X0,4:}]}\x03}\x04}\n"  # '}', '#', '$', '*' escaped
    [packet] = PacketSplitter().feed(pkt(body))
    assert packet == Packet(body, True)
    assert decode(packet.body) == b"X0,4:}#$*"


def test_run_length_encoding_is_left_for_decode() -> None:
    [packet] = PacketSplitter().feed(pkt(b"0* 1"))
    assert packet == Packet(b"0* 1", True)
    assert decode(packet.body) == b"00001"


@pytest.mark.parametrize("checksum", [b"00", b"zz", b"+1", b" 1"])
def test_a_wrong_or_malformed_checksum_is_a_packet_marked_bad(checksum: bytes) -> None:
    body = b"qC"  # its checksum is b4
    events = PacketSplitter().feed(b"$qC#" + checksum + pkt(b"g"))
    assert events == [Packet(body, False), Packet(b"g", True)]


def test_acks_naks_and_interrupts_between_packets_are_events_in_order() -> None:
    events = PacketSplitter().feed(b"+" + pkt(b"c") + b"\x03-" + pkt(b"?") + b"+")
    assert events == [Control.ACK, Packet(b"c", True), Control.INTERRUPT, Control.NACK,
                      Packet(b"?", True), Control.ACK]


def test_control_bytes_inside_a_packet_are_data() -> None:
    body = b"X0,3:\x03+-"  # binary X data is not escaped for these
    assert PacketSplitter().feed(pkt(body)) == [Packet(body, True)]


def test_garbage_before_a_packet_is_skipped() -> None:
    splitter = PacketSplitter()
    assert splitter.feed(b"junk\xff\x00 #00") == []
    assert splitter.feed(b"more" + pkt(b"g")) == [Packet(b"g", True)]


def test_a_packet_cut_short_by_the_next_one_is_dropped() -> None:
    events = PacketSplitter().feed(b"$m10,4" + pkt(b"g"))
    assert events == [Dropped(oversized=False), Packet(b"g", True)]


def test_an_oversized_packet_is_dropped_once_and_skipped_to_its_end() -> None:
    splitter = PacketSplitter(limit=16)
    events = feed_all(splitter, b"$" + b"a" * 10, b"b" * 10, b"\x03-+" * 100, b"#00")
    assert events == [Dropped(oversized=True)]  # the tail's 0x03 and '-' are its data
    assert splitter.feed(pkt(b"g")) == [Packet(b"g", True)]


def test_an_oversized_packet_cut_short_by_the_next_one_gives_that_one() -> None:
    splitter = PacketSplitter(limit=4)
    assert feed_all(splitter, b"$123456", b"78" + pkt(b"g")) == [
        Dropped(oversized=True), Packet(b"g", True)]


def test_a_body_at_the_limit_is_kept() -> None:
    assert PacketSplitter(limit=4).feed(pkt(b"1234")) == [Packet(b"1234", True)]


def test_the_checksum_may_arrive_in_pieces() -> None:
    splitter = PacketSplitter()
    assert feed_all(splitter, b"$g#", b"6", b"7\x03") == [Packet(b"g", True), Control.INTERRUPT]


# ---- properties ----------------------------------------------------------------------------

LIMIT = 64
NOISE = st.binary(max_size=8).map(lambda b: b.replace(b"$", b""))  # anything but a packet start


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=20))
def test_any_bytes_in_any_pieces_never_raise_stay_bounded_and_split_the_same(
        data: bytes, cuts: list[int]) -> None:
    whole = PacketSplitter(limit=LIMIT).feed(data)
    splitter = PacketSplitter(limit=LIMIT)
    events: list[Event] = []
    for piece in chunked(data, cuts):
        events += splitter.feed(piece)
        assert len(splitter._body or b"") <= LIMIT  # what it holds between feeds
        assert len(splitter._checksum or b"") < 2
    assert events == whole
    assert sum(len(e.body) + 4 if isinstance(e, Packet) else 1 for e in events) <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NOISE, st.binary(max_size=2 * LIMIT).map(
    lambda b: b.translate(None, b"$#"))), max_size=10),
       st.lists(st.integers(min_value=0), max_size=20))
def test_framed_packets_between_noise_come_out_whole_or_as_oversized(
        items: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    wire = b"".join(noise + pkt(body) for noise, body in items)
    splitter = PacketSplitter(limit=LIMIT)
    events = [e for piece in chunked(wire, cuts) for e in splitter.feed(piece)]
    expected: list[Event] = []
    for noise, body in items:
        expected += [Control(b) for b in noise if b in (0x2B, 0x2D, 0x03)]
        expected.append(Packet(body, True) if len(body) <= LIMIT else Dropped(oversized=True))
    assert events == expected
