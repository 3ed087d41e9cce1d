// The file functions of WASI preview 1, end to end through wasi-libc: a
// self-checking program that prints one line per check and, when every one
// passed, "all N checks passed"; it exits 1 at the first failure, naming the
// check and errno. tests/wasi_files.rs compiles it (clang-14, wasm32-wasi)
// and runs it under mvm; `wasmtime run` is the reference it was written
// against, and every check that is not mvm-only passes there too.
//
// Usage: files WORK [--rw DIR] [--ro DIR] [--mvm]
//   WORK   an empty writable directory (a preopen or inside one). Left in
//          it at the end: tree/dNN/eN/fN.txt (10 x 5 x 10 files, each
//          holding its own path relative to WORK, and a newline) and
//          result.txt ("all N checks passed\n").
//   --rw   a writable mount holding keep.txt ("keep\n"), change.txt
//          ("old\n"), gone.txt and olddir/inner.txt ("inner\n"). Left in
//          it: keep.txt (mtime 1500000000.25 s), change.txt ("old\nnew\n"),
//          newdir/inner.txt, made/deep/file.txt ("made\n"), link -> keep.txt;
//          gone.txt and olddir removed.
//   --ro   a read-only mount holding hello.txt ("hello\n"): readable, and
//          every change refused with EROFS (futimens on a read-only fd may
//          be ENOTCAPABLE instead). wasmtime's --dir has no read-only mode,
//          so this is mvm's part.
//   --mvm  where mvm is meant to differ from wasmtime 48, check mvm's way:
//          fd_allocate extends the file and fd_fdstat_set_rights narrows an
//          fd's rights (wasmtime answers ENOTSUP to both), a path under no
//          other preopen is looked up in "/" (ENOENT, not ENOTCAPABLE), and the
//          preopen "/" holds exactly the mount points (out, ro, rw), is
//          read-only, and a mount root cannot be removed or renamed.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>
#include <wasi/libc.h>

static int checks;
static char path_buf[4][512];

// The printf-formatted path in one of four rotating buffers, so that a
// check can name several paths at once.
static const char *P(const char *fmt, ...) {
    static int next;
    char *buf = path_buf[next++ % 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof path_buf[0], fmt, ap);
    va_end(ap);
    return buf;
}

static void fail(const char *name, const char *what, int err) {
    printf("FAIL %s: %s (errno %d: %s)\n", name, what, err, strerror(err));
    exit(1);
}

static void pass(const char *name) {
    checks++;
    printf("ok %d %s\n", checks, name);
}

// A path in a local buffer of its own, for paths a function keeps using.
#define PATH(var, ...)                                                                             \
    char var[512];                                                                                 \
    snprintf(var, sizeof var, __VA_ARGS__)

// A condition that must hold; errno is reported as it was, for context.
#define CHECK(name, cond)                                                                          \
    do {                                                                                           \
        int saved_errno_ = errno;                                                                  \
        if (!(cond))                                                                               \
            fail(name, #cond, saved_errno_);                                                       \
        pass(name);                                                                                \
    } while (0)

// A call that returns -1 (or NULL) and sets errno: it must fail with `want`.
#define EXPECT_ERRNO(name, call, want)                                                             \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long ret_ = (long)(call);                                                                  \
        int got_ = errno;                                                                          \
        if (ret_ != -1 && ret_ != 0)                                                               \
            fail(name, #call " succeeded; expected " #want, 0);                                    \
        if (ret_ == 0 && got_ == 0)                                                                \
            fail(name, #call " succeeded; expected " #want, 0);                                    \
        if (got_ != (want))                                                                        \
            fail(name, #call " failed with another errno than " #want, got_);                      \
        pass(name);                                                                                \
    } while (0)

// A path that leads out of its preopen: refused, with ENOTCAPABLE or, as
// wasmtime 48 answers, EPERM.
#define EXPECT_REFUSED(name, call)                                                                 \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long ret_ = (long)(call);                                                                  \
        if (ret_ != -1 && ret_ != 0)                                                               \
            fail(name, #call " succeeded; expected ENOTCAPABLE or EPERM", 0);                      \
        if (errno != ENOTCAPABLE && errno != EPERM)                                                \
            fail(name, #call " failed with another errno than ENOTCAPABLE or EPERM", errno);       \
        pass(name);                                                                                \
    } while (0)

// A call that returns -1 on failure: it must not fail.
#define OK(name, call)                                                                             \
    do {                                                                                           \
        errno = 0;                                                                                 \
        if ((call) == -1)                                                                          \
            fail(name, #call, errno);                                                              \
        pass(name);                                                                                \
    } while (0)

static int open_ok(const char *name, const char *path, int flags) {
    errno = 0;
    int fd = open(path, flags, 0644);
    if (fd < 0)
        fail(name, path, errno);
    pass(name);
    return fd;
}

static void write_all(const char *name, int fd, const void *data, size_t len) {
    errno = 0;
    ssize_t n = write(fd, data, len);
    if (n != (ssize_t)len)
        fail(name, "short write", errno);
}

static void put_file(const char *name, const char *path, const char *text) {
    errno = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        fail(name, path, errno);
    write_all(name, fd, text, strlen(text));
    if (close(fd) != 0)
        fail(name, "close", errno);
}

// The whole file (up to 64 KiB), NUL-terminated, in a static buffer.
static const char *slurp(const char *name, const char *path) {
    static char buf[65537];
    errno = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        fail(name, path, errno);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n < 0)
            fail(name, "read", errno);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = 0;
    return buf;
}

static ino_t ino_of(const char *name, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        fail(name, path, errno);
    return st.st_ino;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

// --- directories, open flags, read and write -----------------------------------------------

static void directories(const char *t) {
    OK("mkdir", mkdir(P("%s/a", t), 0755));
    OK("mkdir nested 1", mkdir(P("%s/a/b", t), 0755));
    OK("mkdir nested 2", mkdir(P("%s/a/b/c", t), 0755));
    struct stat st;
    CHECK("stat a nested dir", stat(P("%s/a/b/c", t), &st) == 0 && S_ISDIR(st.st_mode));
    EXPECT_ERRNO("mkdir existing: EEXIST", mkdir(P("%s/a/b", t), 0755), EEXIST);
    EXPECT_ERRNO("mkdir in a missing dir: ENOENT", mkdir(P("%s/nope/x", t), 0755), ENOENT);
    put_file("a file", P("%s/file", t), "x");
    EXPECT_ERRNO("mkdir under a file: ENOTDIR", mkdir(P("%s/file/x", t), 0755), ENOTDIR);
    EXPECT_ERRNO("mkdir over a file: EEXIST", mkdir(P("%s/file", t), 0755), EEXIST);
}

static void open_flags(const char *t) {
    PATH(f, "%s/f.txt", t);
    int fd = open_ok("open O_CREAT|O_EXCL", f, O_RDWR | O_CREAT | O_EXCL);
    EXPECT_ERRNO("open O_CREAT|O_EXCL existing: EEXIST", open(f, O_RDWR | O_CREAT | O_EXCL, 0644), EEXIST);
    EXPECT_ERRNO("open missing: ENOENT", open(P("%s/missing", t), O_RDONLY), ENOENT);
    EXPECT_ERRNO("open in a missing dir: ENOENT", open(P("%s/missing/x", t), O_RDWR | O_CREAT, 0644), ENOENT);
    EXPECT_ERRNO("open O_DIRECTORY on a file: ENOTDIR", open(f, O_RDONLY | O_DIRECTORY), ENOTDIR);
    EXPECT_ERRNO("open a dir for writing: EISDIR", open(t, O_WRONLY), EISDIR);
    EXPECT_ERRNO("open file/ : ENOTDIR", open(P("%s/f.txt/", t), O_RDONLY), ENOTDIR);

    write_all("write", fd, "hello world\n", 12);
    pass("write");
    CHECK("lseek SEEK_CUR after write", lseek(fd, 0, SEEK_CUR) == 12);
    CHECK("lseek SEEK_SET", lseek(fd, 0, SEEK_SET) == 0);
    char buf[64] = {0};
    CHECK("read back", read(fd, buf, sizeof buf) == 12 && memcmp(buf, "hello world\n", 12) == 0);
    CHECK("read at the end: 0", read(fd, buf, sizeof buf) == 0);
    CHECK("lseek SEEK_END", lseek(fd, 0, SEEK_END) == 12);
    CHECK("lseek SEEK_END -6", lseek(fd, -6, SEEK_END) == 6);
    CHECK("read after SEEK_END -6", read(fd, buf, 5) == 5 && memcmp(buf, "world", 5) == 0);
    CHECK("lseek SEEK_CUR -2", lseek(fd, -2, SEEK_CUR) == 9);
    EXPECT_ERRNO("lseek before the start: EINVAL", lseek(fd, -100, SEEK_SET), EINVAL);
    CHECK("lseek past the end", lseek(fd, 20, SEEK_SET) == 20);
    write_all("write past the end", fd, "!", 1);
    struct stat st;
    CHECK("a write past the end leaves a hole", fstat(fd, &st) == 0 && st.st_size == 21);
    CHECK("the hole reads as zeros",
          pread(fd, buf, 9, 12) == 9 && memcmp(buf, "\0\0\0\0\0\0\0\0!", 9) == 0);
    OK("close", close(fd));
    EXPECT_ERRNO("close a closed fd: EBADF", close(fd), EBADF);
    EXPECT_ERRNO("write to a closed fd: EBADF", write(fd, "x", 1), EBADF);

    fd = open_ok("open O_RDONLY", f, O_RDONLY);
    EXPECT_ERRNO("write to an O_RDONLY fd: EBADF", write(fd, "x", 1), EBADF);
    close(fd);
    fd = open_ok("open O_WRONLY", f, O_WRONLY);
    EXPECT_ERRNO("read from an O_WRONLY fd: EBADF", read(fd, buf, 1), EBADF);
    close(fd);

    fd = open_ok("open O_TRUNC", f, O_WRONLY | O_TRUNC);
    CHECK("O_TRUNC empties the file", fstat(fd, &st) == 0 && st.st_size == 0);
    write_all("write after O_TRUNC", fd, "base", 4);
    close(fd);

    fd = open_ok("open O_APPEND", f, O_WRONLY | O_APPEND);
    write_all("append", fd, "a", 1);
    CHECK("lseek on an O_APPEND fd", lseek(fd, 0, SEEK_SET) == 0);
    write_all("append after lseek", fd, "b", 1);
    close(fd);
    CHECK("O_APPEND writes at the end", strcmp(slurp("slurp", f), "baseab") == 0);
}

static void positional(const char *t) {
    PATH(f, "%s/p.bin", t);
    int fd = open_ok("open for pread/pwrite", f, O_RDWR | O_CREAT | O_TRUNC);
    write_all("write 0123456789", fd, "0123456789", 10);
    CHECK("lseek to 4", lseek(fd, 4, SEEK_SET) == 4);
    CHECK("pwrite", pwrite(fd, "XY", 2, 2) == 2);
    CHECK("pwrite leaves the offset", lseek(fd, 0, SEEK_CUR) == 4);
    char buf[16] = {0};
    CHECK("pread", pread(fd, buf, 5, 1) == 5 && memcmp(buf, "1XY45", 5) == 0);
    CHECK("pread leaves the offset", lseek(fd, 0, SEEK_CUR) == 4);
    CHECK("pread past the end: 0", pread(fd, buf, 4, 100) == 0);
    CHECK("pread across the end: short", pread(fd, buf, 8, 6) == 4 && memcmp(buf, "6789", 4) == 0);
    CHECK("pwrite past the end", pwrite(fd, "Z", 1, 15) == 1);
    struct stat st;
    CHECK("pwrite past the end grows the file", fstat(fd, &st) == 0 && st.st_size == 16);
    EXPECT_ERRNO("pread at a negative offset: EINVAL", pread(fd, buf, 1, -1), EINVAL);

    OK("ftruncate shrinks", ftruncate(fd, 5));
    CHECK("size after shrinking", fstat(fd, &st) == 0 && st.st_size == 5);
    CHECK("content after shrinking", strcmp(slurp("slurp", f), "01XY4") == 0);
    OK("ftruncate grows", ftruncate(fd, 4096));
    CHECK("size after growing", fstat(fd, &st) == 0 && st.st_size == 4096);
    CHECK("grown part reads as zeros", pread(fd, buf, 4, 5) == 4 && memcmp(buf, "\0\0\0\0", 4) == 0);
    EXPECT_ERRNO("ftruncate negative: EINVAL", ftruncate(fd, -1), EINVAL);

    CHECK("posix_fadvise SEQUENTIAL", posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL) == 0);
    CHECK("posix_fadvise DONTNEED", posix_fadvise(fd, 0, 4096, POSIX_FADV_DONTNEED) == 0);
    OK("fsync", fsync(fd));
    OK("fdatasync", fdatasync(fd));
    close(fd);

    int ro = open_ok("open O_RDONLY for ftruncate", f, O_RDONLY);
    // wasmtime answers EINVAL (as Linux's ftruncate), POSIX EBADF, and the
    // spec's rights ENOTCAPABLE (the fd lacks fd_filestat_set_size): any of
    // them, as long as the file is unchanged.
    CHECK("ftruncate on an O_RDONLY fd fails",
          ftruncate(ro, 1) == -1 && (errno == EINVAL || errno == EBADF || errno == ENOTCAPABLE));
    CHECK("the file keeps its size", fstat(ro, &st) == 0 && st.st_size == 4096);
    close(ro);
}

// fd_allocate: wasmtime 48 answers ENOTSUP; mvm allocates (and extends) as the spec says.
static void allocate(const char *t, int mvm) {
    int fd = open_ok("open for posix_fallocate", P("%s/alloc.bin", t), O_RDWR | O_CREAT | O_TRUNC);
    write_all("write before fallocate", fd, "abc", 3);
    int r = posix_fallocate(fd, 0, 8192);
    if (mvm) {
        struct stat st;
        CHECK("posix_fallocate", r == 0);
        CHECK("posix_fallocate extends the file", fstat(fd, &st) == 0 && st.st_size == 8192);
        char buf[4] = {0};
        CHECK("posix_fallocate keeps the data", pread(fd, buf, 4, 0) == 4 && memcmp(buf, "abc\0", 4) == 0);
        CHECK("posix_fallocate inside the file keeps the size",
              posix_fallocate(fd, 10, 10) == 0 && fstat(fd, &st) == 0 && st.st_size == 8192);
    } else {
        CHECK("posix_fallocate (wasmtime: ENOTSUP)", r == ENOTSUP);
    }
    close(fd);
}

// --- stat, inodes, links, times -------------------------------------------------------------

static void inodes_and_links(const char *t) {
    PATH(f, "%s/i.txt", t);
    put_file("a file to stat", f, "12345");
    int fd = open_ok("open for fstat", f, O_RDONLY);
    struct stat a, b, c;
    CHECK("fstat", fstat(fd, &a) == 0 && S_ISREG(a.st_mode) && a.st_size == 5);
    CHECK("stat", stat(f, &b) == 0 && S_ISREG(b.st_mode) && b.st_size == 5);
    CHECK("lstat", lstat(f, &c) == 0 && S_ISREG(c.st_mode));
    CHECK("fstat, stat and lstat agree on st_ino", a.st_ino == b.st_ino && b.st_ino == c.st_ino);
    CHECK("fstat and stat agree on st_dev", a.st_dev == b.st_dev);
    CHECK("st_nlink is 1", a.st_nlink == 1);
    close(fd);
    CHECK("st_ino is stable across opens", ino_of("stat again", f) == a.st_ino);
    CHECK("another file has another st_ino", ino_of("stat a dir", t) != a.st_ino);
    EXPECT_ERRNO("stat missing: ENOENT", stat(P("%s/missing", t), &b), ENOENT);
    EXPECT_ERRNO("stat file/x: ENOTDIR", stat(P("%s/i.txt/x", t), &b), ENOTDIR);

    DIR *d = opendir(t);
    CHECK("opendir", d != NULL);
    struct dirent *e;
    ino_t seen = 0;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, "i.txt") == 0) {
            seen = e->d_ino;
            CHECK("readdir's d_type", e->d_type == DT_REG);
        }
    closedir(d);
    CHECK("readdir's d_ino is fstat's st_ino", seen == a.st_ino);

    PATH(l, "%s/i-link.txt", t);
    OK("link", link(f, l));
    CHECK("a link has the same st_ino", ino_of("stat the link", l) == a.st_ino);
    CHECK("st_nlink is 2 after link", stat(f, &b) == 0 && b.st_nlink == 2);
    CHECK("the link reads the same", strcmp(slurp("slurp link", l), "12345") == 0);
    EXPECT_ERRNO("link over an existing name: EEXIST", link(f, l), EEXIST);
    EXPECT_ERRNO("link a missing file: ENOENT", link(P("%s/missing", t), P("%s/m2", t)), ENOENT);
    EXPECT_ERRNO("link a directory: EPERM", link(P("%s/a", t), P("%s/a-link", t)), EPERM);
    OK("unlink one name", unlink(f));
    CHECK("st_nlink is 1 after unlink", stat(l, &b) == 0 && b.st_nlink == 1 && b.st_ino == a.st_ino);
    CHECK("the other name still reads", strcmp(slurp("slurp link", l), "12345") == 0);

    // An open file outlives its last name.
    fd = open_ok("open before unlink", l, O_RDWR);
    OK("unlink an open file", unlink(l));
    CHECK("the unlinked name is gone", !exists(l));
    char buf[8] = {0};
    CHECK("an open fd reads an unlinked file", pread(fd, buf, 5, 0) == 5 && memcmp(buf, "12345", 5) == 0);
    close(fd);
}

static void times(const char *t) {
    PATH(f, "%s/times.txt", t);
    put_file("a file for times", f, "t");
    int fd = open_ok("open for futimens", f, O_RDWR);
    struct timespec ts[2] = {{1000000000, 111}, {1500000000, 250000000}};
    OK("futimens", futimens(fd, ts));
    struct stat st;
    CHECK("futimens sets atime and mtime", stat(f, &st) == 0 && st.st_atim.tv_sec == 1000000000 &&
                                               st.st_atim.tv_nsec == 111 &&
                                               st.st_mtim.tv_sec == 1500000000 &&
                                               st.st_mtim.tv_nsec == 250000000);
    struct timespec omit_atime[2] = {{0, UTIME_OMIT}, {1600000000, 0}};
    OK("futimens UTIME_OMIT", futimens(fd, omit_atime));
    CHECK("UTIME_OMIT keeps atime", fstat(fd, &st) == 0 && st.st_atim.tv_sec == 1000000000 &&
                                        st.st_mtim.tv_sec == 1600000000);
    close(fd);
    struct timespec path_ts[2] = {{1200000000, 0}, {1300000000, 5}};
    OK("utimensat", utimensat(AT_FDCWD, f, path_ts, 0));
    CHECK("utimensat sets the times", stat(f, &st) == 0 && st.st_atim.tv_sec == 1200000000 &&
                                          st.st_mtim.tv_sec == 1300000000 && st.st_mtim.tv_nsec == 5);
    // The *_NOW flags through fd_filestat_set_times itself: this wasi-libc
    // turns utimensat(NULL) into times 0 and an explicit UTIME_NOW for mtime
    // into EINVAL.
    fd = open_ok("open for MTIM_NOW", f, O_RDWR);
    CHECK("fd_filestat_set_times MTIM_NOW", __wasi_fd_filestat_set_times(fd, 0, 0, __WASI_FSTFLAGS_MTIM_NOW) == 0);
    CHECK("MTIM_NOW sets mtime to now and keeps atime",
          fstat(fd, &st) == 0 && st.st_mtim.tv_sec > 1577836800 && st.st_atim.tv_sec == 1200000000);
    CHECK("ATIM with ATIM_NOW: EINVAL",
          __wasi_fd_filestat_set_times(fd, 1, 0, __WASI_FSTFLAGS_ATIM | __WASI_FSTFLAGS_ATIM_NOW) ==
              __WASI_ERRNO_INVAL);
    close(fd);
    EXPECT_ERRNO("utimensat missing: ENOENT", utimensat(AT_FDCWD, P("%s/missing", t), ts, 0), ENOENT);

    // A write moves mtime forward.
    OK("utimensat to the past", utimensat(AT_FDCWD, f, path_ts, 0));
    put_file("write after utimensat", f, "u");
    CHECK("a write updates mtime", stat(f, &st) == 0 && st.st_mtim.tv_sec > 1577836800);
}

// --- rename, symlinks -----------------------------------------------------------------------

static void renames(const char *t) {
    PATH(src, "%s/r-src", t);
    PATH(dst, "%s/r-dst", t);
    put_file("rename source", src, "source");
    put_file("rename target", dst, "target");
    ino_t ino = ino_of("stat source", src);
    OK("rename a file over a file", rename(src, dst));
    CHECK("the target has the source's data", strcmp(slurp("slurp", dst), "source") == 0);
    CHECK("the target has the source's st_ino", ino_of("stat target", dst) == ino);
    CHECK("the source name is gone", !exists(src));
    EXPECT_ERRNO("rename a missing file: ENOENT", rename(src, dst), ENOENT);

    OK("mkdir for rename", mkdir(P("%s/rd", t), 0755));
    put_file("a file in the dir", P("%s/rd/inside", t), "in");
    OK("rename a dir", rename(P("%s/rd", t), P("%s/rd2", t)));
    CHECK("a renamed dir keeps its files", strcmp(slurp("slurp", P("%s/rd2/inside", t)), "in") == 0);
    CHECK("the old dir name is gone", !exists(P("%s/rd", t)));
    OK("rename a file into another dir", rename(dst, P("%s/rd2/moved", t)));
    CHECK("the moved file reads", strcmp(slurp("slurp", P("%s/rd2/moved", t)), "source") == 0);
    OK("rename a file to the same name", rename(P("%s/rd2/moved", t), P("%s/rd2/moved", t)));

    OK("mkdir an empty dir", mkdir(P("%s/empty", t), 0755));
    OK("rename a dir over an empty dir", rename(P("%s/rd2", t), P("%s/empty", t)));
    CHECK("the dir replaced the empty one", exists(P("%s/empty/inside", t)));
    OK("mkdir another", mkdir(P("%s/other", t), 0755));
    put_file("a file in it", P("%s/other/f", t), "f");
    EXPECT_ERRNO("rename a dir over a non-empty dir: ENOTEMPTY",
                 rename(P("%s/empty", t), P("%s/other", t)), ENOTEMPTY);
    EXPECT_ERRNO("rename a file over a dir: EISDIR", rename(P("%s/other/f", t), P("%s/empty", t)), EISDIR);
    EXPECT_ERRNO("rename a dir over a file: ENOTDIR", rename(P("%s/empty", t), P("%s/other/f", t)), ENOTDIR);
    EXPECT_ERRNO("rename a dir into itself: EINVAL", rename(P("%s/empty", t), P("%s/empty/sub", t)), EINVAL);
}

static void symlinks(const char *t) {
    PATH(target, "%s/s-target.txt", t);
    PATH(l, "%s/s-link", t);
    put_file("symlink target", target, "via link");
    OK("symlink", symlink("s-target.txt", l));
    char buf[64] = {0};
    CHECK("readlink", readlink(l, buf, sizeof buf) == 12 && memcmp(buf, "s-target.txt", 12) == 0);
    CHECK("readlink into a short buffer truncates", readlink(l, buf, 4) == 4 && memcmp(buf, "s-ta", 4) == 0);
    struct stat st;
    CHECK("lstat sees a link", lstat(l, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK("stat follows the link", stat(l, &st) == 0 && S_ISREG(st.st_mode) &&
                                       st.st_ino == ino_of("stat target", target));
    CHECK("open follows the link", strcmp(slurp("slurp link", l), "via link") == 0);
    EXPECT_ERRNO("open O_NOFOLLOW on a link: ELOOP", open(l, O_RDONLY | O_NOFOLLOW), ELOOP);
    EXPECT_ERRNO("symlink over an existing name: EEXIST", symlink("x", l), EEXIST);
    EXPECT_ERRNO("readlink of a file: EINVAL", readlink(target, buf, sizeof buf), EINVAL);
    EXPECT_ERRNO("readlink missing: ENOENT", readlink(P("%s/missing", t), buf, sizeof buf), ENOENT);

    OK("symlink to a dir", symlink("a/b", P("%s/s-dir", t)));
    put_file("a file through a dir link", P("%s/s-dir/through.txt", t), "through");
    CHECK("the file is in the linked dir", strcmp(slurp("slurp", P("%s/a/b/through.txt", t)), "through") == 0);
    OK("a link to a link", symlink("s-link", P("%s/s-link2", t)));
    CHECK("a chain of links is followed", strcmp(slurp("slurp", P("%s/s-link2", t)), "via link") == 0);
    OK("a dangling link", symlink("nowhere", P("%s/s-dangling", t)));
    EXPECT_ERRNO("stat a dangling link: ENOENT", stat(P("%s/s-dangling", t), &st), ENOENT);
    CHECK("lstat a dangling link", lstat(P("%s/s-dangling", t), &st) == 0 && S_ISLNK(st.st_mode));
    OK("a link loop", symlink("s-loop", P("%s/s-loop", t)));
    EXPECT_ERRNO("open a link loop: ELOOP", open(P("%s/s-loop", t), O_RDONLY), ELOOP);

    // A link that leads out of the preopen is not followed out of it.
    OK("a link leading out", symlink("../../../../../../etc/passwd", P("%s/s-out", t)));
    EXPECT_REFUSED("open a link leading out: refused", open(P("%s/s-out", t), O_RDONLY));
    OK("unlink a link", unlink(l));
    CHECK("unlinking a link leaves its target", exists(target) && !exists(l));
    OK("unlink a dir link", unlink(P("%s/s-dir", t)));
    CHECK("unlinking a dir link leaves the dir", exists(P("%s/a/b/through.txt", t)));
}

// --- directories: listing, removing, paths --------------------------------------------------

static void listing(const char *t) {
    PATH(many, "%s/many", t);
    OK("mkdir for 300 entries", mkdir(many, 0755));
    for (int i = 0; i < 300; i++)
        put_file("create 300 files", P("%s/many/entry-%03d", t, i), "");
    pass("create 300 files");
    for (int round = 0; round < 2; round++) {
        static unsigned char seen[300];
        memset(seen, 0, sizeof seen);
        int dots = 0, others = 0;
        DIR *d = opendir(P("%s/many", t));
        CHECK("opendir 300", d != NULL);
        if (round == 1) {
            // Half way in, then back to the start: rewinddir restarts at cookie 0.
            for (int i = 0; i < 150; i++)
                readdir(d);
            rewinddir(d);
        }
        struct dirent *e;
        errno = 0;
        while ((e = readdir(d)) != NULL) {
            int n;
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                dots++;
            else if (sscanf(e->d_name, "entry-%03d", &n) == 1 && n >= 0 && n < 300 && !seen[n])
                seen[n] = 1;
            else
                others++;
        }
        CHECK("readdir ends without an error", errno == 0);
        closedir(d);
        int all = 1;
        for (int i = 0; i < 300; i++)
            all &= seen[i];
        CHECK(round ? "after rewinddir: every name once" : "readdir: every name once", all && others == 0);
        CHECK("readdir: . and .. once each", dots == 2);
    }
    DIR *d = opendir(P("%s/many", t));
    readdir(d);
    readdir(d);
    long pos = telldir(d);
    char third[64];
    strcpy(third, readdir(d)->d_name);
    for (int i = 0; i < 200; i++)
        readdir(d);
    seekdir(d, pos);
    CHECK("seekdir returns to a telldir cookie", strcmp(readdir(d)->d_name, third) == 0);
    closedir(d);
    EXPECT_ERRNO("opendir a file: ENOTDIR", opendir(P("%s/many/entry-000", t)), ENOTDIR);
    EXPECT_ERRNO("opendir missing: ENOENT", opendir(P("%s/missing", t)), ENOENT);
}

static void removing(const char *t) {
    EXPECT_ERRNO("rmdir a non-empty dir: ENOTEMPTY", rmdir(P("%s/many", t)), ENOTEMPTY);
    put_file("a file to unlink", P("%s/u.txt", t), "u");
    EXPECT_ERRNO("unlink file/ : ENOTDIR", unlink(P("%s/u.txt/", t)), ENOTDIR);
    EXPECT_ERRNO("unlink a dir: EISDIR", unlink(P("%s/many", t)), EISDIR);
    EXPECT_ERRNO("rmdir a file: ENOTDIR", rmdir(P("%s/u.txt", t)), ENOTDIR);
    EXPECT_ERRNO("unlink missing: ENOENT", unlink(P("%s/missing", t)), ENOENT);
    EXPECT_ERRNO("rmdir missing: ENOENT", rmdir(P("%s/missing", t)), ENOENT);
    OK("unlink", unlink(P("%s/u.txt", t)));
    CHECK("an unlinked file is gone", !exists(P("%s/u.txt", t)));
    for (int i = 0; i < 300; i++)
        if (unlink(P("%s/many/entry-%03d", t, i)) != 0)
            fail("unlink 300 files", path_buf[0], errno);
    pass("unlink 300 files");
    DIR *d = opendir(P("%s/many", t));
    int entries = 0;
    while (readdir(d))
        entries++;
    closedir(d);
    CHECK("the emptied dir lists . and .. only", entries == 2);
    OK("rmdir an emptied dir", rmdir(P("%s/many", t)));
    OK("rmdir an empty nested dir", rmdir(P("%s/a/b/c", t)));
}

static void paths(const char *work, const char *t, int mvm) {
    put_file("create through ..", P("%s/a/../dotdot.txt", t), "dd");
    CHECK("a/../x names x", strcmp(slurp("slurp", P("%s/dotdot.txt", t)), "dd") == 0);
    CHECK("./x and x// name x", strcmp(slurp("slurp", P("%s/./a/..//dotdot.txt", t)), "dd") == 0);
    CHECK("the preopen's own name with ..", exists(P("%s/a/../../%s/dotdot.txt", t, strrchr(t, '/') + 1)));
    EXPECT_REFUSED("open outside the preopen: refused", open(P("%s/../../etc/passwd", work), O_RDONLY));
    EXPECT_REFUSED("mkdir outside the preopen: refused", mkdir(P("%s/../../escape", work), 0755));
    EXPECT_REFUSED("a/../../.. from inside: refused", open(P("%s/a/../../..", t), O_RDONLY));
    if (mvm) // "/" is a preopen: the name is looked up there
        EXPECT_ERRNO("open a missing path under /: ENOENT", open("/nowhere-at-all/x", O_RDONLY), ENOENT);
    else // no preopen holds it: wasi-libc refuses it itself
        EXPECT_ERRNO("open a path under no preopen: ENOTCAPABLE", open("/nowhere-at-all/x", O_RDONLY),
                     ENOTCAPABLE);
}

// --- fd flags and numbers -------------------------------------------------------------------

static void fd_flags(const char *t) {
    PATH(f, "%s/flags.txt", t);
    put_file("a file for fcntl", f, "12");
    int fd = open_ok("open O_RDWR", f, O_RDWR);
    int fl = fcntl(fd, F_GETFL);
    CHECK("F_GETFL: O_RDWR", fl != -1 && (fl & O_ACCMODE) == O_RDWR && !(fl & O_APPEND));
    OK("F_SETFL O_APPEND|O_NONBLOCK", fcntl(fd, F_SETFL, O_APPEND | O_NONBLOCK));
    fl = fcntl(fd, F_GETFL);
    CHECK("F_GETFL shows O_APPEND|O_NONBLOCK", (fl & O_APPEND) && (fl & O_NONBLOCK) && (fl & O_ACCMODE) == O_RDWR);
    write_all("write after F_SETFL", fd, "3", 1);
    CHECK("F_SETFL O_APPEND appends", strcmp(slurp("slurp", f), "123") == 0);
    OK("F_SETFL 0", fcntl(fd, F_SETFL, 0));
    CHECK("F_GETFL after clearing", !(fcntl(fd, F_GETFL) & (O_APPEND | O_NONBLOCK)));
    int rd = open_ok("open O_RDONLY", f, O_RDONLY);
    CHECK("F_GETFL: O_RDONLY", (fcntl(rd, F_GETFL) & O_ACCMODE) == O_RDONLY);
    close(rd);
    int wr = open_ok("open O_WRONLY", f, O_WRONLY);
    CHECK("F_GETFL: O_WRONLY", (fcntl(wr, F_GETFL) & O_ACCMODE) == O_WRONLY);
    close(wr);

    // fd_renumber: `other` takes fd's open file; fd is closed.
    int other = open_ok("open another file", P("%s/a/../flags-other.txt", t), O_RDWR | O_CREAT);
    OK("fd_renumber", __wasilibc_fd_renumber(fd, other));
    char buf[4] = {0};
    CHECK("the new number reads the old file", pread(other, buf, 3, 0) == 3 && memcmp(buf, "123", 3) == 0);
    EXPECT_ERRNO("the old number is closed: EBADF", fcntl(fd, F_GETFL), EBADF);
    EXPECT_ERRNO("fd_renumber from a closed fd: EBADF", __wasilibc_fd_renumber(fd, other), EBADF);
    close(other);
    EXPECT_ERRNO("F_GETFL on a closed fd: EBADF", fcntl(other, F_GETFL), EBADF);
}

// --- preopens and rights, through the WASI calls themselves --------------------------------

// fd_fdstat_set_rights: wasmtime 48 answers ENOTSUP; mvm narrows the rights
// as the spec says (and never widens them: ENOTCAPABLE).
static void preopens_and_rights(const char *work, const char *t, int mvm) {
    int pre = -1;
    __wasi_prestat_t ps;
    for (int fd = 3; fd < 64 && pre < 0; fd++) {
        if (__wasi_fd_prestat_get(fd, &ps) != 0)
            continue;
        char name[256];
        if (ps.u.dir.pr_name_len < sizeof name &&
            __wasi_fd_prestat_dir_name(fd, (uint8_t *)name, ps.u.dir.pr_name_len) == 0 &&
            strlen(work) == ps.u.dir.pr_name_len && memcmp(name, work, ps.u.dir.pr_name_len) == 0)
            pre = fd;
    }
    CHECK("fd_prestat_get finds the work dir's preopen", pre >= 0);
    char small[1];
    CHECK("fd_prestat_dir_name into a short buffer: ENAMETOOLONG",
          __wasi_fd_prestat_dir_name(pre, (uint8_t *)small, 1) == __WASI_ERRNO_NAMETOOLONG);
    __wasi_fdstat_t st;
    CHECK("fd_fdstat_get of a preopen: a directory",
          __wasi_fd_fdstat_get(pre, &st) == 0 && st.fs_filetype == __WASI_FILETYPE_DIRECTORY);
    PATH(f, "%s/rights.txt", t);
    int fd = open_ok("open for rights", f, O_RDWR | O_CREAT);
    CHECK("fd_prestat_get of a file: EBADF", __wasi_fd_prestat_get(fd, &ps) == __WASI_ERRNO_BADF);
    CHECK("fd_fdstat_get of a file", __wasi_fd_fdstat_get(fd, &st) == 0 &&
                                         st.fs_filetype == __WASI_FILETYPE_REGULAR_FILE &&
                                         (st.fs_rights_base & __WASI_RIGHTS_FD_WRITE));
    __wasi_rights_t narrower = st.fs_rights_base & ~__WASI_RIGHTS_FD_WRITE;
    __wasi_errno_t r = __wasi_fd_fdstat_set_rights(fd, narrower, 0);
    if (mvm) {
        CHECK("fd_fdstat_set_rights narrows", r == 0);
        CHECK("fd_fdstat_get shows the narrower rights",
              __wasi_fd_fdstat_get(fd, &st) == 0 && st.fs_rights_base == narrower);
        EXPECT_ERRNO("write without FD_WRITE: EBADF", write(fd, "x", 1), EBADF);
        CHECK("pread still works", pread(fd, small, 1, 0) == 0);
        CHECK("fd_fdstat_set_rights cannot widen: ENOTCAPABLE",
              __wasi_fd_fdstat_set_rights(fd, narrower | __WASI_RIGHTS_FD_WRITE, 0) == __WASI_ERRNO_NOTCAPABLE);
    } else {
        CHECK("fd_fdstat_set_rights (wasmtime: ENOTSUP)", r == __WASI_ERRNO_NOTSUP);
    }
    close(fd);
}

// --- many files, nested ---------------------------------------------------------------------

static void tree(const char *work) {
    OK("mkdir tree", mkdir(P("%s/tree", work), 0755));
    for (int d = 0; d < 10; d++) {
        if (mkdir(P("%s/tree/d%02d", work, d), 0755) != 0)
            fail("mkdir tree/dNN", path_buf[0], errno);
        for (int e = 0; e < 5; e++) {
            if (mkdir(P("%s/tree/d%02d/e%d", work, d, e), 0755) != 0)
                fail("mkdir tree/dNN/eN", path_buf[0], errno);
            for (int f = 0; f < 10; f++)
                put_file("write tree files", P("%s/tree/d%02d/e%d/f%d.txt", work, d, e, f),
                         P("tree/d%02d/e%d/f%d.txt\n", d, e, f));
        }
    }
    pass("write 500 files in 60 nested dirs");
    for (int d = 0; d < 10; d++)
        for (int e = 0; e < 5; e++)
            for (int f = 0; f < 10; f++) {
                char want[64];
                snprintf(want, sizeof want, "tree/d%02d/e%d/f%d.txt\n", d, e, f);
                if (strcmp(slurp("read tree files", P("%s/%.*s", work, (int)strlen(want) - 1, want)), want) != 0)
                    fail("read tree files", want, 0);
            }
    pass("read back 500 files");
}

// Removes a tree written by this program (files, links and dirs only).
static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0)
        fail("remove the scratch tree", path, errno);
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0)
            fail("remove the scratch tree", path, errno);
        return;
    }
    DIR *d = opendir(path);
    if (!d)
        fail("remove the scratch tree", path, errno);
    // On the heap: wasm's C stack is small, and this recurses.
    char(*names)[64] = malloc(400 * sizeof *names);
    if (!names)
        fail("remove the scratch tree", "out of memory", 0);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            if (n == 400)
                fail("remove the scratch tree", "more than 400 entries in a directory", 0);
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
        }
    closedir(d);
    for (int i = 0; i < n; i++) {
        char child[512];
        snprintf(child, sizeof child, "%s/%s", path, names[i]);
        remove_tree(child);
    }
    free(names);
    if (rmdir(path) != 0)
        fail("remove the scratch tree", path, errno);
}

// --- mounts ---------------------------------------------------------------------------------

static void rw_mount(const char *rw) {
    CHECK("rw: keep.txt reads", strcmp(slurp("slurp", P("%s/keep.txt", rw)), "keep\n") == 0);
    int fd = open_ok("rw: open change.txt O_APPEND", P("%s/change.txt", rw), O_WRONLY | O_APPEND);
    write_all("rw: append", fd, "new\n", 4);
    close(fd);
    CHECK("rw: change.txt changed", strcmp(slurp("slurp", P("%s/change.txt", rw)), "old\nnew\n") == 0);
    OK("rw: unlink gone.txt", unlink(P("%s/gone.txt", rw)));
    OK("rw: rename olddir", rename(P("%s/olddir", rw), P("%s/newdir", rw)));
    CHECK("rw: the renamed dir reads", strcmp(slurp("slurp", P("%s/newdir/inner.txt", rw)), "inner\n") == 0);
    OK("rw: mkdir made", mkdir(P("%s/made", rw), 0755));
    OK("rw: mkdir made/deep", mkdir(P("%s/made/deep", rw), 0755));
    put_file("rw: write made/deep/file.txt", P("%s/made/deep/file.txt", rw), "made\n");
    pass("rw: write made/deep/file.txt");
    OK("rw: symlink", symlink("keep.txt", P("%s/link", rw)));
    struct timespec ts[2] = {{1500000000, 0}, {1500000000, 250000000}};
    OK("rw: utimensat keep.txt", utimensat(AT_FDCWD, P("%s/keep.txt", rw), ts, 0));
}

static void ro_mount(const char *ro) {
    CHECK("ro: hello.txt reads", strcmp(slurp("slurp", P("%s/hello.txt", ro)), "hello\n") == 0);
    struct stat st;
    CHECK("ro: stat", stat(P("%s/hello.txt", ro), &st) == 0 && st.st_size == 6);
    EXPECT_ERRNO("ro: open for writing: EROFS", open(P("%s/hello.txt", ro), O_WRONLY), EROFS);
    EXPECT_ERRNO("ro: open O_TRUNC: EROFS", open(P("%s/hello.txt", ro), O_RDONLY | O_TRUNC), EROFS);
    EXPECT_ERRNO("ro: create: EROFS", open(P("%s/new.txt", ro), O_WRONLY | O_CREAT, 0644), EROFS);
    EXPECT_ERRNO("ro: mkdir: EROFS", mkdir(P("%s/newdir", ro), 0755), EROFS);
    EXPECT_ERRNO("ro: unlink: EROFS", unlink(P("%s/hello.txt", ro)), EROFS);
    EXPECT_ERRNO("ro: rename: EROFS", rename(P("%s/hello.txt", ro), P("%s/moved.txt", ro)), EROFS);
    EXPECT_ERRNO("ro: symlink: EROFS", symlink("hello.txt", P("%s/link", ro)), EROFS);
    EXPECT_ERRNO("ro: link: EROFS", link(P("%s/hello.txt", ro), P("%s/link", ro)), EROFS);
    struct timespec ts[2] = {{1, 0}, {1, 0}};
    EXPECT_ERRNO("ro: utimensat: EROFS", utimensat(AT_FDCWD, P("%s/hello.txt", ro), ts, 0), EROFS);
    int fd = open_ok("ro: open O_RDONLY", P("%s/hello.txt", ro), O_RDONLY);
    // An fd opened in a read-only mount may lack the right to set times
    // (ENOTCAPABLE) or have it and meet the read-only mount (EROFS).
    CHECK("ro: futimens fails", futimens(fd, ts) == -1 && (errno == EROFS || errno == ENOTCAPABLE));
    struct stat after;
    CHECK("ro: the times are unchanged", fstat(fd, &after) == 0 && after.st_mtim.tv_sec == st.st_mtim.tv_sec &&
                                             after.st_mtim.tv_nsec == st.st_mtim.tv_nsec);
    close(fd);
}

// mvm only: the preopen "/" holds the mount points and nothing else, and is read-only.
static void root(const char *rw) {
    DIR *d = opendir("/");
    CHECK("/: opendir", d != NULL);
    char names[8][64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && n < 8)
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    closedir(d);
    int out = 0, ro = 0, rwm = 0;
    for (int i = 0; i < n; i++) {
        out += strcmp(names[i], "out") == 0;
        ro += strcmp(names[i], "ro") == 0;
        rwm += strcmp(names[i], "rw") == 0;
    }
    CHECK("/: lists out, ro and rw only", n == 3 && out == 1 && ro == 1 && rwm == 1);
    EXPECT_ERRNO("/: mkdir: EROFS", mkdir("/new", 0755), EROFS);
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    CHECK("/: open", fd >= 0);
    struct stat st;
    CHECK("/: fstatat the rw mount", fstatat(fd, "rw", &st, 0) == 0 && S_ISDIR(st.st_mode));
    CHECK("/: a mount root cannot be removed",
          unlinkat(fd, "rw", AT_REMOVEDIR) == -1 && (errno == EBUSY || errno == EROFS));
    CHECK("/: a mount root cannot be renamed",
          renameat(fd, "rw", fd, "rw2") == -1 && (errno == EBUSY || errno == EROFS));
    CHECK("/: the mount is still there", exists(P("%s/keep.txt", rw)));
    close(fd);
}

int main(int argc, char **argv) {
    const char *work = NULL, *rw = NULL, *ro = NULL;
    int mvm = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rw") == 0 && i + 1 < argc)
            rw = argv[++i];
        else if (strcmp(argv[i], "--ro") == 0 && i + 1 < argc)
            ro = argv[++i];
        else if (strcmp(argv[i], "--mvm") == 0)
            mvm = 1;
        else if (!work && argv[i][0] != '-')
            work = argv[i];
        else {
            fprintf(stderr, "usage: files WORK [--rw DIR] [--ro DIR] [--mvm]\n");
            return 2;
        }
    }
    if (!work) {
        fprintf(stderr, "usage: files WORK [--rw DIR] [--ro DIR] [--mvm]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char t[256];
    snprintf(t, sizeof t, "%s/scratch", work);
    OK("mkdir the scratch dir", mkdir(t, 0755));
    directories(t);
    open_flags(t);
    positional(t);
    allocate(t, mvm);
    inodes_and_links(t);
    times(t);
    renames(t);
    symlinks(t);
    listing(t);
    removing(t);
    paths(work, t, mvm);
    fd_flags(t);
    preopens_and_rights(work, t, mvm);
    tree(work);
    remove_tree(t);
    CHECK("the scratch dir is gone", !exists(t));
    if (rw)
        rw_mount(rw);
    if (ro)
        ro_mount(ro);
    if (mvm && rw)
        root(rw);
    char result[64];
    snprintf(result, sizeof result, "all %d checks passed\n", checks + 1);
    put_file("write result.txt", P("%s/result.txt", work), result);
    pass("write result.txt");
    printf("%s", result);
    return 0;
}
