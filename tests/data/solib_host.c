/* A dynamically linked program (gcc's default link: PIE, glibc) that waits: its real
   dynamic linker's r_debug / link_map chain is read through /proc/PID/mem by
   tests/test_solib.py. */
#include <stdio.h>
#include <unistd.h>

/* a name no kernel has: tests/test_solib.py looks it up among a guest's programs */
int solib_host_marker(int x)
{
    return x + 1;
}

int main(int argc, char **argv)
{
    (void)argv;
    printf(solib_host_marker(argc) ? "ready\n" : "?\n");
    fflush(stdout);
    pause();
    return 0;
}
