/* Launches a command and reports, in one line: nanoseconds from just before
 * fork to the end of the first line on its stdout (0 if none is expected),
 * nanoseconds to its exit, its exit status and its peak RSS in KiB.
 * A tiny static launcher, so the child's ru_maxrss (which includes what the
 * process held before exec) is the command's own, not a big parent's.
 * Usage: bench-launch WANT_LINE(0|1) COMMAND [ARGS...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s WANT_LINE COMMAND [ARGS...]\n", argv[0]);
        return 2;
    }
    int want_line = atoi(argv[1]);
    int out[2];
    if (pipe(out) != 0) { perror("pipe"); return 2; }
    long long start = now_ns();
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        execv(argv[2], argv + 2);
        perror("execv");
        _exit(127);
    }
    close(out[1]);
    long long line_ns = 0;
    char buf[4096];
    ssize_t n;
    while ((n = read(out[0], buf, sizeof buf)) > 0) {
        if (want_line && !line_ns && memchr(buf, '\n', (size_t)n)) line_ns = now_ns() - start;
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) { perror("wait4"); return 2; }
    long long exit_ns = now_ns() - start;
    printf("%lld %lld %d %ld\n", line_ns, exit_ns, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
           usage.ru_maxrss);
    return 0;
}
