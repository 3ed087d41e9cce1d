// One large file streamed: writes MIB MiB to PATH in CHUNK_KIB KiB writes,
// reads it back in the same chunks checking a checksum, then deletes it.
// Prints the size and the checksum on stdout (the same on every runtime),
// and the seconds each phase took on stderr.
//
// Usage: stream PATH [MIB [CHUNK_KIB]]   (default 1024 1024: 1 GiB in 1 MiB writes)
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, const char *path) {
    fprintf(stderr, "stream: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// A cheap checksum, so that the time goes to the file and not to it.
static uint64_t sum_words(const uint64_t *w, size_t n, uint64_t sum) {
    for (size_t k = 0; k < n; k++)
        sum = (sum ^ w[k]) * 0x100000001b3ull;
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: stream PATH [MIB [CHUNK_KIB]]\n");
        return 2;
    }
    const char *path = argv[1];
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1024;
    size_t chunk = (argc > 3 ? strtoul(argv[3], NULL, 10) : 1024) * 1024;
    size_t chunks = mib * 1024 * 1024 / chunk, words = chunk / 8;
    uint64_t *buf = malloc(chunk), *in = malloc(chunk);
    if (!buf || !in || chunk == 0 || chunks == 0) {
        fprintf(stderr, "stream: bad sizes or no memory\n");
        return 2;
    }
    uint64_t x = 88172645463325252ull;
    for (size_t k = 0; k < words; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[k] = x;
    }

    double t0 = now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("create", path);
    uint64_t written = 0;
    for (size_t c = 0; c < chunks; c++) {
        buf[0] = c; // every chunk differs
        written = sum_words(buf, words, written);
        if (write(fd, buf, chunk) != (ssize_t)chunk)
            die("write", path);
    }
    if (close(fd) != 0)
        die("close", path);
    double t1 = now();
    fd = open(path, O_RDONLY);
    if (fd < 0)
        die("open", path);
    uint64_t read_back = 0;
    for (size_t c = 0; c < chunks; c++) {
        size_t got = 0;
        while (got < chunk) {
            ssize_t r = read(fd, (char *)in + got, chunk - got);
            if (r <= 0) {
                fprintf(stderr, "stream: %s ends early, in chunk %zu\n", path, c);
                return 1;
            }
            got += (size_t)r;
        }
        read_back = sum_words(in, words, read_back);
    }
    char extra;
    if (read(fd, &extra, 1) != 0) {
        fprintf(stderr, "stream: %s is longer than was written\n", path);
        return 1;
    }
    close(fd);
    double t2 = now();
    if (read_back != written) {
        fprintf(stderr, "stream: %s reads back a checksum %016llx, not the %016llx written\n", path,
                (unsigned long long)read_back, (unsigned long long)written);
        return 1;
    }
    if (unlink(path) != 0)
        die("unlink", path);
    double t3 = now();
    printf("stream: %zu MiB in %zu KiB chunks, checksum %016llx\n", mib, chunk / 1024,
           (unsigned long long)written);
    fprintf(stderr, "write_s=%.3f read_s=%.3f delete_s=%.3f\n", t1 - t0, t2 - t1, t3 - t2);
    return 0;
}
