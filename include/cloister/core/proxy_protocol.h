/* PROXY protocol version 2 (HAProxy's "PROXY protocol" specification,
 * section 2.2): the binary header a proxy sends before the client's bytes
 * to tell the server who the client is.  `cloister host --forward
 * ...,proxy-protocol` writes it towards the enclave; the enclave parses it.
 *
 *   12-byte signature  \r\n\r\n\0\r\nQUIT\n
 *   1 byte             version (high nibble, 2) | command (0 LOCAL, 1 PROXY)
 *   1 byte             family (high nibble) | transport (low nibble)
 *   2 bytes            big-endian length of what follows
 *   addresses          INET 12 bytes, INET6 36, UNIX 216, UNSPEC none
 *   TLVs               type (1), big-endian length (2), value
 *
 * The parser is strict: unknown versions, commands and family/transport
 * pairs, an address block longer than the declared length, a TLV that does
 * not fit, a malformed SSL TLV and a wrong CRC32C are all rejected. */
#ifndef CLOISTER_PROXY_PROTOCOL_H
#define CLOISTER_PROXY_PROTOCOL_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CL_PP2_SIGNATURE "\r\n\r\n\0\r\nQUIT\n"
#define CL_PP2_SIGNATURE_LEN 12
#define CL_PP2_FIXED_LEN 16                 /* signature, version/command, family, length */
#define CL_PP2_MAX_LEN (CL_PP2_FIXED_LEN + 65535)

enum cl_pp2_command { CL_PP2_LOCAL = 0, CL_PP2_PROXY = 1 };
enum cl_pp2_family { CL_PP2_AF_UNSPEC = 0, CL_PP2_AF_INET = 1, CL_PP2_AF_INET6 = 2, CL_PP2_AF_UNIX = 3 };
enum cl_pp2_transport { CL_PP2_UNSPEC = 0, CL_PP2_STREAM = 1, CL_PP2_DGRAM = 2 };

/* TLV types the specification assigns (PP2_TYPE_*), and AWS's (NLB). */
enum cl_pp2_tlv_type {
    CL_PP2_TYPE_ALPN = 0x01,
    CL_PP2_TYPE_AUTHORITY = 0x02,
    CL_PP2_TYPE_CRC32C = 0x03,
    CL_PP2_TYPE_NOOP = 0x04,
    CL_PP2_TYPE_UNIQUE_ID = 0x05,
    CL_PP2_TYPE_SSL = 0x20,
    CL_PP2_TYPE_NETNS = 0x30,
    CL_PP2_TYPE_AWS = 0xEA,
};

typedef struct cl_pp2_header {
    int command;   /* CL_PP2_LOCAL or CL_PP2_PROXY */
    int family;    /* CL_PP2_AF_* as sent */
    int transport; /* CL_PP2_STREAM, ... */
    /* The client (src) and the address it connected to (dst), as socket
     * addresses (sa_family AF_INET, AF_INET6 or AF_UNIX); ss_family is
     * AF_UNSPEC for LOCAL and for the UNSPEC family, whose addresses the
     * receiver must ignore. */
    struct sockaddr_storage src, dst;
    cl_slice tlvs;     /* the validated TLV block, borrowed from the input */
    size_t header_len; /* bytes of the whole header, to skip before the payload */
} cl_pp2_header;

/* Parses the header at the start of buf.  While buf holds a prefix of a
 * header that could still be valid, *complete is false and nothing else is
 * filled; bytes that cannot start a v2 header fail with CL_EPARSE at once. */
CL_MUST_CHECK int cl_pp2_parse(const uint8_t *buf, size_t len, cl_pp2_header *out, bool *complete);

/* The value of the first TLV of `type` in a parsed header. */
CL_MUST_CHECK int cl_pp2_find_tlv(const cl_pp2_header *h, uint8_t type, cl_slice *value, bool *found);

typedef struct cl_pp2_tlv {
    uint8_t type;
    const uint8_t *value;
    uint16_t len;
} cl_pp2_tlv;

/* Appends a PROXY (client src connected to dst) header to out.  Both are
 * AF_INET, AF_INET6 or AF_UNIX; an IPv4 address paired with an IPv6 one is
 * sent as IPv4-mapped IPv6, and two IPv4-mapped addresses as IPv4.  Other
 * families (vsock) are sent as UNSPEC.  With crc, a CRC32C TLV covering the
 * whole header is added last. */
CL_MUST_CHECK int cl_pp2_encode(const struct sockaddr *src, const struct sockaddr *dst, const cl_pp2_tlv *tlvs,
                                size_t tlv_count, bool crc, cl_buf *out);
/* A LOCAL header (a health check by the proxy itself, no addresses). */
CL_MUST_CHECK int cl_pp2_encode_local(cl_buf *out);

/* CRC32C (Castagnoli), as the CRC32C TLV uses it. */
uint32_t cl_crc32c(uint32_t crc, const uint8_t *data, size_t len);

#pragma GCC visibility pop

#endif
