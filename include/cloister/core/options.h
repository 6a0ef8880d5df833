/* One options layer for every subcommand: a table of options drives the
 * command line, `--config FILE.json` and `--help`.
 *
 * A command describes its options in static tables (cl_opt), each entry
 * naming a field of a settings struct by offset; at run time it groups the
 * tables into sections, each with the struct its fields live in, so that one
 * table can serve several commands (the watchdog's options inside `cloister
 * host` and `cloister watchdog`).  cl_options_parse then:
 *   1. applies every option's default (its `def` text, parsed like a value);
 *   2. loads each --config FILE (an option of type CL_OPT_CONFIG), in order:
 *      a JSON object whose keys are the long names, with JSON types checked;
 *   3. applies the command line: `--name value`, `--name=value`, `-c value`,
 *      `-cvalue`, booleans without a value (or `--name=false`); with
 *      CL_OPTIONS_SINGLE_DASH (nitriding's Go flags) `-name` too.  `--` ends
 *      the options.  Flags override the file's values and add to its lists.
 * --help (-h; -help too with CL_OPTIONS_SINGLE_DASH) asks for the help text,
 * generated from the same tables, grouped by section, with defaults; nothing
 * else is applied then.
 *
 * Strings and lists are owned copies: cl_options_free releases them (and the
 * positional array) whatever parse returned.  Errors are CL_EINVAL with a
 * message in the commands' style ("unknown option '--x' (see --help)",
 * "--idle-timeout: 'x' is not a decimal number", "--config F: \"k\" must be
 * a string"); cl_options_main prints it after the program's name. */
#ifndef CLOISTER_OPTIONS_H
#define CLOISTER_OPTIONS_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum cl_opt_type {
    CL_OPT_STRING,   /* char *, an owned copy */
    CL_OPT_BOOL,     /* bool: `--x`, `--x=true|false|1|0`; JSON true/false */
    CL_OPT_UINT,     /* an unsigned integer of any width, min..max */
    CL_OPT_DURATION, /* 250ms, 5s, 2m, 1h or seconds; stored in units of `scale` ms, min..max of them */
    CL_OPT_SIZE,     /* 512, 64K(iB), 16M(iB), 2G(iB), B; stored in units of `scale` bytes (a bare number is one unit) */
    CL_OPT_LIST,     /* cl_opt_list: repeatable, each value an owned string; max items (0: no limit) */
    CL_OPT_CALL,     /* `set` receives the text (repeatable when CL_OPT_REPEAT); JSON: a string (array) */
    CL_OPT_CONFIG,   /* --config FILE: loads FILE's JSON first; the path is kept when a char * field is given */
} cl_opt_type;

/* A repeatable option's values, in order. */
typedef struct cl_opt_list {
    char **items;
    size_t count;
} cl_opt_list;

enum {
    CL_OPT_REQUIRED = 1u << 0, /* "--name ARG is required (see --help)" when never given */
    CL_OPT_NONEMPTY = 1u << 1, /* strings and list items: "" is refused */
    CL_OPT_NO_JSON = 1u << 2,  /* not a key of --config files (CL_OPT_CONFIG never is) */
    CL_OPT_REPEAT = 1u << 3,   /* CL_OPT_CALL: may be given more than once (others: the last one wins) */
    CL_OPT_SELF_NAMED = 1u << 4, /* `set`'s messages name the option already: no "--name: " prefix */
};

typedef struct cl_opt {
    const char *name; /* long name: --name, and the JSON key */
    char short_name;  /* -c, or 0 */
    cl_opt_type type;
    size_t offset, size; /* the field in the section's struct (use the CL_OPT_* field macros) */
    uint64_t min, max;   /* UINT, DURATION, SIZE: bounds (in stored units); LIST: max items */
    uint64_t scale;      /* DURATION: ms per stored unit (1 or 1000); SIZE: bytes per unit */
    unsigned flags;
    /* CL_OPT_CALL: stores the value (base: the section's struct); for other
     * types, optional: checks the text before it is stored.  Errors are
     * prefixed with the option's name. */
    int (*set)(void *base, const char *value);
    const char *def;  /* the default, as text: applied first, shown by --help */
    const char *arg;  /* metavariable in --help ("N", "PATH"); NULL for booleans */
    const char *help; /* one line (wrapped by --help); NULL: not listed */
} cl_opt;

/* Field macros: the field's type is checked at compile time. */
#define CL__OPT_IS(expr, ...) (0 * sizeof(char[_Generic((expr), __VA_ARGS__: 1, default: -1)]))
#define CL__OPT_AT(T, f) .offset = offsetof(T, f), .size = sizeof(((T *)0)->f)
#define CL_OPT_STR(T, f) .type = CL_OPT_STRING, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, char *)
#define CL_OPT_FLAG(T, f) .type = CL_OPT_BOOL, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, bool)
#define CL__OPT_UNSIGNED unsigned char : 1, unsigned short : 1, unsigned : 1, unsigned long : 1, unsigned long long
#define CL_OPT_UINT_AT(T, f, lo, hi)                                                                            \
    .type = CL_OPT_UINT, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, CL__OPT_UNSIGNED), .min = (lo), .max = (hi)
/* a duration in milliseconds (scale 1) or whole seconds (scale 1000) */
#define CL_OPT_DURATION_AT(T, f, unit_ms, lo, hi)                                                           \
    .type = CL_OPT_DURATION, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, CL__OPT_UNSIGNED), .scale = (unit_ms), \
    .min = (lo), .max = (hi)
#define CL_OPT_SIZE_AT(T, f, unit_bytes, lo, hi)                                                           \
    .type = CL_OPT_SIZE, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, CL__OPT_UNSIGNED), .scale = (unit_bytes), \
    .min = (lo), .max = (hi)
#define CL_OPT_LIST_AT(T, f, max_items) \
    .type = CL_OPT_LIST, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, cl_opt_list), .max = (max_items)
#define CL_OPT_CALLBACK(fn) .type = CL_OPT_CALL, .set = (fn)
#define CL_OPT_CONFIG_AT(T, f) .type = CL_OPT_CONFIG, CL__OPT_AT(T, f) + CL__OPT_IS(((T *)0)->f, char *)

/* Options of one table whose fields live in `base`; `title` heads their
 * group in --help (NULL: they continue the previous group). */
typedef struct cl_opt_section {
    const char *title;
    const cl_opt *opts;
    size_t count;
    void *base;
} cl_opt_section;

#define CL_OPT_SECTION(title, table, base) {(title), (table), sizeof(table) / sizeof((table)[0]), (base)}

enum {
    /* nitriding's Go flags: -name and --name alike, no short options */
    CL_OPTIONS_SINGLE_DASH = 1u << 0,
    /* options end at the first positional argument (a command and its own arguments) */
    CL_OPTIONS_STOP_AT_POSITIONAL = 1u << 1,
};

typedef struct cl_options {
    const char *prog;       /* "cloister host" */
    const char *usage;      /* --help: the text before the options (ends with "\n") */
    const char *epilog;     /* --help: the text after them; NULL: none */
    const char *positional; /* what positional arguments are ("FILE..."); NULL: none accepted */
    size_t max_positional;  /* 0: no limit */
    unsigned flags;
    const cl_opt_section *sections;
    size_t section_count;
} cl_options;

typedef struct cl_options_result {
    bool help; /* --help was asked: nothing was applied */
    char **positional; /* borrowed from argv */
    size_t positional_count;
    bool *given; /* per option, sections in order: set by the command line or a --config file */
    /* after a failed parse: an option's value was refused (rather than the
     * command line's shape: an unknown option, a missing value or argument)
     * -- some drop-ins exit differently for the two */
    bool bad_value;
} cl_options_result;

/* Defaults, then --config files, then the command line (see the top). */
CL_MUST_CHECK int cl_options_parse(const cl_options *spec, int argc, char **argv, cl_options_result *out);

/* cl_options_parse for a command's main: prints --help to stdout or
 * "PROG: problem" to stderr.  Returns 0 (run the command), 1 (help printed:
 * exit 0) or a negative cl_err (printed: exit 2). */
CL_MUST_CHECK int cl_options_main(const cl_options *spec, int argc, char **argv, cl_options_result *out);

/* Sets one option by long name as the command line would (booleans take
 * "true"/"false"); CL_ENOTFOUND when no section has it. */
CL_MUST_CHECK int cl_options_set(const cl_options *spec, const char *name, const char *value);

/* Loads a JSON object of settings (as --config does). */
CL_MUST_CHECK int cl_options_load_json(const cl_options *spec, const char *path);

/* The option with this long name and the struct its field lives in; NULL
 * when no section has it. */
const cl_opt *cl_options_find(const cl_options *spec, const char *name, void **base);

/* Whether the option was given (command line or --config) in the parse
 * that filled r; false for unknown names. */
bool cl_options_given(const cl_options *spec, const cl_options_result *r, const char *name);
/* Whether any option of section i was given (e.g. the watchdog's, inside host). */
bool cl_options_section_given(const cl_options *spec, const cl_options_result *r, size_t i);

/* The --help text (malloc'd; NULL when out of memory). */
char *cl_options_help(const cl_options *spec);

/* Frees the strings and lists the options own, and r's arrays (spec or r
 * may be NULL). */
void cl_options_free(const cl_options *spec, cl_options_result *out);

/* Checks a spec: names unique across sections, field sizes, defaults that
 * parse.  cl_options_parse calls it first; a failure is a programming error. */
CL_MUST_CHECK int cl_options_check_spec(const cl_options *spec);

/* The one duration syntax: digits and a unit, ms, s, m or h (none: seconds),
 * at most max_ms. */
CL_MUST_CHECK int cl_parse_duration(const char *text, uint64_t max_ms, uint64_t *out_ms);

/* The one size syntax: digits and a unit, B, K or KiB, M or MiB, G or GiB
 * (none: `unit` bytes); at most max bytes; the result in bytes. */
CL_MUST_CHECK int cl_parse_size(const char *text, uint64_t unit, uint64_t max, uint64_t *out);

#pragma GCC visibility pop

#endif
