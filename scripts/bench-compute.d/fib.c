/* Integer recursion: the naive doubly recursive Fibonacci, fib(N) (argv[1], default 40),
   about 1.6 * fib(N) calls. Prints the result. */
#include <stdio.h>
#include <stdlib.h>

static unsigned long long fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

int main(int argc, char **argv) {
    unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 40;
    printf("fib(%u) = %llu\n", n, fib(n));
    return 0;
}
