/* Feeds arbitrary bytes to the NSM codec and the simulator engine:
 * decoders must never crash, what decodes must re-encode to a stable
 * form, and the simulator must answer everything with a valid response. */
#include "cloister/enclave/nsm.h"
#include "cloister/sim/nsm_sim.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char state_dir[64];
static cl_nsm_sim *sim;

static void cleanup(void)
{
    cl_nsm_sim_free(sim);
    sim = NULL;
    DIR *d = opendir(state_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0')))
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", state_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(state_dir);
}

static uint64_t fixed_clock(void *ctx)
{
    (void)ctx;
    return 1725719859545ull;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(state_dir, sizeof state_dir, "/tmp/cloister-fuzz-nsm-XXXXXX");
    if (!mkdtemp(state_dir))
        abort();
    cl_nsm_sim_config cfg = {.state_dir = state_dir, .instance_id = "i-0123456789abcdef0", .clock = fixed_clock};
    if (cl_nsm_sim_new(&cfg, &sim) != CL_OK) {
        fprintf(stderr, "cannot start the simulator: %s\n", cl_error_message());
        abort();
    }
    atexit(cleanup);
    return 0;
}

static void check_request_round_trip(const uint8_t *data, size_t size)
{
    cl_nsm_request req;
    cl_cbor_doc doc;
    if (cl_nsm_request_decode(data, size, &req, &doc) != CL_OK)
        return;
    cl_buf once = CL_BUF_INIT, twice = CL_BUF_INIT;
    int rc = cl_nsm_request_encode(&req, &once);
    if (rc != CL_OK) {
        /* Spelling out absent options as null can push a request that was
         * just under the limit over it; anything else is a bug. */
        if (rc != CL_ELIMIT)
            abort();
        cl_cbor_doc_free(&doc);
        return;
    }
    cl_nsm_request again;
    cl_cbor_doc doc2;
    if (cl_nsm_request_decode(once.data, once.len, &again, &doc2) != CL_OK)
        abort();
    if (cl_nsm_request_encode(&again, &twice) != CL_OK || once.len != twice.len ||
        memcmp(once.data, twice.data, once.len) != 0)
        abort();
    if (again.op != req.op || again.index != req.index || again.range != req.range ||
        again.data.len != req.data.len || again.has_nonce != req.has_nonce)
        abort();
    cl_cbor_doc_free(&doc2);
    cl_cbor_doc_free(&doc);
    cl_buf_free(&once);
    cl_buf_free(&twice);
}

static void check_response_round_trip(const uint8_t *data, size_t size)
{
    cl_nsm_response resp;
    cl_cbor_doc doc;
    if (cl_nsm_response_decode(data, size, &resp, &doc) != CL_OK)
        return;
    cl_buf once = CL_BUF_INIT;
    if (cl_nsm_response_encode(&resp, &once) == CL_OK) {
        cl_nsm_response again;
        cl_cbor_doc doc2;
        if (cl_nsm_response_decode(once.data, once.len, &again, &doc2) != CL_OK)
            abort();
        if (again.op != resp.op || again.error_code != resp.error_code || again.data.len != resp.data.len ||
            memcmp(&again.description, &resp.description, sizeof resp.description) != 0)
            abort();
        cl_cbor_doc_free(&doc2);
    }
    cl_cbor_doc_free(&doc);
    cl_buf_free(&once);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_request_round_trip(data, size);
    check_response_round_trip(data, size);

    cl_buf out = CL_BUF_INIT;
    if (cl_nsm_sim_handle(sim, data, size, &out) != CL_OK)
        abort();
    cl_nsm_response resp;
    cl_cbor_doc doc;
    if (cl_nsm_response_decode(out.data, out.len, &resp, &doc) != CL_OK)
        abort();
    cl_cbor_doc_free(&doc);
    cl_buf_free(&out);
    return 0;
}
