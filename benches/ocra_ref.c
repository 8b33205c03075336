/*
 * A plain C reference for OCRA verification (RFC 6287), suite OCRA-1:HOTP-SHA1-8:QN06-PSHA1,
 * on OpenSSL's low-level SHA-1 (its block function takes the SHA extensions where the CPU
 * has them). No Python: it shows what one core can do, and benches/kernel_report.py sets
 * sls_core's single-thread ocra.verify_batch against it.
 *
 *   cc -std=c11 -O3 -march=native -o ocra_ref benches/ocra_ref.c -lcrypto
 *   ocra_ref INPUT [--mode fresh|prepared|both] [--repeats K] [--verdicts OUT]
 *   ocra_ref INPUT --serve
 *
 * INPUT is written by kernel_report.py (little-endian):
 *   "OCRAREF1", then u64 items, keys, key_len, question_width, response_width,
 *   pin_hash_len, suite_len; the suite text; keys (keys x key_len); key_index
 *   (items x u64); questions (items x question_width, NUL-padded ASCII digits);
 *   pin_hashes (items x pin_hash_len); responses (items x response_width).
 *
 * Per item it does what ocra.verify_batch does for this suite: encodes the numeric
 * question (decimal to hex nibbles, left-aligned in the 128-byte Q field), builds
 * suite || 0x00 || Q || SHA1(PIN), HMAC-SHA1s it, truncates to 8 digits (RFC 4226 5.3),
 * parses the response (exactly 8 ASCII digits, else MALFORMED) and compares the values
 * in constant time. Verdicts: 0 OK, 1 WRONG, 2 MALFORMED.
 *
 * Two key modes, timed separately (best of K passes over every item):
 *   fresh     each item's own 20-byte key (a column gathered through key_index before
 *             timing, as the Python side gets it): ipad and opad hashed per item,
 *             6 compressions;
 *   prepared  a table of per-key inner and outer SHA_CTX states (after the pads), the
 *             item's row picked through key_index: 4 compressions.
 * Each runs in two styles:
 *   the plain loop (modes "fresh", "prepared"): SHA1_Init/Update/Final per hash, as a C
 *             programmer would write it;
 *   block     (modes "fresh-block", "prepared-block"): SHA1_Transform, the bare block
 *             function, on a message padded once with only the item's fields rewritten,
 *             and prepared keys as 2 x 20 bytes of state: the kernel's own shortcuts.
 * Output: one JSON object on stdout with items per second for each mode timed (--mode
 * fresh times "fresh" and "fresh-block", and so on), after checking that every mode gave
 * the same verdicts.
 *
 * With --serve it prepares every mode, then reads one word a line on stdin (a mode, or
 * "verdicts") and answers each with one line: the wall-clock and the thread's CPU seconds
 * of one pass in that mode, or the counts of the last pass's verdicts. The caller can so
 * interleave single passes of C and of sls_core, and noise on a shared machine hits both
 * alike.
 */
#define _POSIX_C_SOURCE 200809L
/* SHA1_Init/Update/Final/Transform are deprecated in OpenSSL 3 but still exported; they
 * are the low-level calls this reference is meant to measure. */
#define OPENSSL_API_COMPAT 0x10100000L
#define OPENSSL_SUPPRESS_DEPRECATED

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OK = 0, WRONG = 1, MALFORMED = 2 };
enum { QUESTION_FIELD = 128, DIGITS = 8, BLOCK = 64, MAX_MESSAGE = 512 };

struct input {
    uint64_t items, keys, key_len, question_width, response_width, pin_hash_len, suite_len;
    char *suite;
    uint8_t *key_table, *questions, *pin_hashes, *responses;
    uint64_t *key_index;
};

struct prepared_key {
    SHA_CTX inner, outer;
};

static void die(const char *what) {
    fprintf(stderr, "ocra_ref: %s\n", what);
    exit(2);
}

static void *read_exact(FILE *f, uint64_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) die("out of memory");
    if (size && fread(p, 1, size, f) != size) die("input file is truncated");
    return p;
}

static void load(const char *path, struct input *in) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the input file");
    char magic[8];
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "OCRAREF1", 8) != 0)
        die("input file: bad magic (want OCRAREF1)");
    uint64_t header[7];
    if (fread(header, sizeof header[0], 7, f) != 7) die("input file: short header");
    in->items = header[0];
    in->keys = header[1];
    in->key_len = header[2];
    in->question_width = header[3];
    in->response_width = header[4];
    in->pin_hash_len = header[5];
    in->suite_len = header[6];
    if (in->key_len == 0 || in->key_len > BLOCK) die("key_len must be 1 to 64");
    if (in->pin_hash_len != SHA_DIGEST_LENGTH) die("pin_hash_len must be 20 (PSHA1)");
    in->suite = read_exact(f, in->suite_len);
    in->key_table = read_exact(f, in->keys * in->key_len);
    in->key_index = read_exact(f, in->items * sizeof(uint64_t));
    in->questions = read_exact(f, in->items * in->question_width);
    in->pin_hashes = read_exact(f, in->items * in->pin_hash_len);
    in->responses = read_exact(f, in->items * in->response_width);
    fclose(f);
    for (uint64_t i = 0; i < in->items; i++)
        if (in->key_index[i] >= in->keys) die("key_index out of range");
    if (in->suite_len + 1 + QUESTION_FIELD + SHA_DIGEST_LENGTH > MAX_MESSAGE)
        die("suite too long");
}

/* The QN encoding (RFC 6287 Appendix A: BigInteger(q, 10).toString(16), right-padded with
 * '0'): the value's hex digits from the first non-zero one, packed from byte 0. Questions
 * of 4 to 19 digits (every QN06 question); anything else is malformed here. */
static int encode_question(const uint8_t *cell, uint64_t width, uint8_t *field) {
    uint64_t len = width;
    while (len > 0 && cell[len - 1] == 0) len--;
    if (len < 4 || len > 19) return 0;
    uint64_t value = 0;
    for (uint64_t i = 0; i < len; i++) {
        unsigned d = (unsigned)cell[i] - '0';
        if (d > 9) return 0;
        value = value * 10 + d;
    }
    memset(field, 0, QUESTION_FIELD);
    if (value) {
        value <<= (unsigned)__builtin_clzll(value) & ~3u;
        for (int i = 0; i < 8; i++) field[i] = (uint8_t)(value >> (56 - 8 * i));
    }
    return 1;
}

/* Exactly DIGITS ASCII digits (NUL padding allowed after them, as numpy's S dtype). */
static int parse_response(const uint8_t *cell, uint64_t width, uint64_t *value) {
    uint64_t len = width;
    while (len > 0 && cell[len - 1] == 0) len--;
    if (len != DIGITS) return 0;
    uint64_t v = 0;
    for (int i = 0; i < DIGITS; i++) {
        unsigned d = (unsigned)cell[i] - '0';
        if (d > 9) return 0;
        v = v * 10 + d;
    }
    *value = v;
    return 1;
}

/* 1 when equal, without a data-dependent branch. */
static inline unsigned same_value(uint64_t a, uint64_t b) {
    uint64_t diff = a ^ b;
    return (unsigned)(((diff | (0 - diff)) >> 63) ^ 1);
}

static inline uint64_t truncate8(const uint8_t mac[SHA_DIGEST_LENGTH]) {
    unsigned offset = mac[SHA_DIGEST_LENGTH - 1] & 0x0f;
    uint32_t bin = ((uint32_t)(mac[offset] & 0x7f) << 24) | ((uint32_t)mac[offset + 1] << 16) |
                   ((uint32_t)mac[offset + 2] << 8) | (uint32_t)mac[offset + 3];
    return bin % 100000000u;
}

static void prepare_key(const uint8_t *key, uint64_t key_len, struct prepared_key *out) {
    uint8_t pad[BLOCK];
    memset(pad, 0x36, BLOCK);
    for (uint64_t i = 0; i < key_len; i++) pad[i] ^= key[i];
    SHA1_Init(&out->inner);
    SHA1_Update(&out->inner, pad, BLOCK);
    for (int i = 0; i < BLOCK; i++) pad[i] ^= 0x36 ^ 0x5c;
    SHA1_Init(&out->outer);
    SHA1_Update(&out->outer, pad, BLOCK);
}

/* One item from the prepared states (copied, so the table stays as it is). */
static uint8_t verify_item(const struct input *in, uint64_t row, const struct prepared_key *key,
                           uint8_t *message, uint64_t prefix_len) {
    uint64_t typed;
    if (!encode_question(in->questions + row * in->question_width, in->question_width,
                         message + prefix_len))
        return MALFORMED;
    memcpy(message + prefix_len + QUESTION_FIELD, in->pin_hashes + row * SHA_DIGEST_LENGTH,
           SHA_DIGEST_LENGTH);
    if (!parse_response(in->responses + row * in->response_width, in->response_width, &typed))
        return MALFORMED;
    uint8_t digest[SHA_DIGEST_LENGTH];
    SHA_CTX ctx = key->inner;
    SHA1_Update(&ctx, message, prefix_len + QUESTION_FIELD + SHA_DIGEST_LENGTH);
    SHA1_Final(digest, &ctx);
    ctx = key->outer;
    SHA1_Update(&ctx, digest, SHA_DIGEST_LENGTH);
    SHA1_Final(digest, &ctx);
    return same_value(typed, truncate8(digest)) ? OK : WRONG;
}

static void verify_fresh(const struct input *in, const uint8_t *key_column, uint8_t *verdicts) {
    uint8_t message[MAX_MESSAGE];
    memcpy(message, in->suite, in->suite_len);
    message[in->suite_len] = 0;
    uint64_t prefix_len = in->suite_len + 1;
    for (uint64_t row = 0; row < in->items; row++) {
        struct prepared_key key;
        prepare_key(key_column + row * in->key_len, in->key_len, &key);
        verdicts[row] = verify_item(in, row, &key, message, prefix_len);
    }
}

static void verify_prepared(const struct input *in, const struct prepared_key *table,
                            uint8_t *verdicts) {
    uint8_t message[MAX_MESSAGE];
    memcpy(message, in->suite, in->suite_len);
    message[in->suite_len] = 0;
    uint64_t prefix_len = in->suite_len + 1;
    for (uint64_t row = 0; row < in->items; row++)
        verdicts[row] = verify_item(in, row, &table[in->key_index[row]], message, prefix_len);
}

/* --- the block-function style ------------------------------------------------------- */

struct compact_key {
    uint32_t inner[5], outer[5];
};

/* The inner hash's message, padded once: suite || 0x00 || Q || P, 0x80, zeros, and the
 * bit length of (ipad block + message). */
struct padded {
    uint8_t bytes[MAX_MESSAGE + 2 * BLOCK];
    uint64_t question_at, pin_at, blocks;
};

static void pad_message(const struct input *in, struct padded *m) {
    uint64_t len = in->suite_len + 1 + QUESTION_FIELD + SHA_DIGEST_LENGTH;
    memset(m->bytes, 0, sizeof m->bytes);
    memcpy(m->bytes, in->suite, in->suite_len);
    m->question_at = in->suite_len + 1;
    m->pin_at = m->question_at + QUESTION_FIELD;
    m->blocks = (len + 1 + 8 + BLOCK - 1) / BLOCK;
    m->bytes[len] = 0x80;
    uint64_t bits = (BLOCK + len) * 8;
    for (int i = 0; i < 8; i++) m->bytes[m->blocks * BLOCK - 1 - i] = (uint8_t)(bits >> (8 * i));
}

static inline void set_state(SHA_CTX *ctx, const uint32_t h[5]) {
    ctx->h0 = h[0], ctx->h1 = h[1], ctx->h2 = h[2], ctx->h3 = h[3], ctx->h4 = h[4];
}

static void compact_prepare(const uint8_t *key, uint64_t key_len, struct compact_key *out) {
    uint8_t pad[BLOCK];
    SHA_CTX ctx;
    memset(pad, 0x36, BLOCK);
    for (uint64_t i = 0; i < key_len; i++) pad[i] ^= key[i];
    SHA1_Init(&ctx);
    SHA1_Transform(&ctx, pad);
    uint32_t inner[5] = {ctx.h0, ctx.h1, ctx.h2, ctx.h3, ctx.h4};
    for (int i = 0; i < BLOCK; i++) pad[i] ^= 0x36 ^ 0x5c;
    SHA1_Init(&ctx);
    SHA1_Transform(&ctx, pad);
    uint32_t outer[5] = {ctx.h0, ctx.h1, ctx.h2, ctx.h3, ctx.h4};
    memcpy(out->inner, inner, sizeof inner);
    memcpy(out->outer, outer, sizeof outer);
    OPENSSL_cleanse(pad, sizeof pad);
}

static uint8_t block_verify_item(const struct input *in, uint64_t row,
                                 const struct compact_key *key, struct padded *m) {
    uint64_t typed;
    if (!encode_question(in->questions + row * in->question_width, in->question_width,
                         m->bytes + m->question_at))
        return MALFORMED;
    memcpy(m->bytes + m->pin_at, in->pin_hashes + row * SHA_DIGEST_LENGTH, SHA_DIGEST_LENGTH);
    if (!parse_response(in->responses + row * in->response_width, in->response_width, &typed))
        return MALFORMED;
    SHA_CTX ctx;
    set_state(&ctx, key->inner);
    for (uint64_t b = 0; b < m->blocks; b++) SHA1_Transform(&ctx, m->bytes + b * BLOCK);
    /* The outer block: inner digest, 0x80, zeros, bit length of (opad block + 20) = 672. */
    uint8_t outer_block[BLOCK] = {0};
    uint32_t h[5] = {ctx.h0, ctx.h1, ctx.h2, ctx.h3, ctx.h4};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) outer_block[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
    outer_block[SHA_DIGEST_LENGTH] = 0x80;
    outer_block[BLOCK - 2] = (672 >> 8) & 0xff;
    outer_block[BLOCK - 1] = 672 & 0xff;
    set_state(&ctx, key->outer);
    SHA1_Transform(&ctx, outer_block);
    uint8_t digest[SHA_DIGEST_LENGTH];
    uint32_t d[5] = {ctx.h0, ctx.h1, ctx.h2, ctx.h3, ctx.h4};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(d[i] >> (24 - 8 * j));
    return same_value(typed, truncate8(digest)) ? OK : WRONG;
}

static void block_verify_fresh(const struct input *in, const uint8_t *key_column,
                               uint8_t *verdicts) {
    struct padded m;
    pad_message(in, &m);
    for (uint64_t row = 0; row < in->items; row++) {
        struct compact_key key;
        compact_prepare(key_column + row * in->key_len, in->key_len, &key);
        verdicts[row] = block_verify_item(in, row, &key, &m);
    }
}

static void block_verify_prepared(const struct input *in, const struct compact_key *table,
                                  uint8_t *verdicts) {
    struct padded m;
    pad_message(in, &m);
    for (uint64_t row = 0; row < in->items; row++)
        verdicts[row] = block_verify_item(in, row, &table[in->key_index[row]], &m);
}

static double clock_seconds(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double now(void) { return clock_seconds(CLOCK_MONOTONIC); }

/* CPU time of this thread: on a shared machine, the time it was not running is left out. */
static double cpu_now(void) { return clock_seconds(CLOCK_THREAD_CPUTIME_ID); }

/* Each item's key in its own row, as a numpy keys column is. */
static uint8_t *gather_keys(const struct input *in) {
    uint8_t *column = malloc(in->items * in->key_len + 1);
    if (!column) die("out of memory");
    for (uint64_t i = 0; i < in->items; i++)
        memcpy(column + i * in->key_len, in->key_table + in->key_index[i] * in->key_len,
               in->key_len);
    return column;
}

static struct prepared_key *prepare_table(const struct input *in) {
    struct prepared_key *table = malloc(in->keys * sizeof *table + 1);
    if (!table) die("out of memory");
    for (uint64_t k = 0; k < in->keys; k++)
        prepare_key(in->key_table + k * in->key_len, in->key_len, &table[k]);
    return table;
}

static void count(const struct input *in, const uint8_t *verdicts, uint64_t counts[3]) {
    counts[0] = counts[1] = counts[2] = 0;
    for (uint64_t i = 0; i < in->items; i++) counts[verdicts[i] < 3 ? verdicts[i] : 2]++;
}

/* One pass per line read: see the header comment. */
static struct compact_key *compact_table(const struct input *in) {
    struct compact_key *table = malloc(in->keys * sizeof *table + 1);
    if (!table) die("out of memory");
    for (uint64_t k = 0; k < in->keys; k++)
        compact_prepare(in->key_table + k * in->key_len, in->key_len, &table[k]);
    return table;
}

/* One pass of `mode` over every item: its wall-clock seconds (and, in *cpu, the thread's CPU
 * seconds), or a negative number for a bad mode. */
static double timed_pass(const struct input *in, const char *mode, const uint8_t *key_column,
                         const struct prepared_key *table, const struct compact_key *compact,
                         uint8_t *verdicts, double *cpu) {
    double t = now(), c = cpu_now();
    if (!strcmp(mode, "fresh")) verify_fresh(in, key_column, verdicts);
    else if (!strcmp(mode, "prepared")) verify_prepared(in, table, verdicts);
    else if (!strcmp(mode, "fresh-block")) block_verify_fresh(in, key_column, verdicts);
    else if (!strcmp(mode, "prepared-block")) block_verify_prepared(in, compact, verdicts);
    else return -1;
    *cpu = cpu_now() - c;
    return now() - t;
}

static int serve(const struct input *in, uint8_t *verdicts) {
    uint8_t *key_column = gather_keys(in);
    struct prepared_key *table = prepare_table(in);
    struct compact_key *compact = compact_table(in);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!strcmp(line, "verdicts")) {
            uint64_t counts[3];
            count(in, verdicts, counts);
            printf("{\"ok\": %llu, \"wrong\": %llu, \"malformed\": %llu}\n",
                   (unsigned long long)counts[0], (unsigned long long)counts[1],
                   (unsigned long long)counts[2]);
        } else {
            double cpu = 0, t = timed_pass(in, line, key_column, table, compact, verdicts, &cpu);
            if (t < 0) printf("error: unknown command\n");
            else printf("%.9f %.9f\n", t, cpu);
        }
        fflush(stdout);
    }
    OPENSSL_cleanse(table, in->keys * sizeof *table);
    OPENSSL_cleanse(compact, in->keys * sizeof *compact);
    free(table);
    free(compact);
    free(key_column);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *mode = "both", *verdicts_path = NULL;
    int repeats = 3, serving = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mode") && i + 1 < argc) mode = argv[++i];
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--verdicts") && i + 1 < argc) verdicts_path = argv[++i];
        else if (!strcmp(argv[i], "--serve")) serving = 1;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else path = NULL, i = argc;
    }
    if (!path)
        die("usage: ocra_ref INPUT [--mode fresh|prepared|both] [--repeats K] [--verdicts OUT]"
            " | ocra_ref INPUT --serve");
    if (repeats < 1) die("--repeats must be at least 1");
    int fresh = !strcmp(mode, "fresh") || !strcmp(mode, "both");
    int prepared = !strcmp(mode, "prepared") || !strcmp(mode, "both");
    if (!fresh && !prepared) die("--mode must be fresh, prepared or both");

    struct input in;
    load(path, &in);
    uint8_t *verdicts = malloc(in.items ? in.items : 1);
    uint8_t *other = malloc(in.items ? in.items : 1);
    if (!verdicts || !other) die("out of memory");
    if (serving) return serve(&in, verdicts);

    const char *modes[4];
    int n_modes = 0;
    if (fresh) modes[n_modes++] = "fresh", modes[n_modes++] = "fresh-block";
    if (prepared) modes[n_modes++] = "prepared", modes[n_modes++] = "prepared-block";
    uint8_t *key_column = gather_keys(&in);
    struct prepared_key *table = prepare_table(&in);
    struct compact_key *compact = compact_table(&in);
    double best[4];
    for (int k = 0; k < n_modes; k++) {
        best[k] = 1e300;
        for (int r = 0; r < repeats; r++) {
            double cpu;
            double t =
                timed_pass(&in, modes[k], key_column, table, compact, k ? other : verdicts, &cpu);
            if (t < best[k]) best[k] = t;
        }
        if (k && memcmp(verdicts, other, in.items) != 0) die("the modes' verdicts differ");
    }
    OPENSSL_cleanse(table, in.keys * sizeof *table);
    OPENSSL_cleanse(compact, in.keys * sizeof *compact);
    free(table);
    free(compact);
    free(key_column);
    if (verdicts_path) {
        FILE *f = fopen(verdicts_path, "wb");
        if (!f || fwrite(verdicts, 1, in.items, f) != in.items || fclose(f) != 0)
            die("cannot write the verdicts");
    }
    uint64_t counts[3];
    count(&in, verdicts, counts);
    printf("{\"openssl\": \"%s\", \"items\": %llu, \"keys\": %llu, \"repeats\": %d, "
           "\"ok\": %llu, \"wrong\": %llu, \"malformed\": %llu",
           OpenSSL_version(OPENSSL_VERSION), (unsigned long long)in.items, (unsigned long long)in.keys, repeats,
           (unsigned long long)counts[0], (unsigned long long)counts[1],
           (unsigned long long)counts[2]);
    for (int k = 0; k < n_modes; k++)
        printf(", \"%s\": %.1f", modes[k], (double)in.items / best[k]);
    printf("}\n");
    return 0;
}
