/* A dynamically linked program (gcc's default link: PIE, glibc) that waits: its real
   dynamic linker's r_debug / link_map chain is read through /proc/PID/mem by
   tests/test_solib.py. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}
