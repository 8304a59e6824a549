"""A real Nanos disk image through ``undebug run``: booted on the machine Nanos needs
(q35, virtio-scsi, virtio-rng) from the disk alone, its kernel's KASLR slide found at
run time, the program's threads by tid and name with backtraces in the program's ELF,
the kernel's frames at their slid addresses, its crash stopped and told in words, its
exit code read as Nanos means it.

The images are built outside the repository (never committed; /work/nanos/BUILD.md says
how): UNDEBUG_NANOS_DISK is a static program whose threads name themselves worker-0..2
(pthread_setname_np) and loop in worker_main -> do_work -> nanosleep;
UNDEBUG_NANOS_CRASH_DISK the same ELF, started with the argument "crash": its worker-1
writes through NULL in do_work about 3 s in. UNDEBUG_NANOS_PROGRAM is that ELF,
UNDEBUG_NANOS_KERNEL_ELF the kernel.elf the images' kernel.img was stripped from,
UNDEBUG_NANOS_THREAD_TEST_DISK Nanos' own ``make image TARGET=thread_test``;
UNDEBUG_NANOS_NET_DISK a static program that binds a TCP listener on 8080 and a UDP
socket on 5353 and prints the fds socket() gave it ("netd listening: tcp fd N, udp fd M")."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import real_image, undebug, wait_for_console

KERNEL_BASE = 0xFFFF_FFFF_8000_0000  # Nanos' kernel runs in the top 2 GiB (KERNEL_BASE)


def _nm(elf: Path) -> dict[str, int]:
    """Symbol -> link address, by binutils' nm (not undebug's ELF reader)."""
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for line in out.splitlines()
            if len(parts := line.split()) == 3}


@pytest.fixture(scope="module")
def workers() -> object:
    disk, kernel = real_image("UNDEBUG_NANOS_DISK"), real_image("UNDEBUG_NANOS_KERNEL_ELF")
    program = real_image("UNDEBUG_NANOS_PROGRAM")
    # --forward only for the NIC it brings (virtio-net on QEMU user networking): the
    # program listens on nothing, so guest port 8080 is never answered
    result = undebug("run", "-d", "--name", "nanosw", "--forward", "tcp::8080",
                     "--debug-elf", str(kernel), "--debug-elf", str(program), str(disk),
                     timeout=300)
    assert result.code == 0, result.stderr
    try:
        wait_for_console("nanosw", "workers started", timeout=120)
        yield kernel
    finally:
        undebug("kill", "nanosw")


def test_threads_are_listed_by_tid_and_name(workers: Path) -> None:
    threads = undebug("threads", "nanosw", "--json")
    assert threads.code == 0, threads.stderr
    listed = threads.json()["threads"]
    workers_seen = {t["name"]: t for t in listed if t["name"].startswith("worker-")}
    assert sorted(workers_seen) == ["worker-0", "worker-1", "worker-2"], listed
    tids = [t["id"] for t in workers_seen.values()]
    assert len(set(tids)) == 3 and all(0 < tid < 0x3FFF_0000 for tid in tids), tids


def test_backtraces_reach_the_program_and_the_kernel_at_its_slide(workers: Path) -> None:
    bt = undebug("bt", "nanosw", "--all", "--json")
    assert bt.code == 0, bt.stderr
    traces = bt.json()["backtraces"]
    for trace in traces:
        if trace["thread"]["name"].startswith("worker-"):
            functions = [f["function"] for f in trace["frames"]]
            assert functions.index("do_work") < functions.index("worker_main"), functions
            assert "start_thread" in functions, functions
    kernel_frames = [f for t in traces if t["thread"]["name"].startswith("kernel")
                     for f in t["frames"]]
    assert kernel_frames, [t["thread"]["name"] for t in traces]
    symbols = _nm(workers)
    slides = set()
    for frame in kernel_frames:
        assert frame["pc"] >= KERNEL_BASE and frame["function"], frame
        slides.add(frame["pc"] - frame["offset"] - symbols[frame["function"]])
    assert len(slides) == 1, slides  # one slide, the same for every kernel frame
    slide = slides.pop()
    assert slide != 0 and slide % 4096 == 0
    # The kernel's own record of its offset, read at the slid address of the symbol
    # (KERNEL_BASE + kas_kern_offset - START; kernel_phys_offset is 0 on x86 Nanos)
    mem = undebug("mem", "nanosw", "kas_kern_offset", "8", "--json")
    assert mem.code == 0, mem.stderr
    assert mem.json()["address"] == symbols["kas_kern_offset"] + slide
    assert int.from_bytes(bytes.fromhex(mem.json()["hex"]), "little") == slide


def test_stock_gdb_sees_the_threads_by_name(workers: Path, tmp_path: Path) -> None:
    import sys

    program = real_image("UNDEBUG_NANOS_PROGRAM")
    sock = tmp_path / "gdb.sock"
    server = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", "nanosw",
                               "--listen", str(sock), "--symbol-file", str(program)],
                              stdout=subprocess.PIPE, text=True)  # gdb has the program
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith(f"listening on {sock}")
        out = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote {sock}",
                              "-ex", "info threads", "-ex", "thread apply all bt",
                              "-ex", "detach", str(program)],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        server.terminate()  # the server this test started, by its Popen
        server.wait(timeout=30)
    for name in ("worker-0", "worker-1", "worker-2"):  # blocked in nanosleep, or running
        assert f'"{name}" (' in out, out
    assert out.count("in worker_main (") == 3, out
    assert "(running on vCPU 0)" in out, out  # a worker, or the kernel's context


def test_a_crashing_program_fails_ci_naming_the_signal_thread_and_function() -> None:
    disk, kernel = real_image("UNDEBUG_NANOS_CRASH_DISK"), real_image("UNDEBUG_NANOS_KERNEL_ELF")
    program = real_image("UNDEBUG_NANOS_PROGRAM")
    result = undebug("run", "--ci", "--timeout", "240", "--debug-elf", str(kernel),
                     "--debug-elf", str(program), str(disk), timeout=300)
    assert result.code == 1, (result.stdout, result.stderr)
    last = result.stdout.splitlines()[-1]
    assert last.startswith("undebug: FAIL: SIGSEGV at address 0x0 in do_work"), last
    assert "'worker-1'" in last and "default_signal_action" in last, last


def test_thread_test_passes_ci() -> None:
    disk, kernel = real_image("UNDEBUG_NANOS_THREAD_TEST_DISK"), real_image("UNDEBUG_NANOS_KERNEL_ELF")
    result = undebug("run", "--ci", "--timeout", "240", "--debug-elf", str(kernel),
                     str(disk), timeout=300)
    assert result.code == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-1] == \
        "undebug: PASS: Nanos exited cleanly (isa-debug-exit code 0)"


def test_net_shows_the_interface_dhcp_configured_from_qemu_user_net(workers: Path) -> None:
    """Nanos' lwIP fork keeps lwIP's globals (netif_list, the pcb lists) in the kernel
    ELF: the walker reads them at their slid addresses. QEMU's user network hands out
    10.0.2.15/24 with gateway 10.0.2.2 (its documented defaults); lwIP's DHCP client
    holds a UDP pcb on port 68."""
    net = undebug("net", "nanosw", "--json")
    assert net.code == 0, net.stderr
    doc = net.json()
    assert doc["lwip"] is True, doc["warnings"]
    dhcp = [i for i in doc["interfaces"] if i["ipv4"] == "10.0.2.15"]
    assert len(dhcp) == 1, doc["interfaces"]
    assert dhcp[0]["netmask"] == "255.255.255.0" and dhcp[0]["gateway"] == "10.0.2.2"
    assert dhcp[0]["link"] is True and dhcp[0]["address"] >= KERNEL_BASE - (1 << 47)
    assert any(s["proto"] == "udp" and s["local_port"] == 68 for s in doc["sockets"]), \
        doc["sockets"]


def _gdb_prints(kernel: Path, tmp_path: Path, *expressions: str) -> list[str]:
    """What stock gdb, on the kernel ELF over ``undebug gdbserver`` (which answers
    qOffsets with the slide), prints for each expression."""
    import sys

    sock = tmp_path / "gdb.sock"
    server = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", "nanosw",
                               "--listen", str(sock)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith(f"listening on {sock}")
        command = ["gdb", "-batch", "-nx", "-ex", f"target remote {sock}"]
        for expression in expressions:
            command += ["-ex", f"print {expression}"]
        out = subprocess.run([*command, "-ex", "detach", str(kernel)], capture_output=True,
                             text=True, timeout=120).stdout
    finally:
        server.terminate()  # the server this test started, by its Popen
        server.wait(timeout=30)
    return [line.split(" = ", 1)[1] for line in out.splitlines()
            if line.startswith("$") and " = " in line]


def test_heap_reads_the_kernel_heaps_as_gdb_does(workers: Path, tmp_path: Path) -> None:
    heap = undebug("heap", "nanosw", "--json")
    assert heap.code == 0, heap.stderr
    reports = {h["allocator"].split(" ")[0]: h for h in heap.json()["heaps"]}
    assert {"heaps->physical", "heaps->virtual_huge", "heaps->general"} <= set(reports), reports
    counted = [h for h in reports.values() if h["total"] is not None]
    assert len(counted) >= 3, reports
    for report in counted:
        assert report["total"] > report["used"] >= 0, report
        assert report["free"] == report["total"] - report["used"], report
    assert reports["heaps->general"]["used"] > 0  # the mcache behind kernel malloc
    # totals are fixed once the kernel has set its heaps up: safe to read twice
    physical, virtual = _gdb_prints(workers, tmp_path, "page_heap.total",
                                    "((struct id_heap *)heaps.virtual_huge)->total")
    assert int(physical) == reports["heaps->physical"]["total"]
    assert int(virtual) == reports["heaps->virtual_huge"]["total"]


def test_maps_names_the_kernel_at_its_slide_and_the_program(workers: Path) -> None:
    maps = undebug("maps", "nanosw", "--json")
    assert maps.code == 0, maps.stderr
    regions = maps.json()["regions"]
    symbols = _nm(workers)
    mem = undebug("mem", "nanosw", "kas_kern_offset", "8", "--json")
    slide = int.from_bytes(bytes.fromhex(mem.json()["hex"]), "little")
    text = [r for r in regions if ".text" in r["names"]]
    assert text and text[0]["start"] <= symbols["start_process"] + slide < text[-1]["end"]
    kernel = [r for r in regions if "kernel" in r["kinds"]]
    # START: the first byte of the kernel's .text, its lowest loaded section
    assert kernel[0]["start"] == text[0]["start"] == symbols["START"] + slide, kernel[0]
    assert text[0]["mapped"] and not text[0]["user"] and text[0]["executable"], text[0]
    # the program's own sections, in user mode at its link address (a static ELF)
    program = _nm(real_image("UNDEBUG_NANOS_PROGRAM"))
    code = [r for r in regions if "workers .text" in r["names"] and r["mapped"]]
    assert code and all(r["user"] and r["executable"] for r in code), code
    assert any(r["start"] <= program["do_work"] < r["end"] for r in
               (r for r in regions if "workers .text" in r["names"]))
    # demand paging leaves most of the program unmapped: named, and not a flaw
    assert any(not r["mapped"] for r in regions if "program" in r["kinds"])
    assert not any("unmapped" in r["flags"] for r in regions if "program" in r["kinds"])
    # each worker's user stack: the process's mapping its saved rsp lies in
    threads = undebug("threads", "nanosw", "--json").json()["threads"]
    workers_seen = {t["name"]: t["id"] for t in threads if t["name"].startswith("worker-")}
    spans = set()
    for name, tid in workers_seen.items():
        stack = [r for r in regions if f"user stack of {name}" in r["names"]]
        assert stack and all(r["threads"] == [tid] for r in stack), (name, stack)
        assert all(r["user"] and r["writable"] for r in stack if r["mapped"]), stack
        spans.add((stack[0]["start"], stack[-1]["end"]))
    assert len(spans) == 3, spans  # three distinct stacks


def test_sym_gives_link_addresses_and_says_so(workers: Path) -> None:
    """sym reads only the ELF: on Nanos (KASLR) it says its addresses are link ones."""
    sym = undebug("sym", "nanosw", "kas_kern_offset", "--json")
    assert sym.code == 0, sym.stderr
    assert sym.json()["address"] == _nm(workers)["kas_kern_offset"]
    assert any("link addresses" in w for w in sym.json()["warnings"]), sym.json()


def test_the_crash_stop_holds_only_for_signals_whose_default_is_fatal() -> None:
    """default_signal_action(t, qs) also gets SIGCHLD and the like, and returns: the crash
    stop's condition is on qs->si.si_signo (its offset as gdb computes it from the DWARF)."""
    from undebug.elf import ElfFile
    from undebug.os.nanos import NanosProvider

    kernel = real_image("UNDEBUG_NANOS_KERNEL_ELF")
    (stop,) = NanosProvider.crash_stops(ElfFile(kernel))
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex",
                          "print (long)&((struct queued_signal *)0)->si.si_signo", str(kernel)],
                         capture_output=True, text=True, timeout=120).stdout
    assert (stop.register, stop.offset) == ("rsi", int(out.split(" = ")[1]))
    fatal = {stop.value, *stop.values}
    assert {11, 6, 9, 15} <= fatal  # SIGSEGV, SIGABRT, SIGKILL, SIGTERM
    assert not {17, 18, 23, 28} & fatal  # SIGCHLD, SIGCONT, SIGURG, SIGWINCH: ignored


def test_net_gives_the_program_s_sockets_their_fds() -> None:
    """Nanos has no lwIP sockets API: the fds come from the process's fd table (its
    netsock -> pcb), checked against what socket() returned in the program."""
    disk, kernel = real_image("UNDEBUG_NANOS_NET_DISK"), real_image("UNDEBUG_NANOS_KERNEL_ELF")
    result = undebug("run", "-d", "--name", "nanosnet", "--forward", "tcp::8080",
                     "--debug-elf", str(kernel), str(disk), timeout=300)
    assert result.code == 0, result.stderr
    try:
        console = wait_for_console("nanosnet", "netd listening", timeout=120)
        found = re.search(r"netd listening: tcp fd (\d+), udp fd (\d+)", console)
        assert found, console
        net = undebug("net", "nanosnet", "--json")
        assert net.code == 0, net.stderr
        sockets = net.json()["sockets"]
        listener = [s for s in sockets if s["proto"] == "tcp" and s["local_port"] == 8080]
        udp = [s for s in sockets if s["proto"] == "udp" and s["local_port"] == 5353]
        assert [s["state"] for s in listener] == ["LISTEN"], sockets
        assert (listener[0]["fd"], len(udp)) == (int(found[1]), 1), sockets
        assert udp[0]["fd"] == int(found[2]), sockets
        # the kernel's own DHCP client has a pcb and no fd
        assert [s["fd"] for s in sockets if s["local_port"] == 68] == [None], sockets
    finally:
        undebug("kill", "nanosnet")
