/* The options layer: one table per command drives the command line,
 * --config JSON and --help (see include/cloister/core/options.h). */
#include "cloister/core/options.h"

#include "cloister/core/encoding.h"

#include <jansson.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HELP_WIDTH 100    /* --help lines wrap here */
#define HELP_LEFT_MAX 34  /* a longer "--name ARG" puts its text on the next line */
#define CONFIG_ORIGIN_MAX (PATH_MAX + 16)

/* ---- the two unit syntaxes ------------------------------------------------------------ */

/* Leading decimal digits of text as a number (at most 15 of them, so no
 * multiplication below can overflow before the maximum is checked). */
static size_t leading_digits(const char *text, uint64_t *out)
{
    size_t n = 0;
    uint64_t v = 0;
    while (text[n] >= '0' && text[n] <= '9' && n < 16) {
        v = v * 10 + (uint64_t)(text[n] - '0');
        n++;
    }
    *out = v;
    return n;
}

int cl_parse_duration(const char *text, uint64_t max_ms, uint64_t *out_ms)
{
    CL_ENSURE(text && *text, CL_EINVAL, "expected a duration, got an empty string");
    uint64_t v;
    size_t digits = leading_digits(text, &v);
    CL_ENSURE(digits > 0 && digits <= 15, CL_EINVAL, "'%s' is not a duration (e.g. 250ms, 5s, 2m, 1h)", text);
    const char *unit = text + digits;
    uint64_t scale;
    if (!*unit || !strcmp(unit, "s"))
        scale = 1000;
    else if (!strcmp(unit, "ms"))
        scale = 1;
    else if (!strcmp(unit, "m"))
        scale = 60 * 1000;
    else if (!strcmp(unit, "h"))
        scale = 3600 * 1000;
    else
        return cl_error_set(CL_EINVAL, "'%s': unknown unit '%s' (ms, s, m, h)", text, unit);
    CL_ENSURE(v <= max_ms / scale, CL_EINVAL, "'%s' exceeds the maximum of %llu ms", text,
              (unsigned long long)max_ms);
    *out_ms = v * scale;
    return CL_OK;
}

int cl_parse_size(const char *text, uint64_t unit, uint64_t max, uint64_t *out)
{
    CL_ENSURE(text && *text, CL_EINVAL, "expected a size, got an empty string");
    CL_ENSURE(unit > 0, CL_EINVAL, "a size unit of 0 bytes");
    uint64_t v;
    size_t digits = leading_digits(text, &v);
    CL_ENSURE(digits > 0 && digits <= 15, CL_EINVAL, "'%s' is not a size (e.g. 4096, 64K, 16MiB, 2G)", text);
    const char *suffix = text + digits;
    uint64_t scale;
    if (!*suffix)
        scale = unit;
    else if (!strcmp(suffix, "B"))
        scale = 1;
    else if (!strcmp(suffix, "K") || !strcmp(suffix, "KiB"))
        scale = 1ull << 10;
    else if (!strcmp(suffix, "M") || !strcmp(suffix, "MiB"))
        scale = 1ull << 20;
    else if (!strcmp(suffix, "G") || !strcmp(suffix, "GiB"))
        scale = 1ull << 30;
    else
        return cl_error_set(CL_EINVAL, "'%s': unknown unit '%s' (B, K or KiB, M or MiB, G or GiB)", text, suffix);
    CL_ENSURE(v <= max / scale, CL_EINVAL, "'%s' exceeds the maximum of %llu bytes", text, (unsigned long long)max);
    *out = v * scale;
    return CL_OK;
}

/* ---- finding options ------------------------------------------------------------------ */

static const char *dash(const cl_options *spec)
{
    return spec->flags & CL_OPTIONS_SINGLE_DASH ? "-" : "--";
}

static size_t option_total(const cl_options *spec)
{
    size_t n = 0;
    for (size_t i = 0; i < spec->section_count; i++)
        n += spec->sections[i].count;
    return n;
}

/* The option named name[0..len), its struct and its index over all sections. */
static const cl_opt *find_long(const cl_options *spec, const char *name, size_t len, void **base, size_t *index)
{
    size_t k = 0;
    for (size_t i = 0; i < spec->section_count; i++) {
        const cl_opt_section *s = &spec->sections[i];
        for (size_t j = 0; j < s->count; j++, k++)
            if (strlen(s->opts[j].name) == len && !memcmp(s->opts[j].name, name, len)) {
                *base = s->base;
                *index = k;
                return &s->opts[j];
            }
    }
    return NULL;
}

static const cl_opt *find_short(const cl_options *spec, char c, void **base, size_t *index)
{
    size_t k = 0;
    for (size_t i = 0; i < spec->section_count; i++) {
        const cl_opt_section *s = &spec->sections[i];
        for (size_t j = 0; j < s->count; j++, k++)
            if (s->opts[j].short_name == c) {
                *base = s->base;
                *index = k;
                return &s->opts[j];
            }
    }
    return NULL;
}

const cl_opt *cl_options_find(const cl_options *spec, const char *name, void **base)
{
    size_t index;
    void *b = NULL;
    const cl_opt *o = find_long(spec, name, strlen(name), &b, &index);
    if (o && base)
        *base = b;
    return o;
}

/* ---- values ----------------------------------------------------------------------------- */

static bool takes_value(const cl_opt *o)
{
    return o->type != CL_OPT_BOOL;
}

static void format_duration(uint64_t ms, char out[32])
{
    if (ms && ms % 3600000 == 0)
        snprintf(out, 32, "%lluh", (unsigned long long)(ms / 3600000));
    else if (ms && ms % 60000 == 0)
        snprintf(out, 32, "%llum", (unsigned long long)(ms / 60000));
    else if (ms % 1000 == 0)
        snprintf(out, 32, "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(out, 32, "%llums", (unsigned long long)ms);
}

/* A numeric option's text as the number to store (in the option's units).
 * Messages are the bare problem; the caller names the option. */
static int number_value(const cl_opt *o, const char *text, uint64_t *out)
{
    uint64_t v = 0;
    switch (o->type) {
    case CL_OPT_UINT:
        CL_TRY(cl_parse_u64(text, o->max, &v));
        CL_ENSURE(v >= o->min, CL_EINVAL, "'%s' is below the minimum %llu", text, (unsigned long long)o->min);
        break;
    case CL_OPT_DURATION: {
        uint64_t ms;
        uint64_t max_ms = o->max > UINT64_MAX / o->scale ? UINT64_MAX : o->max * o->scale;
        CL_TRY(cl_parse_duration(text, max_ms, &ms));
        CL_ENSURE(ms % o->scale == 0, CL_EINVAL, "'%s' is not a whole number of %s", text,
                  o->scale == 1000 ? "seconds" : "units");
        v = ms / o->scale;
        if (v < o->min) {
            char min[32];
            format_duration(o->min * o->scale, min);
            return cl_error_set(CL_EINVAL, "'%s' is below the minimum of %s", text, min);
        }
        break;
    }
    case CL_OPT_SIZE: {
        uint64_t bytes;
        uint64_t max = o->max > UINT64_MAX / o->scale ? UINT64_MAX : o->max * o->scale;
        CL_TRY(cl_parse_size(text, o->scale, max, &bytes));
        CL_ENSURE(bytes % o->scale == 0, CL_EINVAL, "'%s' is not a whole number of %llu-byte units", text,
                  (unsigned long long)o->scale);
        v = bytes / o->scale;
        CL_ENSURE(v >= o->min, CL_EINVAL, "'%s' is below the minimum of %llu bytes", text,
                  (unsigned long long)(o->min * o->scale));
        break;
    }
    default:
        return cl_error_set(CL_EINVAL, "not a numeric option");
    }
    *out = v;
    return CL_OK;
}

static void store_unsigned(void *field, size_t size, uint64_t v)
{
    switch (size) {
    case 1: *(unsigned char *)field = (unsigned char)v; break;
    case 2: *(unsigned short *)field = (unsigned short)v; break;
    case 4: *(uint32_t *)field = (uint32_t)v; break;
    default: *(uint64_t *)field = v; break;
    }
}

static int store_string(char **field, const char *text)
{
    char *copy = strdup(text);
    CL_ENSURE(copy, CL_ENOMEM, "out of memory");
    free(*field);
    *field = copy;
    return CL_OK;
}

static int list_add(cl_opt_list *l, const char *text, uint64_t max)
{
    CL_ENSURE(max == 0 || l->count < max, CL_ELIMIT, "at most %llu", (unsigned long long)max);
    char **items = realloc(l->items, (l->count + 1) * sizeof *items);
    CL_ENSURE(items, CL_ENOMEM, "out of memory");
    l->items = items;
    CL_ENSURE((items[l->count] = strdup(text)), CL_ENOMEM, "out of memory");
    l->count++;
    return CL_OK;
}

/* Stores one value; the message is the bare problem. */
static int set_value(const cl_opt *o, void *base, const char *text)
{
    /* a section of callbacks only may have no struct */
    void *field = base ? (char *)base + o->offset : NULL;
    if ((o->type == CL_OPT_STRING || o->type == CL_OPT_LIST) && (o->flags & CL_OPT_NONEMPTY))
        CL_ENSURE(*text, CL_EINVAL, "expected a value, got an empty string");
    if (o->set && o->type != CL_OPT_CALL)
        CL_TRY(o->set(base, text));
    switch (o->type) {
    case CL_OPT_STRING:
        return store_string(field, text);
    case CL_OPT_CONFIG:
        return o->size ? store_string(field, text) : CL_OK;
    case CL_OPT_BOOL:
        return cl_parse_bool(text, field);
    case CL_OPT_LIST:
        return list_add(field, text, o->max);
    case CL_OPT_CALL:
        return o->set(base, text);
    default: {
        uint64_t v;
        CL_TRY(number_value(o, text, &v));
        store_unsigned(field, o->size, v);
        return CL_OK;
    }
    }
}

/* ---- --config ----------------------------------------------------------------------------- */

static const char *json_type_wanted(const cl_opt *o)
{
    switch (o->type) {
    case CL_OPT_BOOL: return "true or false";
    case CL_OPT_UINT: return "a non-negative integer";
    case CL_OPT_DURATION: return "a duration (a number of seconds, or a string such as \"250ms\" or \"5m\")";
    case CL_OPT_SIZE: return "a size (a number, or a string such as \"64K\" or \"16MiB\")";
    case CL_OPT_LIST: return "a string or an array of strings";
    case CL_OPT_CALL: return o->flags & CL_OPT_REPEAT ? "a string or an array of strings" : "a string";
    default: return "a string";
    }
}

/* Names the option in a value's error (unless its set function did). */
static int name_error(const cl_options *spec, const cl_opt *o, int rc)
{
    if (o->flags & CL_OPT_SELF_NAMED)
        return rc;
    return cl_error_prefix(rc, "%s%s: ", dash(spec), o->name);
}

static int config_error(const cl_options *spec, const char *path, const cl_opt *o, int rc)
{
    name_error(spec, o, rc);
    return cl_error_prefix(rc, "--config %s: ", path);
}

static int set_from_json(const cl_options *spec, const char *path, const cl_opt *o, void *base, const char *key,
                         json_t *value)
{
    bool many = o->type == CL_OPT_LIST || (o->type == CL_OPT_CALL && (o->flags & CL_OPT_REPEAT));
    char text[32];
    const char *v = NULL;
    if (json_is_string(value) && o->type != CL_OPT_BOOL && o->type != CL_OPT_UINT) {
        v = json_string_value(value);
    } else if (json_is_boolean(value) && o->type == CL_OPT_BOOL) {
        v = json_is_true(value) ? "true" : "false";
    } else if (json_is_integer(value) && json_integer_value(value) >= 0 &&
               (o->type == CL_OPT_UINT || o->type == CL_OPT_DURATION || o->type == CL_OPT_SIZE ||
                (o->type == CL_OPT_CALL && !many))) {
        /* a single-valued callback takes a number as its digits (--restart-budget) */
        snprintf(text, sizeof text, "%lld", (long long)json_integer_value(value));
        v = text;
    } else if (json_is_array(value) && many) {
        size_t i;
        json_t *item;
        json_array_foreach(value, i, item) {
            CL_ENSURE(json_is_string(item), CL_EINVAL, "--config %s: \"%s\"[%zu] must be a string", path, key, i);
            int rc = set_value(o, base, json_string_value(item));
            if (rc < 0)
                return config_error(spec, path, o, rc);
        }
        return CL_OK;
    }
    CL_ENSURE(v, CL_EINVAL, "--config %s: \"%s\" must be %s", path, key, json_type_wanted(o));
    int rc = set_value(o, base, v);
    if (rc < 0)
        return config_error(spec, path, o, rc);
    return CL_OK;
}

static int load_json(const cl_options *spec, const char *path, bool *given)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(root, CL_EINVAL, "--config %s: line %d: %s", path, jerr.line, jerr.text);
    int rc = CL_OK;
    CL_ENSURE_OUT(json_is_object(root), CL_EINVAL, "--config %s: expected a JSON object of settings", path);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        void *base = NULL;
        size_t index = 0;
        const cl_opt *o = find_long(spec, key, strlen(key), &base, &index);
        if (!o || o->type == CL_OPT_CONFIG || (o->flags & CL_OPT_NO_JSON))
            CL_FAIL_OUT(CL_EINVAL, "--config %s: unknown setting \"%s\" (see %s --help)", path, key, spec->prog);
        CL_TRY_OUT(set_from_json(spec, path, o, base, key, value));
        if (given)
            given[index] = true;
    }
out:
    json_decref(root);
    return rc;
}

int cl_options_load_json(const cl_options *spec, const char *path)
{
    CL_TRY(cl_options_check_spec(spec));
    return load_json(spec, path, NULL);
}

int cl_options_set(const cl_options *spec, const char *name, const char *value)
{
    void *base = NULL;
    const cl_opt *o = cl_options_find(spec, name, &base);
    if (!o)
        return cl_error_set(CL_ENOTFOUND, "%s%s is not an option of %s", dash(spec), name, spec->prog);
    if (o->type == CL_OPT_CONFIG)
        return load_json(spec, value, NULL);
    int rc = set_value(o, base, value);
    return rc < 0 ? name_error(spec, o, rc) : CL_OK;
}

/* ---- checking a spec ------------------------------------------------------------------------ */

static int check_option(const cl_options *spec, const cl_opt *o, const void *base)
{
    const char *n = o->name;
    CL_ENSURE(n && *n && !strchr(n, '=') && n[0] != '-', CL_EINVAL, "%s: an option without a proper name",
              spec->prog);
    CL_ENSURE(strcmp(n, "help") != 0 && o->short_name != 'h', CL_EINVAL, "%s: --%s: help is built in", spec->prog, n);
    CL_ENSURE(!o->short_name || !(spec->flags & CL_OPTIONS_SINGLE_DASH), CL_EINVAL,
              "%s: -%s: single-dash options have no short names", spec->prog, n);
    CL_ENSURE(o->short_name != '-' && (unsigned char)o->short_name < 128, CL_EINVAL, "%s: --%s: bad short name",
              spec->prog, n);
    bool has_field = o->type != CL_OPT_CALL && !(o->type == CL_OPT_CONFIG && o->size == 0);
    CL_ENSURE(!has_field || base, CL_EINVAL, "%s: --%s: its section has no struct", spec->prog, n);
    switch (o->type) {
    case CL_OPT_STRING:
    case CL_OPT_CONFIG:
        CL_ENSURE(o->size == sizeof(char *) || (o->type == CL_OPT_CONFIG && o->size == 0), CL_EINVAL,
                  "%s: --%s: the field is not a char *", spec->prog, n);
        break;
    case CL_OPT_BOOL:
        CL_ENSURE(o->size == sizeof(bool), CL_EINVAL, "%s: --%s: the field is not a bool", spec->prog, n);
        break;
    case CL_OPT_LIST:
        CL_ENSURE(o->size == sizeof(cl_opt_list), CL_EINVAL, "%s: --%s: the field is not a cl_opt_list", spec->prog,
                  n);
        break;
    case CL_OPT_CALL:
        CL_ENSURE(o->set, CL_EINVAL, "%s: --%s: no function to call", spec->prog, n);
        break;
    case CL_OPT_UINT:
    case CL_OPT_DURATION:
    case CL_OPT_SIZE:
        CL_ENSURE(o->size == 1 || o->size == 2 || o->size == 4 || o->size == 8, CL_EINVAL,
                  "%s: --%s: the field is not an unsigned integer", spec->prog, n);
        CL_ENSURE(o->size == 8 || o->max < (1ull << (8 * o->size)), CL_EINVAL,
                  "%s: --%s: the maximum does not fit the field", spec->prog, n);
        CL_ENSURE(o->min <= o->max, CL_EINVAL, "%s: --%s: the minimum exceeds the maximum", spec->prog, n);
        CL_ENSURE(o->type == CL_OPT_UINT || o->scale >= 1, CL_EINVAL, "%s: --%s: no unit", spec->prog, n);
        break;
    default:
        return cl_error_set(CL_EINVAL, "%s: --%s: unknown type", spec->prog, n);
    }
    CL_ENSURE(takes_value(o) || !o->arg, CL_EINVAL, "%s: --%s: a boolean takes no ARG", spec->prog, n);
    if (o->def) {
        int rc = CL_OK;
        bool b;
        uint64_t v;
        if (o->type == CL_OPT_BOOL)
            rc = cl_parse_bool(o->def, &b);
        else if (o->type == CL_OPT_UINT || o->type == CL_OPT_DURATION || o->type == CL_OPT_SIZE)
            rc = number_value(o, o->def, &v);
        else
            CL_ENSURE(o->type != CL_OPT_CONFIG && o->type != CL_OPT_LIST, CL_EINVAL,
                      "%s: --%s: lists and --config have no default (flags would add to it)", spec->prog, n);
        if (rc < 0)
            return cl_error_prefix(rc, "%s: --%s: default: ", spec->prog, n);
    }
    return CL_OK;
}

int cl_options_check_spec(const cl_options *spec)
{
    CL_ENSURE(spec && spec->prog, CL_EINVAL, "an options spec without a program name");
    size_t k = 0;
    for (size_t i = 0; i < spec->section_count; i++) {
        const cl_opt_section *s = &spec->sections[i];
        for (size_t j = 0; j < s->count; j++) {
            const cl_opt *o = &s->opts[j];
            CL_TRY(check_option(spec, o, s->base));
            void *base;
            size_t first;
            (void)find_long(spec, o->name, strlen(o->name), &base, &first);
            CL_ENSURE(first == k, CL_EINVAL, "%s: --%s is in the tables twice", spec->prog, o->name);
            if (o->short_name) {
                (void)find_short(spec, o->short_name, &base, &first);
                CL_ENSURE(first == k, CL_EINVAL, "%s: -%c is in the tables twice", spec->prog, o->short_name);
            }
            k++;
        }
    }
    return CL_OK;
}

/* ---- the command line --------------------------------------------------------------------- */

typedef struct token {
    const cl_opt *opt;
    void *base;
    size_t index;
    const char *value;
} token;

static bool is_help(const cl_options *spec, const char *arg)
{
    return !strcmp(arg, "--help") || !strcmp(arg, "-h") ||
           ((spec->flags & CL_OPTIONS_SINGLE_DASH) && !strcmp(arg, "-help"));
}

/* Splits argv into options with their values and positional arguments;
 * applies nothing.  Stops at --help. */
static int scan(const cl_options *spec, int argc, char **argv, token *tokens, size_t *ntokens,
                cl_options_result *out)
{
    const char *d = dash(spec);
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!options_done && is_help(spec, arg)) {
            out->help = true;
            return CL_OK;
        }
        if (!options_done && !strcmp(arg, "--")) {
            options_done = true;
            continue;
        }
        if (options_done || arg[0] != '-' || !arg[1]) {
            CL_ENSURE(spec->positional, CL_EINVAL, "unexpected argument '%s' (see --help)", arg);
            CL_ENSURE(!spec->max_positional || out->positional_count < spec->max_positional, CL_EINVAL,
                      "too many arguments: '%s' (see --help)", arg);
            out->positional[out->positional_count++] = argv[i];
            if (spec->flags & CL_OPTIONS_STOP_AT_POSITIONAL)
                options_done = true;
            continue;
        }
        const cl_opt *o = NULL;
        void *base = NULL;
        size_t index = 0;
        const char *value = NULL;
        bool is_long = arg[1] == '-' || (spec->flags & CL_OPTIONS_SINGLE_DASH);
        if (is_long) {
            const char *name = arg + (arg[1] == '-' ? 2 : 1);
            const char *eq = strchr(name, '=');
            o = find_long(spec, name, eq ? (size_t)(eq - name) : strlen(name), &base, &index);
            if (eq)
                value = eq + 1;
        } else {
            o = find_short(spec, arg[1], &base, &index);
            if (o && arg[2]) {
                if (!takes_value(o))
                    o = NULL; /* -4x: no clusters of short flags */
                else
                    value = arg + 2;
            }
        }
        CL_ENSURE(o, CL_EINVAL, "unknown option '%s' (see --help)", arg);
        if (!value && !takes_value(o))
            value = "true";
        if (!value) {
            CL_ENSURE(i + 1 < argc, CL_EINVAL, "%s%s needs a value (%s)", d, o->name, o->arg ? o->arg : "a value");
            value = argv[++i];
        }
        tokens[*ntokens] = (token){o, base, index, value};
        (*ntokens)++;
    }
    return CL_OK;
}

static int apply_defaults(const cl_options *spec)
{
    for (size_t i = 0; i < spec->section_count; i++) {
        const cl_opt_section *s = &spec->sections[i];
        for (size_t j = 0; j < s->count; j++) {
            const cl_opt *o = &s->opts[j];
            if (!o->def)
                continue;
            int rc = set_value(o, s->base, o->def);
            if (rc < 0)
                return cl_error_prefix(rc, "default of %s%s: ", dash(spec), o->name);
        }
    }
    return CL_OK;
}

int cl_options_parse(const cl_options *spec, int argc, char **argv, cl_options_result *out)
{
    memset(out, 0, sizeof *out);
    CL_TRY(cl_options_check_spec(spec));
    int rc = CL_OK;
    size_t ntokens = 0, total = option_total(spec);
    token *tokens = calloc(argc > 0 ? (size_t)argc : 1, sizeof *tokens);
    bool *given = out->given = calloc(total ? total : 1, sizeof *given);
    out->positional = calloc(argc > 0 ? (size_t)argc : 1, sizeof *out->positional);
    CL_ENSURE_OUT(tokens && given && out->positional, CL_ENOMEM, "out of memory");
    CL_TRY_OUT(scan(spec, argc, argv, tokens, &ntokens, out));
    if (out->help)
        goto out;
    CL_TRY_OUT(apply_defaults(spec));
    /* the files first, so that flags override them */
    for (size_t i = 0; i < ntokens; i++) {
        const token *t = &tokens[i];
        if (t->opt->type != CL_OPT_CONFIG)
            continue;
        out->bad_value = true; /* a file that does not load, or one of its values */
        CL_TRY_OUT(load_json(spec, t->value, given));
        CL_TRY_OUT(set_value(t->opt, t->base, t->value));
        out->bad_value = false;
        given[t->index] = true;
    }
    for (size_t i = 0; i < ntokens; i++) {
        const token *t = &tokens[i];
        if (t->opt->type == CL_OPT_CONFIG)
            continue;
        rc = set_value(t->opt, t->base, t->value);
        if (rc < 0) {
            out->bad_value = true;
            name_error(spec, t->opt, rc);
            goto out;
        }
        given[t->index] = true;
    }
    size_t k = 0;
    for (size_t i = 0; i < spec->section_count; i++)
        for (size_t j = 0; j < spec->sections[i].count; j++, k++) {
            const cl_opt *o = &spec->sections[i].opts[j];
            if ((o->flags & CL_OPT_REQUIRED) && !given[k])
                CL_FAIL_OUT(CL_EINVAL, "%s%s%s%s is required (see --help)", dash(spec), o->name, o->arg ? " " : "",
                            o->arg ? o->arg : "");
        }
out:
    free(tokens);
    return rc;
}

int cl_options_main(const cl_options *spec, int argc, char **argv, cl_options_result *out)
{
    int rc = cl_options_parse(spec, argc, argv, out);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", spec->prog, cl_error_message());
        return rc;
    }
    if (!out->help)
        return 0;
    char *text = cl_options_help(spec);
    if (!text) {
        fprintf(stderr, "%s: out of memory\n", spec->prog);
        return CL_ENOMEM;
    }
    /* one write(): a reader that stops early (grep -q) must not cut us off
     * with SIGPIPE between two chunks of stdio's buffer */
    fflush(stdout);
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t n = write(STDOUT_FILENO, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    free(text);
    return 1;
}

void cl_options_free(const cl_options *spec, cl_options_result *out)
{
    for (size_t i = 0; spec && i < spec->section_count; i++) {
        const cl_opt_section *s = &spec->sections[i];
        for (size_t j = 0; j < s->count && s->base; j++) {
            const cl_opt *o = &s->opts[j];
            void *field = (char *)s->base + o->offset;
            if ((o->type == CL_OPT_STRING || o->type == CL_OPT_CONFIG) && o->size == sizeof(char *)) {
                free(*(char **)field);
                *(char **)field = NULL;
            } else if (o->type == CL_OPT_LIST && o->size == sizeof(cl_opt_list)) {
                cl_opt_list *l = field;
                for (size_t k = 0; k < l->count; k++)
                    free(l->items[k]);
                free(l->items);
                l->items = NULL;
                l->count = 0;
            }
        }
    }
    if (out) {
        free(out->positional);
        free(out->given);
        out->positional = NULL;
        out->given = NULL;
        out->positional_count = 0;
    }
}

bool cl_options_given(const cl_options *spec, const cl_options_result *r, const char *name)
{
    void *base;
    size_t index;
    return r->given && find_long(spec, name, strlen(name), &base, &index) && r->given[index];
}

bool cl_options_section_given(const cl_options *spec, const cl_options_result *r, size_t i)
{
    size_t k = 0;
    for (size_t j = 0; j < i && j < spec->section_count; j++)
        k += spec->sections[j].count;
    for (size_t j = 0; r->given && i < spec->section_count && j < spec->sections[i].count; j++)
        if (r->given[k + j])
            return true;
    return false;
}

/* ---- --help --------------------------------------------------------------------------------- */

typedef struct text {
    char *data;
    size_t len, cap;
    bool failed;
} text;

CL_PRINTF(2, 3) static void put(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || t->len + (size_t)n + 1 > t->cap) {
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (n > 0 ? (size_t)n : 0);
        char *data = n < 0 ? NULL : realloc(t->data, cap);
        if (!data) {
            t->failed = true;
            return;
        }
        t->data = data;
        t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(t->data + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static void left_column(const cl_options *spec, const cl_opt *o, char *out, size_t size)
{
    const char *arg = o->arg ? o->arg : "";
    const char *sep = o->arg ? " " : "";
    if (spec->flags & CL_OPTIONS_SINGLE_DASH)
        snprintf(out, size, "-%s%s%s", o->name, sep, arg);
    else if (o->short_name)
        snprintf(out, size, "-%c, --%s%s%s", o->short_name, o->name, sep, arg);
    else
        snprintf(out, size, "    --%s%s%s", o->name, sep, arg);
}

/* Writes the words of s from column col, wrapping at HELP_WIDTH to indent;
 * returns the column reached. */
static size_t put_wrapped(text *t, const char *s, size_t col, size_t indent)
{
    while (*s) {
        while (*s == ' ')
            s++;
        size_t w = strcspn(s, " ");
        if (!w)
            break;
        if (col > indent && col + 1 + w > HELP_WIDTH) {
            put(t, "\n%*s", (int)indent, "");
            col = indent;
        } else if (col > indent) {
            put(t, " ");
            col++;
        }
        put(t, "%.*s", (int)w, s);
        col += w;
        s += w;
    }
    return col;
}

static void put_option(text *t, const char *left, const char *help, const char *def, size_t width)
{
    size_t indent = 2 + width + 2;
    if (strlen(left) > width)
        put(t, "  %s\n%*s", left, (int)indent, "");
    else
        put(t, "  %-*s  ", (int)width, left);
    size_t col = put_wrapped(t, help, indent, indent);
    if (def) {
        char d[256];
        snprintf(d, sizeof d, "(default: %s)", def);
        put_wrapped(t, d, col, indent);
    }
    put(t, "\n");
}

/* Groups are set apart by one blank line, whatever the usage text ends with. */
static bool blank_line_needed(const text *t)
{
    return t->len > 0 && !(t->len >= 2 && t->data[t->len - 1] == '\n' && t->data[t->len - 2] == '\n');
}

char *cl_options_help(const cl_options *spec)
{
    text t = {0};
    size_t width = 10; /* "-h, --help" */
    for (size_t i = 0; i < spec->section_count; i++)
        for (size_t j = 0; j < spec->sections[i].count; j++) {
            const cl_opt *o = &spec->sections[i].opts[j];
            char left[128];
            left_column(spec, o, left, sizeof left);
            if (o->help && strlen(left) > width && strlen(left) <= HELP_LEFT_MAX)
                width = strlen(left);
        }
    put(&t, "%s", spec->usage ? spec->usage : "");
    const char *help_left = (spec->flags & CL_OPTIONS_SINGLE_DASH) ? "-h, -help" : "-h, --help";
    bool help_listed = false;
    for (size_t i = 0; i < spec->section_count; i++) {
        const cl_opt_section *s = &spec->sections[i];
        if (i == 0 || s->title) {
            if (i > 0 && !help_listed) {
                put_option(&t, help_left, "this text", NULL, width);
                help_listed = true;
            }
            put(&t, "%s%s:\n", blank_line_needed(&t) ? "\n" : "", s->title ? s->title : "options");
        }
        for (size_t j = 0; j < s->count; j++) {
            const cl_opt *o = &s->opts[j];
            if (!o->help)
                continue;
            char left[128];
            left_column(spec, o, left, sizeof left);
            const char *def = o->def && !(o->type == CL_OPT_BOOL && strcmp(o->def, "true")) ? o->def : NULL;
            put_option(&t, left, o->help, def, width);
        }
    }
    if (spec->section_count == 0)
        put(&t, "%soptions:\n", blank_line_needed(&t) ? "\n" : "");
    if (!help_listed)
        put_option(&t, help_left, "this text", NULL, width);
    if (spec->epilog)
        put(&t, "\n%s", spec->epilog);
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    return t.data;
}
