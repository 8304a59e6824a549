#!/usr/bin/env python3
"""Fetch Debian's lwip source package into a build directory (never into the repo).

    fetch-lwip.py DEST     ->  DEST/lwip-<version>/src/... and DEST/.fetched

A private apt configuration (its own sources list, lists and cache directories under
DEST) holds one deb-src entry per Debian archive among the system's own `deb` entries,
so `apt-get update` and `apt-get source --download-only lwip` need no root and leave
the system's apt state alone.  Only the upstream tarball is unpacked: Debian's patches
port lwIP to Linux, which the reference guest is not.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile


def system_entries() -> list[tuple[str, str, str, str]]:
    """(uri, suite, components, signed_by) of every `deb` entry of the system."""
    out = []
    lists = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in lists:
        try:
            text = open(path, encoding="utf-8").read()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
            if m:
                opts = m.group(1) or ""
                signed = re.search(r"signed-by=(\S+?)[\s\]]", opts + " ")
                out.append((m.group(2), m.group(3), m.group(4).split("#")[0].strip(),
                            signed.group(1) if signed else ""))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(path, encoding="utf-8").read()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                m = re.match(r"([A-Za-z-]+):\s*(.*)", line)
                if m:
                    fields[m.group(1).lower()] = m.group(2).strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    out.append((uri, suite, fields.get("components", ""),
                                fields.get("signed-by", "")))
    return out


def main() -> int:
    dest = os.path.abspath(sys.argv[1])
    # the Debian archive itself (lwip is in main), not security or third-party repositories
    debian = [e for e in system_entries()
              if re.search(r"/debian/?$", e[0]) and "main" in e[2].split()]
    if not debian:
        print("fetch-lwip: no Debian `deb` entry with main in /etc/apt: cannot fetch lwip",
              file=sys.stderr)
        return 3
    apt = os.path.join(dest, "apt")
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        os.makedirs(os.path.join(apt, sub), exist_ok=True)
    with open(os.path.join(apt, "sources.list"), "w", encoding="utf-8") as f:
        for uri, suite, _, signed in debian:
            opt = f"[signed-by={signed}] " if signed else ""
            f.write(f"deb-src {opt}{uri} {suite} main\n")
    conf = ["-o", f"Dir::Etc::SourceList={apt}/sources.list",
            "-o", f"Dir::Etc::SourceParts={apt}/sources.list.d",
            "-o", f"Dir::State::Lists={apt}/lists",
            "-o", f"Dir::Cache={apt}/cache",
            "-o", "Debug::NoLocking=1"]
    if os.getuid() == 0:                    # files under DEST are not the _apt user's
        conf += ["-o", "APT::Sandbox::User=root"]
    subprocess.run(["apt-get", "-q", *conf, "update"], check=True, stdout=subprocess.DEVNULL)
    dl = os.path.join(dest, "src")
    shutil.rmtree(dl, ignore_errors=True)
    os.makedirs(dl)
    subprocess.run(["apt-get", "-q", *conf, "source", "--download-only", "lwip"],
                   check=True, cwd=dl, stdout=subprocess.DEVNULL)
    tarballs = glob.glob(os.path.join(dl, "lwip_*.orig.tar.*"))
    if len(tarballs) != 1:
        print(f"fetch-lwip: expected one lwip orig tarball in {dl}, found {tarballs}",
              file=sys.stderr)
        return 3
    with tarfile.open(tarballs[0]) as t:
        for member in t.getmembers():       # nothing outside DEST, no links or devices
            if member.isdev() or member.issym() or member.islnk() or \
                    os.path.isabs(member.name) or ".." in member.name.split("/"):
                continue
            t.extract(member, dest)
    trees = glob.glob(os.path.join(dest, "lwip-*/src/core/tcp.c"))
    if not trees:
        print("fetch-lwip: the tarball holds no lwip-*/src/core/tcp.c", file=sys.stderr)
        return 3
    link = os.path.join(dest, "lwip")
    if os.path.islink(link):
        os.unlink(link)
    os.symlink(os.path.dirname(os.path.dirname(os.path.dirname(trees[0]))), link)
    open(os.path.join(dest, ".fetched"), "w").close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
