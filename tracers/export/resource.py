"""Who the spans come from: the OpenTelemetry resource of an exported recording.

Semantic-convention keys where one fits (``service.name``, ``service.instance.id``,
``host.name``, ``host.arch``, ``os.name``); the guest's own facts under ``unikernel.*``.
``os.type`` is left out: its values are a closed list (linux, windows, darwin, the BSDs,
...) with none for a unikernel, and consumers switch on it; the OS's kind (undebug's
provider: refguest, unikraft, nanos) is ``unikernel.os.type`` instead.
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` are honoured as the OpenTelemetry
SDKs do (the service name given on the command line wins over both).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from tracers.export.attributes import AttrValue
from tracers.records import Session

__all__ = ["resource_attributes"]


def _env_attributes(text: str) -> dict[str, AttrValue]:
    """``key=value,key2=value2`` (values percent-encoded), as the SDKs read
    OTEL_RESOURCE_ATTRIBUTES; malformed members are skipped."""
    out: dict[str, AttrValue] = {}
    for member in text.split(","):
        key, sep, value = member.partition("=")
        if sep and key.strip():
            out[key.strip()] = urllib.parse.unquote(value.strip())
    return out


# platform.machine() -> the semantic conventions' host.arch
# undebug's OS providers -> os.name (human-readable, as the conventions want it)
_OS_NAMES = {"refguest": "undebug reference guest", "unikraft": "Unikraft", "nanos": "Nanos"}

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "i386": "x86", "i686": "x86", "ppc64le": "ppc64", "ppc64": "ppc64", "s390x": "s390x"}


def resource_attributes(*, image: str | None, instance: str, sessions: list[Session],
                        service_name: str | None = None, host: str | None = None,
                        host_arch: str | None = None, os_name: str | None = None,
                        extra: Mapping[str, AttrValue] | None = None,
                        environ: Mapping[str, str] | None = None) -> dict[str, AttrValue]:
    """The resource: ``service.name`` from ``service_name``, else OTEL_SERVICE_NAME,
    else OTEL_RESOURCE_ATTRIBUTES' service.name, else the image's name, else ``unikernel``.
    ``host``/``host_arch``: the hypervisor host's (from the recording's origin);
    ``os_name``: the unikernel's OS provider as undebug knows it (os.name and
    unikernel.os.type); ``extra``: more (QEMU's ``process.*``)."""
    env = os.environ if environ is None else environ
    attrs: dict[str, AttrValue] = {}
    attrs.update(_env_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    name = service_name or env.get("OTEL_SERVICE_NAME") or attrs.get("service.name") \
        or image or "unikernel"
    attrs["service.name"] = str(name)
    attrs.setdefault("service.instance.id", instance)
    if host:
        attrs.setdefault("host.name", host)
    if host_arch:
        attrs.setdefault("host.arch", _ARCH.get(host_arch, host_arch))
    if os_name:
        attrs.setdefault("os.name", _OS_NAMES.get(os_name, os_name))
        attrs["unikernel.os.type"] = os_name
    for key, value in (extra or {}).items():
        attrs.setdefault(key, value)
    attrs["telemetry.sdk.name"] = "undebug"
    if sessions:
        header = sessions[0].header
        if header.build_id:
            attrs["unikernel.build_id"] = header.build_id.hex()
        attrs["unikernel.tsc_hz"] = header.tsc_hz
        attrs["unikernel.cpu_count"] = header.cpu_count
        attrs["unikernel.transport"] = header.transport_name
    return attrs
