/* cloister verify: being written. */
#include "commands.h"
#include <stdio.h>
int cmd_verify(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "cloister verify: not built yet\n"); return EXIT_FAILED; }
