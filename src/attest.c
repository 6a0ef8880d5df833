/* placeholder until the subcommand lands in this session */
#include "commands.h"
#include <stdio.h>
int cmd_attest(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "cloister attest: not built yet\n"); return EXIT_FAILED; }
