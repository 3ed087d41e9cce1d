/* Byte hashing: fills a buffer of MIB MiB (argv[1], default 128) from a xorshift64
   generator, then runs 64-bit FNV-1a over all of it PASSES times (argv[2], default 4),
   each pass starting from the last pass's hash. Prints the final hash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 128;
    unsigned passes = argc > 2 ? (unsigned)strtoul(argv[2], 0, 10) : 4;
    size_t len = mib << 20;
    unsigned char *buf = malloc(len);
    if (!buf) {
        fprintf(stderr, "fnv: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < len; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        for (int k = 0; k < 8; k++)
            buf[i + k] = (unsigned char)(s >> (8 * k));
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned p = 0; p < passes; p++)
        for (size_t i = 0; i < len; i++) {
            h ^= buf[i];
            h *= 0x100000001b3ull;
        }
    printf("fnv1a64(%zu MiB x %u) = %016llx\n", mib, passes, (unsigned long long)h);
    free(buf);
    return 0;
}
