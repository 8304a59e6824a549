/* Host (Linux userspace) "OS port" for the undebug guest stub, used only by
 * the trace_cost benchmark (bench/trace_cost.py).  It is linked with the
 * unmodified guest-stubs/src/{trace,transport,virtio}.c, compiled with the
 * guest's own code-generation flags.
 *
 * What the port provides (guest-stubs/README.md, "What the OS provides"):
 *   - timestamp: the stub's default inline rdtsc (no -DUNDEBUG_OS_TIMESTAMP),
 *     exactly as in the guest;
 *   - undebug_os_cpu(): always 0 (the producer thread is pinned to one CPU);
 *   - undebug_os_thread(): the Linux thread id (read once per ring by the stub);
 *   - a transport that does nothing: host_port_nop_write() accepts every
 *     byte (for undebug_trace_use_custom(), streaming mode). */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <undebug/trace.h>

unsigned undebug_os_cpu(void)
{
	return 0;
}

uint64_t undebug_os_thread(void)
{
	return (uint64_t)syscall(SYS_gettid);
}

volatile uint64_t host_port_bytes_sent;

size_t host_port_nop_write(const void *buf, size_t len)
{
	(void)buf;
	host_port_bytes_sent += len;
	return len;
}
