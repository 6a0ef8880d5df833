/* gvproxy's stream protocol for a TAP link (gvisor-tap-vsock's "hyperkit"
 * stream framing, the one gvforwarder and nitriding speak over vsock).
 *
 * Handshake: the enclave side opens the stream and writes one HTTP/1.1
 * request, `POST /connect` with an empty body.  The parent answers nothing
 * at all: gvproxy hijacks the connection and from the next byte on both
 * directions carry frames.
 *
 * Framing, both directions: a 16-bit little-endian length, then that many
 * bytes of one Ethernet frame (destination MAC first, no FCS).  There is
 * no other header, version or checksum.
 *
 * Neither side trusts a length it reads: the decoder bounds it by the
 * caller's maximum (the link's MTU plus the Ethernet header) and rejects
 * frames shorter than an Ethernet header, so that a hostile or confused
 * peer makes the stream close instead of steering memory. */
#ifndef CLOISTER_TAP_FRAMES_H
#define CLOISTER_TAP_FRAMES_H
#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_TAP_CONNECT_PATH "/connect"
#define CL_TAP_LEN_BYTES 2
#define CL_TAP_ETH_HEADER 14
/* The largest length the 16-bit prefix can say. */
#define CL_TAP_FRAME_LIMIT 65535
/* Bound on the /connect request head read by the parent side. */
#define CL_TAP_CONNECT_MAX 4096

/* The largest frame a link of this MTU carries: MTU + Ethernet header
 * + one 802.1Q tag (the kernel may hand us a tagged frame). */
size_t cl_tap_max_frame(unsigned mtu);

/* Appends the request the enclave side sends to open the stream. */
CL_MUST_CHECK int cl_tap_connect_request(cl_buf *out);

/* Parent side: parses the /connect request at the start of the stream.
 * *complete is false (and *consumed 0) while the head's end has not
 * arrived; bytes after *consumed are already frames.  Anything but a POST
 * to /connect with no body fails (CL_EPROTO), a head longer than
 * CL_TAP_CONNECT_MAX with CL_ELIMIT, malformed HTTP with CL_EPARSE. */
CL_MUST_CHECK int cl_tap_parse_connect(const uint8_t *data, size_t len, size_t *consumed, bool *complete);

/* Enclave side: gvproxy never answers /connect, so the first bytes of the
 * stream are a frame length.  A parent that answers with an HTTP status
 * instead ("HTTP/1.1 404 ...") is not a /connect endpoint; this names it
 * (CL_EPROTO) as soon as the first bytes make it certain, instead of
 * reading "HT" as a 21576-byte frame. */
CL_MUST_CHECK int cl_tap_check_not_http_reply(const uint8_t *data, size_t len);

/* Writes the 2-byte prefix for a frame of frame_len bytes: CL_ELIMIT
 * unless CL_TAP_ETH_HEADER <= frame_len <= CL_TAP_FRAME_LIMIT. */
CL_MUST_CHECK int cl_tap_encode_len(size_t frame_len, uint8_t out[static CL_TAP_LEN_BYTES]);
/* Appends prefix and frame. */
CL_MUST_CHECK int cl_tap_encode(cl_buf *out, const uint8_t *frame, size_t frame_len);

/* Decodes the next frame at the start of data[0..len).  On success either
 * *complete is true, *frame borrows the frame's bytes and *consumed counts
 * prefix + frame, or *complete is false and nothing is consumed (read more;
 * at most CL_TAP_LEN_BYTES + max_frame bytes are ever needed).  A length
 * below CL_TAP_ETH_HEADER fails with CL_EPARSE, one above max_frame with
 * CL_ELIMIT, before a single byte of the frame is awaited. */
CL_MUST_CHECK int cl_tap_decode(const uint8_t *data, size_t len, size_t max_frame, cl_slice *frame,
                                size_t *consumed, bool *complete);

#pragma GCC visibility pop
#endif
