/* WASI command: copy stdin to stdout in upper case.
 *
 * Writes each argument to stderr, one "argv[i]=value" line each. When the
 * environment variable ECHO_PREFIX is set, stdout starts with its value.
 * When a first argument is given it is the exit code.
 */

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        fprintf(stderr, "argv[%d]=%s\n", i, argv[i]);
    }

    const char *prefix = getenv("ECHO_PREFIX");
    if (prefix != NULL) {
        fputs(prefix, stdout);
    }

    int c;
    while ((c = getchar()) != EOF) {
        putchar(toupper(c));
    }
    fflush(stdout);

    if (argc > 1) {
        return atoi(argv[1]);
    }
    return 0;
}
