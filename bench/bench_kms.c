/* Decrypt round trips against a KMS (kms-local in bench/kms.sh), the way an
 * enclave makes them: libcloister's client, optionally with a Recipient
 * (attestation document from the NSM, CMS opened here) and through the
 * host's outbound proxy.  Prints one line of key=value figures:
 *
 *   bench_kms --region R --key ID --secret S --ca-file PEM --ciphertext FILE
 *             [--proxy ADDR] [--endpoint URL] [--nsm ADDR] [--seconds S]
 *             [--threads N] [--new-connection]
 *
 * Each thread has its own session (RSA-2048 key, client, connection); with
 * --new-connection every call gets a new client, hence a new TCP and TLS
 * connection. Time per call is split into attestation (NSM document), RSA
 * (opening the CMS envelope) and network (the HTTP exchange: proxy, TLS,
 * and KMS's own work), as measured by the client. */
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms.h"

#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct opts {
    const char *region, *akid, *secret, *ca, *proxy, *endpoint, *nsm;
    double seconds;
    int threads;
    bool new_connection;
    cl_buf ciphertext;
} opts;

typedef struct worker {
    const opts *o;
    pthread_t th;
    cl_kms_stats stats;
    uint64_t keygen_us;
    int rc;
    char error[512];
} worker;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void add(cl_kms_stats *a, const cl_kms_stats *b)
{
    a->calls += b->calls;
    a->attempts += b->attempts;
    a->retries += b->retries;
    a->attestation_us += b->attestation_us;
    a->rsa_us += b->rsa_us;
    a->network_us += b->network_us;
    a->total_us += b->total_us;
}

static void *run(void *arg)
{
    worker *w = arg;
    const opts *o = w->o;
    cl_aws_credentials_provider *creds = NULL;
    cl_nsm *nsm = NULL;
    cl_kms_recipient *r = NULL;
    cl_kms *k = NULL;
    cl_buf pt = CL_BUF_INIT;
    int rc = cl_aws_credentials_static(o->akid, o->secret, NULL, &creds);
    if (rc == CL_OK && o->nsm)
        rc = cl_nsm_open(o->nsm, &nsm);
    uint64_t t0 = now_us();
    if (rc == CL_OK && o->nsm)
        rc = cl_kms_recipient_new(nsm, &r);
    w->keygen_us = now_us() - t0;
    cl_kms_config cfg = {.region = o->region, .endpoint = o->endpoint, .connect = o->proxy, .ca_file = o->ca,
                         .credentials = creds, .recipient = r, .max_attempts = 1};
    uint64_t end = now_us() + (uint64_t)(o->seconds * 1e6);
    while (rc == CL_OK && now_us() < end) {
        if (!k)
            rc = cl_kms_new(&cfg, &k);
        if (rc == CL_OK)
            rc = cl_kms_decrypt(k, NULL, o->ciphertext.data, o->ciphertext.len, &pt);
        if (rc == CL_OK && o->new_connection) {
            cl_kms_stats s;
            cl_kms_get_stats(k, &s);
            add(&w->stats, &s);
            cl_kms_free(k);
            k = NULL;
        }
    }
    if (rc < 0)
        snprintf(w->error, sizeof w->error, "%s", cl_error_message());
    if (k) {
        cl_kms_stats s;
        cl_kms_get_stats(k, &s);
        add(&w->stats, &s);
    }
    w->rc = rc;
    cl_buf_free(&pt);
    cl_kms_free(k);
    cl_kms_recipient_free(r);
    cl_nsm_close(nsm);
    cl_aws_credentials_provider_free(creds);
    return NULL;
}

int main(int argc, char **argv)
{
    opts o = {.seconds = 5, .threads = 1};
    const char *ct_path = NULL;
    static const struct option lo[] = {
        {"region", required_argument, NULL, 'r'},     {"key", required_argument, NULL, 'k'},
        {"secret", required_argument, NULL, 's'},     {"ca-file", required_argument, NULL, 'c'},
        {"proxy", required_argument, NULL, 'p'},      {"endpoint", required_argument, NULL, 'e'},
        {"nsm", required_argument, NULL, 'n'},        {"seconds", required_argument, NULL, 'S'},
        {"threads", required_argument, NULL, 't'},    {"new-connection", no_argument, NULL, 'N'},
        {"ciphertext", required_argument, NULL, 'x'}, {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'r': o.region = optarg; break;
        case 'k': o.akid = optarg; break;
        case 's': o.secret = optarg; break;
        case 'c': o.ca = optarg; break;
        case 'p': o.proxy = optarg; break;
        case 'e': o.endpoint = optarg; break;
        case 'n': o.nsm = optarg; break;
        case 'S': o.seconds = atof(optarg); break;
        case 't': o.threads = atoi(optarg); break;
        case 'N': o.new_connection = true; break;
        case 'x': ct_path = optarg; break;
        default: fprintf(stderr, "bench_kms: bad option (see the source's header)\n"); return 2;
        }
    }
    cl_buf raw = CL_BUF_INIT;
    if (!o.region || !o.akid || !o.secret || !ct_path || o.threads < 1 || o.threads > 64 ||
        cl_read_file(ct_path, 1 << 16, &raw) < 0 || cl_decode_binary_or_base64(raw.data, raw.len, &o.ciphertext) < 0) {
        fprintf(stderr, "bench_kms: needs --region, --key, --secret and a readable --ciphertext FILE\n");
        return 2;
    }
    cl_buf_free(&raw);
    worker *w = calloc((size_t)o.threads, sizeof *w);
    uint64_t t0 = now_us();
    for (int i = 0; i < o.threads; i++) {
        w[i].o = &o;
        pthread_create(&w[i].th, NULL, run, &w[i]);
    }
    cl_kms_stats sum = {0};
    uint64_t keygen = 0;
    int failed = 0;
    for (int i = 0; i < o.threads; i++) {
        pthread_join(w[i].th, NULL);
        add(&sum, &w[i].stats);
        keygen += w[i].keygen_us;
        if (w[i].rc < 0) {
            fprintf(stderr, "bench_kms: thread %d: %s\n", i, w[i].error);
            failed = 1;
        }
    }
    double wall = (double)(now_us() - t0 - keygen / (uint64_t)o.threads) / 1e6;
    double n = sum.calls ? (double)sum.calls : 1;
    printf("calls=%llu per_s=%.1f mean_ms=%.3f attestation_ms=%.3f rsa_ms=%.3f network_ms=%.3f other_ms=%.3f "
           "keygen_ms=%.1f retries=%llu\n",
           (unsigned long long)sum.calls, (double)sum.calls / wall, (double)sum.total_us / n / 1000.0,
           (double)sum.attestation_us / n / 1000.0, (double)sum.rsa_us / n / 1000.0,
           (double)sum.network_us / n / 1000.0,
           (double)(sum.total_us - sum.attestation_us - sum.rsa_us - sum.network_us) / n / 1000.0,
           (double)keygen / o.threads / 1000.0, (unsigned long long)sum.retries);
    free(w);
    cl_buf_free(&o.ciphertext);
    return failed;
}
