/* A dynamic linker's list as glibc declares it (<link.h>: the real struct r_debug and
   struct link_map, not mirrors), planted in one static arena and written to a file
   (magic, base address, size, bytes) for tests/test_solib.py to read as guest memory.
   Four entries: the program (l_name ""), then /lib/lib1.so .. /lib/lib3.so at
   l_addr 0x10000 * (i + 1), l_ld 0x8000 past each; longname is 8 KiB of 'x' without a
   NUL, for a test to point an l_name at. */
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct arena {
    struct r_debug rd;
    struct link_map lm[4];
    char names[4][32];
    char longname[8192];
} arena;

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    arena.rd.r_version = 1;
    arena.rd.r_map = &arena.lm[0];
    for (int i = 0; i < 4; i++) {
        if (i)
            snprintf(arena.names[i], sizeof arena.names[i], "/lib/lib%d.so", i);
        arena.lm[i].l_addr = 0x10000 * (i + 1);
        arena.lm[i].l_name = arena.names[i];
        arena.lm[i].l_ld = (ElfW(Dyn) *)(uintptr_t)(0x10000 * (i + 1) + 0x8000);
        arena.lm[i].l_next = i < 3 ? &arena.lm[i + 1] : NULL;
        arena.lm[i].l_prev = i ? &arena.lm[i - 1] : NULL;
    }
    memset(arena.longname, 'x', sizeof arena.longname);
    FILE *f = fopen(argv[1], "wb");
    if (!f)
        return 1;
    uint64_t base = (uintptr_t)&arena, size = sizeof arena;
    fwrite("SOLIBMAP", 1, 8, f);
    fwrite(&base, 8, 1, f);
    fwrite(&size, 8, 1, f);
    fwrite(&arena, sizeof arena, 1, f);
    return fclose(f) != 0;
}
