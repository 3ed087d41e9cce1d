/* Memory-heavy: sorts COUNT pseudo-random 32-bit integers (argv[1], default 10000000)
   with a bottom-up merge sort through a second buffer of the same size (so 2 x 4 x
   COUNT bytes), checks the order, and prints a checksum of the sorted array. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoul(argv[1], 0, 10) : 10000000;
    uint32_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    if (!a || !b) {
        fprintf(stderr, "sort: cannot allocate 2 x %zu integers\n", n);
        return 1;
    }
    uint32_t s = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        a[i] = s;
    }
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                b[k++] = a[j] < a[i] ? a[j++] : a[i++];
            memcpy(b + k, a + i, (mid - i) * sizeof *a);
            k += mid - i;
            memcpy(b + k, a + j, (hi - j) * sizeof *a);
        }
        uint32_t *t = a;
        a = b;
        b = t;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && a[i - 1] > a[i]) {
            fprintf(stderr, "sort: not sorted at %zu\n", i);
            return 1;
        }
        sum = sum * 31 + a[i];
    }
    printf("sorted %zu: min %u median %u max %u checksum %016llx\n", n, a[0], a[n / 2], a[n - 1],
           (unsigned long long)sum);
    free(a);
    free(b);
    return 0;
}
