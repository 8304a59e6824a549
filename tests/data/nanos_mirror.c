/* Memory shaped like a Nanos (master b9c3671d) guest's, for tests/test_nanos.py.

The structs below MIRROR Nanos' (src/unix/unix_internal.h struct thread and struct
process, src/runtime/rbtree.h, src/runtime/context.h, src/kernel/kernel.h struct
cpuinfo, src/x86_64/kernel_machine.h struct cpuinfo_machine): same member names, fewer
members; they are mirrors, not Nanos. main() plants one process with five threads in its
tid-ordered rbtree, a vCPU's cpuinfo running one of them, a KASLR record, and writes
[__data_start, _end) and the cpuinfo's address to the file named by argv[1]. */
#include <stdio.h>
#include <string.h>

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned char u8;

struct rbnode { u64 parent_color; struct rbnode *c[2]; };
struct rbtree { struct rbnode *root; u64 count; void *key_compare; void *print_key; void *h; };
struct context { u64 frame[31]; u64 refcount[2]; void *pause; void *resume; u32 active_cpu; u8 type; };
struct syscall_context { struct context kc; void *blocked_on; };
struct thread {
    struct context context;
    char name[16];
    struct syscall_context *syscall;
    void *p;
    int *clear_tid;
    int tid;
    struct rbnode n;
    void *robust_list;
};
struct process { void *uh; int pid; void *brk; struct rbtree *threads; };
struct cpuinfo_machine { struct cpuinfo_machine *self; struct context *current_context;
                         struct context *kernel_context; };
struct cpuinfo { struct cpuinfo_machine m; u32 id; int state; };
struct siginfo { int si_signo; int si_errno; int si_code;
                 union { int pad[28]; struct { void *addr; } sigfault; } sifields; };
struct queued_signal { struct siginfo si; };

/* src/kernel/init.c */
u64 kas_kern_offset;
u64 kernel_phys_offset;
/* src/unix/unix.c: MAX_PROCESSES 2 */
struct process *processes[2];

struct thread threads[5];
struct syscall_context syscalls[5];
struct rbtree tree;
struct process proc;
struct cpuinfo cpu0;
struct context kernel_ctx;
struct queued_signal fatal;

extern char __data_start[], _end[];

void default_signal_action(struct thread *t, struct queued_signal *qs) { (void)t; (void)qs; }

static void plant(int i, int tid, const char *name, int in_syscall)
{
    struct thread *t = &threads[i];
    t->tid = tid;
    strncpy(t->name, name, sizeof t->name);
    for (int r = 0; r < 17; r++)
        t->context.frame[r] = 0x1000 * tid + r;  /* FRAME_RAX .. FRAME_RIP */
    t->context.frame[16] = 0x401000 + tid;       /* FRAME_RIP */
    t->context.frame[7] = 0x7f0000 + 0x100 * tid; /* FRAME_RSP */
    t->syscall = in_syscall ? &syscalls[i] : 0;
    t->p = &proc;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    /* tids 2..6; an rbtree ordered by tid: 4 at the root, 2 (right: 3) and 5 (right: 6) */
    plant(0, 2, "", 1);          /* the main thread: unnamed, in a system call */
    plant(1, 3, "worker-0", 1);
    plant(2, 4, "worker-1", 0);  /* on vCPU 0 */
    plant(3, 5, "worker-2", 0);
    plant(4, 6, "a-name-of-16-ch", 0);
    threads[2].n.c[0] = &threads[0].n;
    threads[0].n.c[1] = &threads[1].n;
    threads[2].n.c[1] = &threads[3].n;
    threads[3].n.c[1] = &threads[4].n;
    tree.root = &threads[2].n;
    tree.count = 5;
    proc.pid = 1;
    proc.threads = &tree;
    processes[0] = &proc;
    cpu0.m.self = &cpu0.m;
    cpu0.m.current_context = &threads[2].context;
    cpu0.m.kernel_context = &kernel_ctx;
    kas_kern_offset = 0;  /* this process is not relocated: the offset is 0 */
    fatal.si.si_signo = 11;
    fatal.si.sifields.sigfault.addr = (void *)0x10;
    FILE *out = fopen(argv[1], "wb");
    if (!out)
        return 1;
    u64 head[4] = {(u64)&cpu0, (u64)&fatal, (u64)__data_start, (u64)(_end - __data_start)};
    fwrite("NNMIRROR", 1, 8, out);
    fwrite(head, 8, 4, out);
    fwrite(__data_start, 1, head[3], out);
    return fclose(out) != 0;
}
