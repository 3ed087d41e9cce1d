// Many small files in nested directories: creates DIRS x DIRS directories
// of FILES files each under DIR/small (DIR/small/aNN/bNN/fNNN, sizes 100 B
// to 4 KiB), writes them, reads every one back and checks it, then deletes
// them all, files then directories. Prints the file count, the bytes and a
// checksum of the contents on stdout (the same on every runtime), and the
// seconds each phase took on stderr.
//
// Usage: smallfiles DIR [DIRS [FILES]]   (default 10 10 100: 10,000 files)
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, const char *path) {
    fprintf(stderr, "smallfiles: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// The size and bytes of file number i: deterministic, different per file.
static size_t size_of(uint32_t i) {
    uint32_t h = i * 2654435761u;
    return 100 + (h >> 8) % (4096 - 100 + 1);
}

static void fill(unsigned char *buf, size_t len, uint32_t i) {
    uint32_t x = i * 2246822519u + 1;
    for (size_t k = 0; k < len; k++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[k] = (unsigned char)x;
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: smallfiles DIR [DIRS [FILES]]\n");
        return 2;
    }
    const char *dir = argv[1];
    int dirs = argc > 2 ? atoi(argv[2]) : 10, files = argc > 3 ? atoi(argv[3]) : 100;
    static unsigned char want[4096], got[4097];
    char path[512];
    uint64_t bytes = 0, sum = 0;

    double t0 = now();
    snprintf(path, sizeof path, "%s/small", dir);
    if (mkdir(path, 0755) != 0)
        die("mkdir", path);
    uint32_t n = 0;
    for (int a = 0; a < dirs; a++) {
        snprintf(path, sizeof path, "%s/small/a%02d", dir, a);
        if (mkdir(path, 0755) != 0)
            die("mkdir", path);
        for (int b = 0; b < dirs; b++) {
            snprintf(path, sizeof path, "%s/small/a%02d/b%02d", dir, a, b);
            if (mkdir(path, 0755) != 0)
                die("mkdir", path);
            for (int f = 0; f < files; f++, n++) {
                snprintf(path, sizeof path, "%s/small/a%02d/b%02d/f%03d", dir, a, b, f);
                size_t len = size_of(n);
                fill(want, len, n);
                int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
                if (fd < 0)
                    die("create", path);
                if (write(fd, want, len) != (ssize_t)len)
                    die("write", path);
                if (close(fd) != 0)
                    die("close", path);
                bytes += len;
            }
        }
    }
    double t1 = now();
    n = 0;
    for (int a = 0; a < dirs; a++)
        for (int b = 0; b < dirs; b++)
            for (int f = 0; f < files; f++, n++) {
                snprintf(path, sizeof path, "%s/small/a%02d/b%02d/f%03d", dir, a, b, f);
                size_t len = size_of(n);
                fill(want, len, n);
                int fd = open(path, O_RDONLY);
                if (fd < 0)
                    die("open", path);
                ssize_t r = read(fd, got, sizeof got);
                if (r != (ssize_t)len || memcmp(got, want, len) != 0) {
                    fprintf(stderr, "smallfiles: %s reads back wrong (%zd bytes, %zu written)\n", path, r, len);
                    return 1;
                }
                close(fd);
                for (size_t k = 0; k < len; k++)
                    sum = sum * 31 + got[k];
            }
    double t2 = now();
    for (int a = 0; a < dirs; a++) {
        for (int b = 0; b < dirs; b++) {
            for (int f = 0; f < files; f++) {
                snprintf(path, sizeof path, "%s/small/a%02d/b%02d/f%03d", dir, a, b, f);
                if (unlink(path) != 0)
                    die("unlink", path);
            }
            snprintf(path, sizeof path, "%s/small/a%02d/b%02d", dir, a, b);
            if (rmdir(path) != 0)
                die("rmdir", path);
        }
        snprintf(path, sizeof path, "%s/small/a%02d", dir, a);
        if (rmdir(path) != 0)
            die("rmdir", path);
    }
    snprintf(path, sizeof path, "%s/small", dir);
    if (rmdir(path) != 0)
        die("rmdir", path);
    double t3 = now();
    printf("smallfiles: %u files, %llu bytes, checksum %016llx\n", n, (unsigned long long)bytes,
           (unsigned long long)sum);
    fprintf(stderr, "create_s=%.3f read_s=%.3f delete_s=%.3f\n", t1 - t0, t2 - t1, t3 - t2);
    return 0;
}
