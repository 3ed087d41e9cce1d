/* Word count over an input file, as a WASI program: counts the lines, words
 * and bytes of each file named on the command line (the job's inputs, seen
 * at /in), prints them like wc(1), and writes the totals to /out/counts.txt.
 * Built to wasm32-wasi by build.sh with Debian's clang-14 and wasi-libc. */
#include <ctype.h>
#include <stdio.h>

int main(int argc, char **argv) {
    long total_lines = 0, total_words = 0, total_bytes = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: wc FILE...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            perror(argv[i]);
            return 1;
        }
        long lines = 0, words = 0, bytes = 0;
        int c, in_word = 0;
        while ((c = getc(f)) != EOF) {
            bytes++;
            if (c == '\n')
                lines++;
            if (isspace(c)) {
                in_word = 0;
            } else if (!in_word) {
                in_word = 1;
                words++;
            }
        }
        fclose(f);
        printf("%7ld %7ld %7ld %s\n", lines, words, bytes, argv[i]);
        total_lines += lines;
        total_words += words;
        total_bytes += bytes;
    }
    FILE *out = fopen("/out/counts.txt", "w");
    if (!out) {
        perror("/out/counts.txt");
        return 1;
    }
    fprintf(out, "lines=%ld words=%ld bytes=%ld\n", total_lines, total_words, total_bytes);
    fclose(out);
    return 0;
}
