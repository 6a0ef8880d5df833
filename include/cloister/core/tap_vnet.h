/* cloister's extension of gvproxy's stream protocol: TAP offloads
 * (IFF_VNET_HDR, checksum and TSO) carried over the stream, so that one
 * record moves a 64 KiB TCP superframe instead of 43 frames of 1514 bytes.
 * docs/tap.md ("The offload extension") describes the wire format.
 *
 * Agreement: the enclave side adds `Cloister-Tap-Offload: vnet-v1` to its
 * POST /connect; gvproxy ignores the field and answers nothing, as ever.
 * cloister's host answers `HTTP/1.1 200 OK` with the same field and an
 * empty body before its first record; from then on both directions carry
 * records: a 32-bit little-endian length L, then L bytes: a 10-byte
 * virtio_net_hdr (little-endian fields) and one Ethernet frame.
 *
 * Every record is untrusted: the decoder refuses a length or a header
 * field that is out of bounds or inconsistent with the frame's own
 * headers (a superframe's csum_start must be its TCP header, the one
 * the enclave's egress policy judged), before the frame is handed on. */
#ifndef CLOISTER_TAP_VNET_H
#define CLOISTER_TAP_VNET_H
#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_TAP_OFFLOAD_FIELD "Cloister-Tap-Offload"
#define CL_TAP_OFFLOAD_TOKEN "vnet-v1"
#define CL_TAP_VNET_LEN_BYTES 4
#define CL_TAP_VNET_HDR 10 /* sizeof(struct virtio_net_hdr), what TUNSETVNETHDRSZ is set to */
/* The largest frame of a record: a GSO superframe (the kernel's 64 KiB
 * gso_max_size plus the Ethernet header and a tag), with room to spare. */
#define CL_TAP_VNET_FRAME_MAX (65536 + 64)
#define CL_TAP_VNET_RECORD_MAX (CL_TAP_VNET_HDR + CL_TAP_VNET_FRAME_MAX)
/* The smallest MSS a superframe may be cut to: the kernel's own floor
 * (TCP_MIN_SND_MSS).  A parent asking for 1-byte segments must not make
 * the enclave's kernel build 64 K packets. */
#define CL_TAP_VNET_MIN_GSO 48

#define CL_TAP_VNET_F_NEEDS_CSUM 1
#define CL_TAP_VNET_F_DATA_VALID 2
#define CL_TAP_VNET_GSO_NONE 0
#define CL_TAP_VNET_GSO_TCPV4 1
#define CL_TAP_VNET_GSO_TCPV6 4
#define CL_TAP_VNET_GSO_ECN 0x80

typedef struct cl_tap_vnet_hdr {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
} cl_tap_vnet_hdr;

void cl_tap_vnet_hdr_read(const uint8_t p[static CL_TAP_VNET_HDR], cl_tap_vnet_hdr *h);
void cl_tap_vnet_hdr_write(const cl_tap_vnet_hdr *h, uint8_t p[static CL_TAP_VNET_HDR]);

/* Enclave side: the POST /connect request, with the offer when offer is true. */
CL_MUST_CHECK int cl_tap_connect_request_offer(cl_buf *out, bool offer);
/* Parent side: cl_tap_parse_connect, and *offered when the request carries
 * the offer (an unknown token is no offer). */
CL_MUST_CHECK int cl_tap_parse_connect_offer(const uint8_t *data, size_t len, size_t *consumed, bool *complete,
                                             bool *offered);
/* Parent side: the acceptance, written before the first record. */
CL_MUST_CHECK int cl_tap_offload_reply(cl_buf *out);
/* Enclave side, on the first bytes from the parent after an offer.
 * *complete false: read more.  Otherwise *accepted says whether the
 * parent accepted (then *consumed counts the reply's head, records
 * follow); when it did not, nothing is consumed and the bytes are plain
 * gvproxy frames.  Any other HTTP answer fails (CL_EPROTO), as
 * cl_tap_check_not_http_reply. */
CL_MUST_CHECK int cl_tap_parse_offload_reply(const uint8_t *data, size_t len, size_t *consumed, bool *complete,
                                             bool *accepted);

/* Checks a header against the frame it comes with (frame_len bytes; frame
 * may be NULL when only the fields are to be checked, as the decoder does
 * before the frame has arrived).  max_plain bounds a frame that is not a
 * superframe (the link's MTU + 18).  CL_EPROTO names the bad field,
 * CL_ELIMIT a size over its bound. */
CL_MUST_CHECK int cl_tap_vnet_check(const cl_tap_vnet_hdr *h, const uint8_t *frame, size_t frame_len,
                                    size_t max_plain);

/* Writes the 4-byte length for a record of rec_len bytes (header + frame). */
CL_MUST_CHECK int cl_tap_vnet_encode_len(size_t rec_len, uint8_t out[static CL_TAP_VNET_LEN_BYTES]);

/* Decodes the next record at the start of data[0..len): as cl_tap_decode.
 * *record borrows header + frame (what one write to an IFF_VNET_HDR TAP
 * takes), *hdr is the parsed header.  The length and the header's fields
 * are judged as soon as their bytes are there, before the frame is
 * awaited; the frame's own headers when it has arrived. */
CL_MUST_CHECK int cl_tap_vnet_decode(const uint8_t *data, size_t len, size_t max_plain, cl_slice *record,
                                     cl_tap_vnet_hdr *hdr, size_t *consumed, bool *complete);

#pragma GCC visibility pop
#endif
