/* Text encodings at the edges: hex and base64. */
#ifndef CLOISTER_ENCODING_H
#define CLOISTER_ENCODING_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Lowercase hex of len bytes; out must hold 2*len+1 chars. */
void cl_hex_encode(const uint8_t *data, size_t len, char *out);
/* Value (0..15) of one hex digit of either case; -1 for any other byte (a
 * lookup result, not a cl_err). */
int cl_hex_digit_value(uint8_t c);
/* Decodes hex (either case, even length, no separators) into out. */
CL_MUST_CHECK int cl_hex_decode(const char *hex, cl_buf *out);
/* Decodes exactly `want` bytes of hex into out. */
CL_MUST_CHECK int cl_hex_decode_fixed(const char *hex, uint8_t *out, size_t want);

/* Standard base64 with padding, NUL-terminated in out. */
CL_MUST_CHECK int cl_base64_encode(const uint8_t *data, size_t len, cl_buf *out);
/* Accepts standard or URL-safe alphabets, optional padding, and ASCII
 * whitespace between characters (as in wrapped files). */
CL_MUST_CHECK int cl_base64_decode(const uint8_t *text, size_t len, cl_buf *out);

/* Reads a whole file (or stdin for "-") with a size cap. */
CL_MUST_CHECK int cl_read_file(const char *path, size_t max_len, cl_buf *out);

/* Raw bytes as read from a file holding either raw CBOR or base64 text of
 * it: base64 is detected when every byte is base64 alphabet or whitespace. */
CL_MUST_CHECK int cl_decode_binary_or_base64(const uint8_t *data, size_t len, cl_buf *out);

/* RFC 3339 UTC with seconds, "2024-09-07T18:00:00Z"; out holds 21+ bytes. */
void cl_format_time(int64_t unix_seconds, char out[32]);

/* "true"/"1" or "false"/"0", as flags and configuration files spell them. */
CL_MUST_CHECK int cl_parse_bool(const char *s, bool *out);

/* Parses a decimal unsigned integer with an explicit maximum. */
CL_MUST_CHECK int cl_parse_u64(const char *s, uint64_t max, uint64_t *out);

#pragma GCC visibility pop

#endif
