// More data than the job's RAM: writes FILES small files (1 to 8 KiB, in
// directories of 100) and one file of BIG_MIB MiB under DIR, reads every
// byte back, overwrites part of the big file in place with pwrite and reads
// that back, and leaves it all in DIR for the host to check. Reading back
// what was written long before finds it on disk, not in a cache. Exits 1 at
// the first difference, naming it; prints one line at the end.
//
// The contents are a function of the file and the offset, which
// tests/wasi_files.rs computes again on the host:
//   DIR/bulk/dNN/fNNNN (file i, in directory i / 100): byte k = small_byte(i, k),
//   of small_len(i) bytes;
//   DIR/big.bin: byte o = big_byte(o), except from BIG_MIB/2 MiB + 100 to
//   BIG_MIB/2 MiB + 1 MiB + 4096 (exclusive), which holds big_byte(o) ^ 0xff.
//
// Usage: bulk DIR FILES BIG_MIB
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static size_t small_len(uint32_t i) { return 1024 + (i * 2654435761u >> 7) % 7169; }

static uint8_t small_byte(uint32_t i, uint32_t k) { return (uint8_t)(i * 31 + k * 7 + (k >> 8)); }

static uint8_t big_byte(uint64_t o) { return (uint8_t)((o ^ (o >> 11) ^ (o >> 19)) * 13); }

static void die(const char *what, const char *path, long detail) {
    fprintf(stderr, "bulk: %s %s (%ld)\n", what, path, detail);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: bulk DIR FILES BIG_MIB\n");
        return 2;
    }
    const char *dir = argv[1];
    uint32_t files = (uint32_t)atoi(argv[2]);
    uint64_t big = (uint64_t)atoi(argv[3]) << 20;
    static uint8_t buf[65536], got[65536];
    char path[256];
    uint64_t bytes = 0;

    snprintf(path, sizeof path, "%s/bulk", dir);
    if (mkdir(path, 0755) != 0)
        die("mkdir", path, 0);
    for (uint32_t i = 0; i < files; i++) {
        if (i % 100 == 0) {
            snprintf(path, sizeof path, "%s/bulk/d%02u", dir, i / 100);
            if (mkdir(path, 0755) != 0)
                die("mkdir", path, 0);
        }
        snprintf(path, sizeof path, "%s/bulk/d%02u/f%04u", dir, i / 100, i);
        size_t len = small_len(i);
        for (uint32_t k = 0; k < len; k++)
            buf[k] = small_byte(i, k);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) != 0)
            die("write", path, (long)len);
        bytes += len;
    }
    snprintf(path, sizeof path, "%s/big.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (fd < 0)
        die("create", path, 0);
    for (uint64_t o = 0; o < big; o += sizeof buf) {
        for (uint32_t k = 0; k < sizeof buf; k++)
            buf[k] = big_byte(o + k);
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
            die("write", path, (long)(o >> 10));
    }
    bytes += big;

    // Everything back, oldest first.
    for (uint32_t i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/bulk/d%02u/f%04u", dir, i / 100, i);
        size_t len = small_len(i);
        int sfd = open(path, O_RDONLY);
        if (sfd < 0)
            die("open", path, 0);
        ssize_t n = read(sfd, got, sizeof got);
        close(sfd);
        if (n != (ssize_t)len)
            die("short read of", path, (long)n);
        for (uint32_t k = 0; k < len; k++)
            if (got[k] != small_byte(i, k))
                die("wrong byte in", path, (long)k);
    }
    snprintf(path, sizeof path, "%s/big.bin", dir);
    for (uint64_t o = 0; o < big; o += sizeof got) {
        if (pread(fd, got, sizeof got, (off_t)o) != (ssize_t)sizeof got)
            die("short pread of", path, (long)(o >> 10));
        for (uint32_t k = 0; k < sizeof got; k++)
            if (got[k] != big_byte(o + k))
                die("wrong byte in", path, (long)(o + k));
    }

    // Overwrite 1 MiB + 4 KiB in the middle, starting mid-block, and read it back.
    uint64_t start = big / 2 + 100, end = big / 2 + (1 << 20) + 4096;
    for (uint64_t o = start; o < end;) {
        uint32_t n = (uint32_t)(end - o < sizeof buf ? end - o : sizeof buf);
        for (uint32_t k = 0; k < n; k++)
            buf[k] = big_byte(o + k) ^ 0xff;
        if (pwrite(fd, buf, n, (off_t)o) != (ssize_t)n)
            die("pwrite", path, (long)(o >> 10));
        o += n;
    }
    for (uint64_t o = start - 4096; o < end + 4096; o += 4096) {
        if (pread(fd, got, 4096, (off_t)o) != 4096)
            die("short pread of", path, (long)(o >> 10));
        for (uint32_t k = 0; k < 4096; k++) {
            uint8_t want = big_byte(o + k) ^ (o + k >= start && o + k < end ? 0xff : 0);
            if (got[k] != want)
                die("wrong byte after pwrite in", path, (long)(o + k));
        }
    }
    if (close(fd) != 0)
        die("close", path, 0);
    printf("bulk: %u files and %llu MiB, %llu bytes written and read back\n", files,
           (unsigned long long)(big >> 20), (unsigned long long)bytes);
    return 0;
}
