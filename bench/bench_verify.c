/* Attestation verification throughput.
 *
 *   bench_verify --root ROOT.pem [--rounds N] [--no-cache] FILE...
 *     Reads every document (raw CBOR or base64) into memory, then verifies
 *     all of them N times in this process with one verifier, each at its
 *     own timestamp: parse + chain + COSE signature every time
 *     (cl_attestation_verify).  The first round is timed on its own (the
 *     certificate cache starts empty) and counted in the total too.
 *
 *   bench_verify --single FILE --root ROOT.pem [--runs N]
 *     One document's full verification, averaged over N runs: with the
 *     cache disabled, with a warm cache, and with a fresh verifier each
 *     time (creation and root loading included).
 *
 * The last line of output is machine-readable: "RESULT key=value ...". */
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct document {
    const char *path;
    cl_buf bytes;
    uint64_t timestamp_ms;
} document;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_verify: %s: %s: %s\n", what, cl_error_name(rc), cl_error_message());
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_verify --root ROOT.pem [--rounds N] [--no-cache] FILE...\n"
                    "       bench_verify --single FILE --root ROOT.pem [--runs N]\n");
    exit(2);
}

static void load(const char *path, document *d)
{
    cl_buf text = CL_BUF_INIT;
    int rc = cl_read_file(path, 4 * CL_ATTESTATION_MAX_DOC_LEN, &text);
    if (rc < 0)
        die(path, rc);
    d->path = path;
    d->bytes = (cl_buf)CL_BUF_INIT;
    rc = cl_decode_binary_or_base64(text.data, text.len, &d->bytes);
    cl_buf_free(&text);
    if (rc < 0)
        die(path, rc);
    cl_attestation_doc doc;
    rc = cl_attestation_parse(d->bytes.data, d->bytes.len, &doc);
    if (rc < 0)
        die(path, rc);
    d->timestamp_ms = doc.timestamp_ms;
    cl_attestation_doc_free(&doc);
}

static cl_verifier *make_verifier(const char *root, size_t cache)
{
    cl_verifier *v;
    int rc = cl_verifier_new(false, &v);
    if (rc < 0)
        die("cl_verifier_new", rc);
    rc = cl_verifier_add_root_pem_file(v, root);
    if (rc < 0)
        die(root, rc);
    cl_verifier_set_cache_size(v, cache);
    return v;
}

static void verify_one(cl_verifier *v, const document *d)
{
    int rc = cl_attestation_verify(v, d->bytes.data, d->bytes.len, NULL, d->timestamp_ms, NULL);
    if (rc < 0)
        die(d->path, rc);
}

static int bench_many(const char *root, document *docs, size_t n, unsigned rounds, bool no_cache)
{
    cl_verifier *v = make_verifier(root, no_cache ? 0 : 1024);
    double t0 = now_s();
    for (size_t i = 0; i < n; i++)
        verify_one(v, &docs[i]);
    double t1 = now_s();
    for (unsigned r = 1; r < rounds; r++)
        for (size_t i = 0; i < n; i++)
            verify_one(v, &docs[i]);
    double t2 = now_s();
    uint64_t hits, misses;
    cl_verifier_cache_stats(v, &hits, &misses);
    cl_verifier_free(v);

    double first = (double)n / (t1 - t0);
    double steady = rounds > 1 ? (double)n * (rounds - 1) / (t2 - t1) : first;
    double overall = (double)n * rounds / (t2 - t0);
    printf("cloister%s: %zu documents x %u rounds in %.3f s\n", no_cache ? " (no cache)" : "", n, rounds,
           t2 - t0);
    printf("  first round: %.0f documents/s\n", first);
    printf("  later rounds: %.0f documents/s\n", steady);
    printf("  overall: %.0f documents/s (cache hits %llu, misses %llu)\n", overall,
           (unsigned long long)hits, (unsigned long long)misses);
    printf("RESULT impl=cloister cache=%d documents=%zu rounds=%u first_per_s=%.1f steady_per_s=%.1f "
           "overall_per_s=%.1f\n",
           no_cache ? 0 : 1, n, rounds, first, steady, overall);
    return 0;
}

static int bench_single(const char *root, document *d, unsigned runs)
{
    /* Cache disabled: every run parses, walks and verifies the whole chain. */
    cl_verifier *v = make_verifier(root, 0);
    verify_one(v, d);
    double t0 = now_s();
    for (unsigned i = 0; i < runs; i++)
        verify_one(v, d);
    double cold = (now_s() - t0) / runs;
    cl_verifier_free(v);

    /* Warm cache: the chain is known, the COSE signature is checked. */
    v = make_verifier(root, 1024);
    verify_one(v, d);
    t0 = now_s();
    for (unsigned i = 0; i < runs; i++)
        verify_one(v, d);
    double warm = (now_s() - t0) / runs;
    cl_verifier_free(v);

    /* A fresh verifier every time, root loading included. */
    t0 = now_s();
    for (unsigned i = 0; i < runs; i++) {
        v = make_verifier(root, 1024);
        verify_one(v, d);
        cl_verifier_free(v);
    }
    double fresh = (now_s() - t0) / runs;

    printf("%s (at its timestamp %llu), %u runs each:\n", d->path, (unsigned long long)d->timestamp_ms, runs);
    printf("  no cache:        %8.1f us per verification\n", cold * 1e6);
    printf("  warm cache:      %8.1f us per verification\n", warm * 1e6);
    printf("  fresh verifier:  %8.1f us per verification (incl. loading the root)\n", fresh * 1e6);
    printf("RESULT single_nocache_us=%.1f single_warm_us=%.1f single_fresh_us=%.1f\n", cold * 1e6,
           warm * 1e6, fresh * 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    const char *root = NULL, *single = NULL;
    uint64_t rounds = 5, runs = 200;
    bool no_cache = false;
    int first_file = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--root") && i + 1 < argc)
            root = argv[++i];
        else if (!strcmp(a, "--single") && i + 1 < argc)
            single = argv[++i];
        else if (!strcmp(a, "--rounds") && i + 1 < argc) {
            if (cl_parse_u64(argv[++i], 1000000, &rounds) < 0 || rounds == 0)
                usage();
        } else if (!strcmp(a, "--runs") && i + 1 < argc) {
            if (cl_parse_u64(argv[++i], 100000000, &runs) < 0 || runs == 0)
                usage();
        } else if (!strcmp(a, "--no-cache"))
            no_cache = true;
        else if (a[0] == '-' && a[1] == '-')
            usage();
        else {
            first_file = i;
            break;
        }
    }
    if (!root)
        usage();
    if (single) {
        if (first_file != argc)
            usage();
        document d;
        load(single, &d);
        int rc = bench_single(root, &d, (unsigned)runs);
        cl_buf_free(&d.bytes);
        return rc;
    }
    size_t n = (size_t)(argc - first_file);
    if (n == 0)
        usage();
    document *docs = calloc(n, sizeof *docs);
    if (!docs)
        return 1;
    for (size_t i = 0; i < n; i++)
        load(argv[first_file + i], &docs[i]);
    int rc = bench_many(root, docs, n, (unsigned)rounds, no_cache);
    for (size_t i = 0; i < n; i++)
        cl_buf_free(&docs[i].bytes);
    free(docs);
    return rc;
}
