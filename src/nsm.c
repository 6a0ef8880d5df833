/* placeholder until the subcommand lands in this session */
#include "commands.h"
#include <stdio.h>
int cmd_nsm(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "cloister nsm: not built yet\n"); return EXIT_FAILED; }
