#include "cloister/core/cbor.h"

#include "cloister/core/cursor.h"

#include <stdlib.h>
#include <string.h>

/* Recursion is bounded by the caller's max_depth, itself capped here. */
#define CBOR_DEPTH_CAP 64

enum { MAJOR_UINT, MAJOR_NINT, MAJOR_BYTES, MAJOR_TEXT, MAJOR_ARRAY, MAJOR_MAP, MAJOR_TAG, MAJOR_SIMPLE };

#define AI_INDEFINITE 31
#define BREAK_BYTE 0xff

/* One walker serves both passes so that the checks cannot drift apart:
 * with items == NULL it only counts, otherwise it fills. */
typedef struct decoder {
    cl_cursor cur;
    const cl_cbor_limits *limits;
    size_t item_count;
    size_t chunk_bytes;
    cl_cbor *items;
    uint8_t *chunk_store;
} decoder;

const char *cl_cbor_type_name(int type)
{
    switch (type) {
    case CL_CBOR_UINT: return "unsigned integer";
    case CL_CBOR_NINT: return "negative integer";
    case CL_CBOR_BYTES: return "byte string";
    case CL_CBOR_TEXT: return "text string";
    case CL_CBOR_ARRAY: return "array";
    case CL_CBOR_MAP: return "map";
    case CL_CBOR_TAG: return "tag";
    case CL_CBOR_FALSE: return "false";
    case CL_CBOR_TRUE: return "true";
    case CL_CBOR_NULL: return "null";
    case CL_CBOR_UNDEFINED: return "undefined";
    case CL_CBOR_SIMPLE: return "simple value";
    }
    return "unknown";
}

static bool utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (extra > n - i - 1)
            return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += extra + 1;
    }
    return true;
}

static int read_head(decoder *d, uint8_t *major, uint8_t *ai, uint64_t *arg)
{
    size_t at = d->cur.pos;
    uint8_t ib;
    CL_TRY(cl_cursor_u8(&d->cur, &ib));
    *major = ib >> 5;
    *ai = ib & 0x1f;
    *arg = 0;
    if (*ai < 24) {
        *arg = *ai;
    } else if (*ai == 24) {
        uint8_t v;
        CL_TRY(cl_cursor_u8(&d->cur, &v));
        *arg = v;
    } else if (*ai == 25) {
        uint16_t v;
        CL_TRY(cl_cursor_be16(&d->cur, &v));
        *arg = v;
    } else if (*ai == 26) {
        uint32_t v;
        CL_TRY(cl_cursor_be32(&d->cur, &v));
        *arg = v;
    } else if (*ai == 27) {
        CL_TRY(cl_cursor_be64(&d->cur, arg));
    } else if (*ai < AI_INDEFINITE) {
        return cl_error_set(CL_EPARSE, "CBOR: reserved additional information %u at offset %zu",
                            *ai, at);
    } else if (*major == MAJOR_UINT || *major == MAJOR_NINT || *major == MAJOR_TAG) {
        return cl_error_set(CL_EPARSE, "CBOR: indefinite length not allowed for major type %u at offset %zu",
                            *major, at);
    }
    return CL_OK;
}

static cl_cbor *new_item(decoder *d, uint8_t type, size_t offset)
{
    size_t index = d->item_count++;
    if (!d->items)
        return NULL;
    cl_cbor *it = &d->items[index];
    memset(it, 0, sizeof *it);
    it->type = type;
    it->offset = offset;
    return it;
}

static bool at_break(const decoder *d)
{
    uint8_t b;
    return cl_cursor_peek_u8(&d->cur, &b) == CL_OK && b == BREAK_BYTE;
}

static int parse_item(decoder *d, unsigned depth, cl_cbor **out);

static int parse_string(decoder *d, uint8_t major, uint8_t ai, uint64_t arg, size_t at, cl_cbor *it)
{
    bool text = major == MAJOR_TEXT;
    if (ai != AI_INDEFINITE) {
        if (arg > cl_cursor_remaining(&d->cur))
            return cl_error_set(CL_EPARSE, "CBOR: %s of %llu bytes at offset %zu exceeds the input",
                                text ? "text string" : "byte string", (unsigned long long)arg, at);
        const uint8_t *p;
        CL_TRY(cl_cursor_bytes(&d->cur, (size_t)arg, &p));
        if (text && !utf8_valid(p, (size_t)arg))
            return cl_error_set(CL_EPARSE, "CBOR: text string at offset %zu is not valid UTF-8", at);
        if (it) {
            it->data = p;
            it->len = (size_t)arg;
        }
        return CL_OK;
    }
    /* Indefinite: a run of definite chunks of the same major type. */
    uint8_t *store = d->chunk_store ? d->chunk_store + d->chunk_bytes : NULL;
    size_t total = 0;
    for (;;) {
        if (cl_cursor_at_end(&d->cur))
            return cl_error_set(CL_EPARSE, "CBOR: unterminated indefinite-length string at offset %zu", at);
        if (at_break(d)) {
            CL_TRY(cl_cursor_skip(&d->cur, 1));
            break;
        }
        size_t chunk_at = d->cur.pos;
        uint8_t cmajor, cai;
        uint64_t clen;
        CL_TRY(read_head(d, &cmajor, &cai, &clen));
        if (cmajor != major || cai == AI_INDEFINITE)
            return cl_error_set(CL_EPARSE, "CBOR: bad chunk in indefinite-length string at offset %zu", chunk_at);
        if (clen > cl_cursor_remaining(&d->cur))
            return cl_error_set(CL_EPARSE, "CBOR: string chunk of %llu bytes at offset %zu exceeds the input",
                                (unsigned long long)clen, chunk_at);
        const uint8_t *p;
        CL_TRY(cl_cursor_bytes(&d->cur, (size_t)clen, &p));
        if (text && !utf8_valid(p, (size_t)clen))
            return cl_error_set(CL_EPARSE, "CBOR: text chunk at offset %zu is not valid UTF-8", chunk_at);
        if (store)
            memcpy(store + total, p, (size_t)clen);
        total += (size_t)clen;
    }
    if (it) {
        it->data = store;
        it->len = total;
        it->indefinite = true;
    }
    d->chunk_bytes += total;
    return CL_OK;
}

static bool keys_equal(const cl_cbor *a, const cl_cbor *b)
{
    if (a->type != b->type)
        return false;
    if (a->type == CL_CBOR_UINT || a->type == CL_CBOR_NINT)
        return a->u == b->u;
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static int check_map_keys(const cl_cbor *map)
{
    for (const cl_cbor *k = map->child; k; k = k->next->next) {
        for (const cl_cbor *o = map->child; o != k; o = o->next->next) {
            if (keys_equal(k, o))
                return cl_error_set(CL_EPARSE, "CBOR: duplicate map key at offset %zu", k->offset);
        }
    }
    return CL_OK;
}

static int parse_container(decoder *d, uint8_t major, uint8_t ai, uint64_t arg, size_t at,
                           unsigned depth, cl_cbor *it)
{
    bool is_map = major == MAJOR_MAP;
    if (depth >= d->limits->max_depth)
        return cl_error_set(CL_EPARSE, "CBOR: nesting deeper than %u levels at offset %zu",
                            d->limits->max_depth, at);
    bool indefinite = ai == AI_INDEFINITE;
    uint64_t per_entry = is_map ? 2 : 1;
    if (!indefinite && arg > cl_cursor_remaining(&d->cur) / per_entry)
        return cl_error_set(CL_EPARSE, "CBOR: %s of %llu entries at offset %zu exceeds the input",
                            is_map ? "map" : "array", (unsigned long long)arg, at);
    cl_cbor *prev = NULL;
    uint64_t entries = 0;
    for (;;) {
        if (indefinite) {
            if (cl_cursor_at_end(&d->cur))
                return cl_error_set(CL_EPARSE, "CBOR: unterminated indefinite-length %s at offset %zu",
                                    is_map ? "map" : "array", at);
            if (at_break(d)) {
                CL_TRY(cl_cursor_skip(&d->cur, 1));
                break;
            }
        } else if (entries == arg) {
            break;
        }
        if (is_map && entries >= d->limits->max_map_entries)
            return cl_error_set(CL_ELIMIT, "CBOR: map at offset %zu has more than %zu entries", at,
                                d->limits->max_map_entries);
        for (uint64_t part = 0; part < per_entry; part++) {
            cl_cbor *child = NULL;
            size_t child_at = d->cur.pos;
            if (indefinite && part == 1 && at_break(d))
                return cl_error_set(CL_EPARSE, "CBOR: map key without value at offset %zu", child_at);
            CL_TRY(parse_item(d, depth + 1, &child));
            if (is_map && part == 0 && child) {
                if (child->type != CL_CBOR_UINT && child->type != CL_CBOR_NINT &&
                    child->type != CL_CBOR_TEXT && child->type != CL_CBOR_BYTES)
                    return cl_error_set(CL_EPARSE, "CBOR: map key at offset %zu is a %s", child_at,
                                        cl_cbor_type_name(child->type));
            }
            if (it) {
                if (prev)
                    prev->next = child;
                else
                    it->child = child;
                prev = child;
            }
        }
        entries++;
    }
    if (it) {
        it->u = entries;
        it->indefinite = indefinite;
        if (is_map)
            CL_TRY(check_map_keys(it));
    }
    return CL_OK;
}

static int parse_item(decoder *d, unsigned depth, cl_cbor **out)
{
    size_t at = d->cur.pos;
    uint8_t major, ai;
    uint64_t arg;
    CL_TRY(read_head(d, &major, &ai, &arg));
    static const uint8_t type_of_major[] = {CL_CBOR_UINT, CL_CBOR_NINT, CL_CBOR_BYTES, CL_CBOR_TEXT,
                                            CL_CBOR_ARRAY, CL_CBOR_MAP, CL_CBOR_TAG, CL_CBOR_SIMPLE};
    uint8_t type = type_of_major[major];
    if (major == MAJOR_SIMPLE) {
        if (ai == AI_INDEFINITE)
            return cl_error_set(CL_EPARSE, "CBOR: unexpected break at offset %zu", at);
        if (ai >= 25)
            return cl_error_set(CL_EPARSE, "CBOR: floating-point value at offset %zu is not accepted", at);
        if (ai == 24 && arg < 32)
            return cl_error_set(CL_EPARSE, "CBOR: invalid two-byte simple value %llu at offset %zu",
                                (unsigned long long)arg, at);
        if (arg == 20)
            type = CL_CBOR_FALSE;
        else if (arg == 21)
            type = CL_CBOR_TRUE;
        else if (arg == 22)
            type = CL_CBOR_NULL;
        else if (arg == 23)
            type = CL_CBOR_UNDEFINED;
    }
    cl_cbor *it = new_item(d, type, at);
    if (it)
        it->u = arg;
    switch (major) {
    case MAJOR_BYTES:
    case MAJOR_TEXT:
        CL_TRY(parse_string(d, major, ai, arg, at, it));
        break;
    case MAJOR_ARRAY:
    case MAJOR_MAP:
        CL_TRY(parse_container(d, major, ai, arg, at, depth, it));
        break;
    case MAJOR_TAG:
        if (depth >= d->limits->max_depth)
            return cl_error_set(CL_EPARSE, "CBOR: nesting deeper than %u levels at offset %zu",
                                d->limits->max_depth, at);
        if (cl_cursor_at_end(&d->cur))
            return cl_error_set(CL_EPARSE, "CBOR: tag at offset %zu has no content", at);
        {
            cl_cbor *content = NULL;
            CL_TRY(parse_item(d, depth + 1, &content));
            if (it)
                it->child = content;
        }
        break;
    default:
        break;
    }
    *out = it;
    return CL_OK;
}

int cl_cbor_decode(const uint8_t *data, size_t len, const cl_cbor_limits *limits, cl_cbor_doc *out)
{
    out->root = NULL;
    out->storage = NULL;
    cl_cbor_limits lim = *limits;
    if (lim.max_depth > CBOR_DEPTH_CAP)
        lim.max_depth = CBOR_DEPTH_CAP;
    if (len == 0)
        return cl_error_set(CL_EPARSE, "CBOR: empty input");

    decoder d = {.cur = cl_cursor_make(data, len), .limits = &lim};
    cl_cbor *root = NULL;
    CL_TRY(parse_item(&d, 0, &root));
    CL_TRY(cl_cursor_expect_end(&d.cur, "the CBOR item"));

    size_t items = d.item_count, chunk_bytes = d.chunk_bytes;
    void *storage = malloc(items * sizeof(cl_cbor) + chunk_bytes + 1);
    if (!storage)
        return cl_error_set(CL_ENOMEM, "out of memory decoding %zu CBOR items", items);
    d = (decoder){.cur = cl_cursor_make(data, len), .limits = &lim, .items = storage,
                  .chunk_store = (uint8_t *)storage + items * sizeof(cl_cbor)};
    int rc = parse_item(&d, 0, &root);
    if (rc < 0) {
        free(storage);
        return rc;
    }
    out->root = root;
    out->storage = storage;
    return CL_OK;
}

void cl_cbor_doc_free(cl_cbor_doc *doc)
{
    free(doc->storage);
    doc->storage = NULL;
    doc->root = NULL;
}

const cl_cbor *cl_cbor_map_get(const cl_cbor *map, const char *key)
{
    if (!map || map->type != CL_CBOR_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (const cl_cbor *k = map->child; k; k = k->next->next) {
        if (k->type == CL_CBOR_TEXT && k->len == klen && memcmp(k->data, key, klen) == 0)
            return k->next;
    }
    return NULL;
}

static int put_head(cl_buf *b, uint8_t major, uint64_t v)
{
    uint8_t m = (uint8_t)(major << 5);
    if (v < 24)
        return cl_buf_append_u8(b, m | (uint8_t)v);
    if (v <= 0xff) {
        CL_TRY(cl_buf_append_u8(b, m | 24));
        return cl_buf_append_be(b, v, 1);
    }
    if (v <= 0xffff) {
        CL_TRY(cl_buf_append_u8(b, m | 25));
        return cl_buf_append_be(b, v, 2);
    }
    if (v <= 0xffffffffu) {
        CL_TRY(cl_buf_append_u8(b, m | 26));
        return cl_buf_append_be(b, v, 4);
    }
    CL_TRY(cl_buf_append_u8(b, m | 27));
    return cl_buf_append_be(b, v, 8);
}

int cl_cbor_put_uint(cl_buf *b, uint64_t v) { return put_head(b, MAJOR_UINT, v); }
int cl_cbor_put_nint(cl_buf *b, uint64_t u) { return put_head(b, MAJOR_NINT, u); }
int cl_cbor_put_array(cl_buf *b, uint64_t count) { return put_head(b, MAJOR_ARRAY, count); }
int cl_cbor_put_map(cl_buf *b, uint64_t count) { return put_head(b, MAJOR_MAP, count); }
int cl_cbor_put_tag(cl_buf *b, uint64_t tag) { return put_head(b, MAJOR_TAG, tag); }
int cl_cbor_put_bool(cl_buf *b, bool v) { return cl_buf_append_u8(b, v ? 0xf5 : 0xf4); }
int cl_cbor_put_null(cl_buf *b) { return cl_buf_append_u8(b, 0xf6); }

int cl_cbor_put_bytes_head(cl_buf *b, size_t len)
{
    return put_head(b, MAJOR_BYTES, len);
}

int cl_cbor_put_bytes(cl_buf *b, const void *data, size_t len)
{
    CL_TRY(put_head(b, MAJOR_BYTES, len));
    return cl_buf_append(b, data, len);
}

int cl_cbor_put_text_n(cl_buf *b, const char *text, size_t len)
{
    CL_TRY(put_head(b, MAJOR_TEXT, len));
    return cl_buf_append(b, text, len);
}

int cl_cbor_put_text(cl_buf *b, const char *text)
{
    return cl_cbor_put_text_n(b, text, strlen(text));
}

int cl_cbor_put_opt_bytes(cl_buf *b, const void *data, size_t len)
{
    return data ? cl_cbor_put_bytes(b, data, len) : cl_cbor_put_null(b);
}
