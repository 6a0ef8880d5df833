/* Feeds arbitrary bytes to the DynamoDB client's answer readers: the
 * first byte picks the reader (an answer with Item, with Attributes, bare,
 * or an error answer).  They must never crash; an item they accept must
 * re-encode (jansson) to text they accept again as the same item, and its
 * attributes must read back through the typed getters without a crash. */
#include "cloister/enclave/dynamodb.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0] % 4;
    data++;
    size--;
    if (sel == 3) {
        char type[128], msg[256];
        if (cl_dynamodb_parse_error(400, data, size, type, sizeof type, msg, sizeof msg) == CL_OK) {
            (void)cl_dynamodb_error_code(400, type);
            (void)cl_dynamodb_retryable(400, type);
            for (const char *p = msg; *p; p++)
                if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                    abort();
        }
        return 0;
    }
    const char *field = sel == 0 ? "Item" : sel == 1 ? "Attributes" : NULL;
    json_t *root = NULL, *item = NULL;
    if (cl_dynamodb_parse_answer(data, size, field, &root, &item) < 0) {
        if (root || item)
            abort();
        return 0;
    }
    if (!json_is_object(root))
        abort();
    if (item) {
        char *text = json_dumps(item, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
            abort();
        size_t n = strlen(text) + 16;
        char *again = malloc(n);
        snprintf(again, n, "{\"Item\":%s}", text);
        json_t *r2 = NULL, *i2 = NULL;
        if (cl_dynamodb_parse_answer((const uint8_t *)again, strlen(again), "Item", &r2, &i2) < 0 ||
            !json_equal(item, i2))
            abort();
        const char *k;
        json_t *v;
        json_object_foreach(item, k, v) {
            const char *s;
            int64_t num;
            cl_buf b = CL_BUF_INIT;
            (void)cl_dynamodb_get_s(item, k, &s);
            (void)cl_dynamodb_get_n(item, k, &num);
            (void)cl_dynamodb_get_b(item, k, &b);
            cl_buf_free(&b);
        }
        json_decref(r2);
        json_decref(i2);
        free(again);
        free(text);
    }
    json_decref(item);
    json_decref(root);
    cl_error_clear();
    return 0;
}
