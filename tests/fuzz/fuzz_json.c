/* fuzz_json: libFuzzer target for core/json.c, which reads JSON from the
 * network (nats-server's INFO, JetStream replies, other relays' records).
 *
 * The input is one document.  For any input: json_valid must return, and
 * json_get on a few fixed paths, the getters, array iteration and
 * json_unescape of what they find must stay inside the input (ASan: the
 * input buffer has exactly its size) and return spans inside it.  For a
 * valid input, the harness walks the whole value with its own shallow
 * splitter of objects (independent of json.c's scanner) and checks: every
 * span json.c returns is itself valid; every array element is found;
 * every key that a path can name is found by json_get, both in its object
 * and by its full path from the root, at the last member of that name (as
 * far as a budget of rescans allows: see lookup_budget);
 * every string (key or value) unescapes to what the harness's own decoder
 * makes of it (or is refused for \u0000), within the capacity it promises,
 * and writes back to the same text; the number
 * getters agree with the digits.  The input is also written as a string:
 * valid UTF-8 must be accepted, and what is written must read back.
 */
#include "json.h"
#include "../unit/utf8_check.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_ASSERT(cond) do { \
    if (!(cond)) { \
        fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
        abort(); \
    } \
} while (0)

#define MAX_INPUT 8192   /* buffers below hold any string of an input this long */
#define MAX_PATH 256

static const char *doc_start;   /* the input: every span must lie in it */
static size_t doc_len;
/* Bytes the harness may still have json.c rescan for its lookups by key and
 * by path (each a pass over an object and one from the root): a small
 * multiple of the input, so the harness stays linear and the fuzzer fast. */
static size_t lookup_budget;

static int spend(size_t n)
{
    if (lookup_budget < n)
        return 0;
    lookup_budget -= n;
    return 1;
}

static void assert_in_doc(const char *v, size_t n)
{
    FUZZ_ASSERT(v >= doc_start && n <= doc_len && (size_t)(v - doc_start) <= doc_len - n);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static unsigned long hex_value(const char *p)
{
    char t[5];
    memcpy(t, p, 4);
    t[4] = '\0';
    return strtoul(t, NULL, 16);
}

/* The harness's own unescaping of a checked string (raw, with quotes), by
 * code point arithmetic: its length in out, or -1 if it holds \u0000. */
static long reference_unescape(const char *raw, size_t n, char *out)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    size_t o = 0;
    for (size_t i = 1; i + 1 < n;) {
        unsigned long cp;
        if (raw[i] != '\\') {
            out[o++] = raw[i++];
            continue;
        }
        if (raw[i + 1] != 'u') {
            out[o++] = to[strchr(from, raw[i + 1]) - from];
            i += 2;
            continue;
        }
        cp = hex_value(raw + i + 2);
        i += 6;
        if (cp >= 0xD800 && cp < 0xDC00) {
            cp = 0x10000 + ((cp & 0x3FF) << 10 | (hex_value(raw + i + 2) & 0x3FF));
            i += 6;
        }
        if (cp == 0)
            return -1;
        if (cp < 0x80) {
            out[o++] = (char)cp;
            continue;
        }
        size_t bytes = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        for (size_t k = bytes - 1; k > 0; k--) {
            out[o + k] = (char)(0x80 | (cp & 0x3F));
            cp >>= 6;
        }
        out[o] = (char)((bytes == 2 ? 0xC0 : bytes == 3 ? 0xE0 : 0xF0) | cp);
        o += bytes;
    }
    return (long)o;
}

static char unescaped[MAX_INPUT + 1], again[MAX_INPUT + 1], reference[MAX_INPUT + 1],
            written[6 * MAX_INPUT + 2];

/* A string token of a valid document. */
static void check_string(const char *raw, size_t n)
{
    long ref = reference_unescape(raw, n, reference);
    int rc = json_unescape(raw, n, unescaped, sizeof unescaped);
    FUZZ_ASSERT(rc == (ref < 0 ? -1 : 0));
    if (rc != 0)
        return;
    size_t len = strlen(unescaped);
    FUZZ_ASSERT(len == (size_t)ref && memcmp(unescaped, reference, len) == 0);
    FUZZ_ASSERT(len + 2 <= n);   /* unescaping never lengthens: n - 2 bytes and the NUL are enough */
    FUZZ_ASSERT(json_unescape(raw, n, again, n - 1) == 0 && strcmp(again, unescaped) == 0);
    FUZZ_ASSERT(json_unescape(raw, n, again, len) == -1);   /* no room for the NUL */
    /* a smaller capacity: all or nothing */
    size_t cap = 1 + n % 9;
    rc = json_unescape(raw, n, again, cap);
    FUZZ_ASSERT(rc == (len < cap ? 0 : -1));
    FUZZ_ASSERT(rc != 0 || strcmp(again, unescaped) == 0);
    /* unescaped text is UTF-8 (the writer refuses anything else) and goes back */
    size_t w = json_write_string(written, sizeof written, unescaped);
    FUZZ_ASSERT(w > 0);
    FUZZ_ASSERT(json_valid(written, w) == 0);
    FUZZ_ASSERT(json_unescape(written, w, again, sizeof again) == 0 && strcmp(again, unescaped) == 0);
}

/* The number getters agree with the span's digits. */
static void check_number(const char *root, size_t root_n, const char *path, const char *v, size_t n)
{
    char text[32];
    uint64_t u;
    int64_t i;
    int digits_only = n > 0;
    for (size_t k = 0; k < n; k++)
        if (v[k] < '0' || v[k] > '9')
            digits_only = 0;
    if (json_get_u64(root, root_n, path, &u) == 0) {
        FUZZ_ASSERT(digits_only);
        snprintf(text, sizeof text, "%" PRIu64, u);
        FUZZ_ASSERT(strlen(text) == n && memcmp(text, v, n) == 0);
    } else {
        FUZZ_ASSERT(!digits_only || n > 20 || (n == 20 && memcmp(v, "18446744073709551615", 20) > 0));
    }
    if (json_get_i64(root, root_n, path, &i) == 0) {
        if (n == 2 && memcmp(v, "-0", 2) == 0) {
            FUZZ_ASSERT(i == 0);
        } else {
            snprintf(text, sizeof text, "%" PRId64, i);
            FUZZ_ASSERT(strlen(text) == n && memcmp(text, v, n) == 0);
        }
    }
}

static void walk(const char *root, size_t root_n, const char *path, const char *v, size_t n, int depth);

/* Elements of an array; the spans follow each other inside it. */
static void walk_array(const char *root, size_t root_n, const char *v, size_t n, int depth)
{
    size_t pos = 0, last = 0, count = 0;
    const char *e;
    size_t en;
    json_type t;
    while ((t = json_array_next(v, n, &pos, &e, &en)) != JSON_ABSENT) {
        FUZZ_ASSERT(e >= v + last && en > 0 && (size_t)(e - v) + en == pos && pos < n);
        last = pos;
        count++;
        FUZZ_ASSERT(count <= n / 2);
        walk(root, root_n, NULL, e, en, depth + 1);
    }
    FUZZ_ASSERT(json_array_next(v, n, &pos, &e, &en) == JSON_ABSENT);
    /* the harness's own count: elements are separated by commas at depth 1 */
    size_t commas = 0, inner = 0;
    int in_string = 0, any = 0;
    for (size_t i = 1; i + 1 < n; i++) {
        char c = v[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
            continue;
        }
        if (!is_ws(c))
            any = 1;
        if (c == '"')
            in_string = 1;
        else if (c == '[' || c == '{')
            inner++;
        else if (c == ']' || c == '}')
            inner--;
        else if (c == ',' && inner == 0)
            commas++;
    }
    FUZZ_ASSERT(count == (any ? commas + 1 : 0));
}

/* Members of an object, split by the harness itself: each key and value span. */
static void walk_object(const char *root, size_t root_n, const char *path, const char *v, size_t n, int depth)
{
    size_t i = 1;
    for (;;) {
        while (is_ws(v[i]))
            i++;
        if (v[i] == '}')
            return;
        size_t k = i++, kn, val, vend, end;
        while (v[i] != '"')
            i += v[i] == '\\' ? 2 : 1;
        kn = ++i - k;
        while (v[i] != ':')
            i++;
        i++;
        while (is_ws(v[i]))
            i++;
        val = i;
        /* to the ',' or '}' that ends this member */
        size_t inner = 0;
        int in_string = 0;
        for (;; i++) {
            char c = v[i];
            if (in_string) {
                if (c == '\\')
                    i++;
                else if (c == '"')
                    in_string = 0;
            } else if (c == '"') {
                in_string = 1;
            } else if (c == '[' || c == '{') {
                inner++;
            } else if ((c == ']' || c == '}') && inner > 0) {
                inner--;
            } else if ((c == ',' || c == '}') && inner == 0) {
                break;
            }
        }
        end = i;
        vend = end;
        while (is_ws(v[vend - 1]))
            vend--;

        check_string(v + k, kn);
        /* a key a path can name: the last member of its name answers, here and from the root */
        char key[MAX_PATH];   /* a longer key is not looked up */
        const char *found = NULL;
        size_t found_n = 0;
        char sub[MAX_PATH];
        const char *subpath = NULL;
        if (json_unescape(v + k, kn, key, sizeof key) == 0 && key[0] != '\0' && !strchr(key, '.')
            && spend(n + root_n)) {
            FUZZ_ASSERT(json_get(v, n, key, &found, &found_n) != JSON_ABSENT);
            assert_in_doc(found, found_n);
            FUZZ_ASSERT(found >= v + val);
            if (found == v + val) {
                FUZZ_ASSERT(found_n == vend - val);
                if (path) {
                    int sn = snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", key);
                    if (sn > 0 && (size_t)sn < sizeof sub) {
                        const char *r;
                        size_t rn;
                        FUZZ_ASSERT(json_get(root, root_n, sub, &r, &rn) != JSON_ABSENT);
                        FUZZ_ASSERT(r == found && rn == found_n);
                        subpath = sub;
                    }
                }
            }
        }
        walk(root, root_n, subpath, v + val, vend - val, depth + 1);
        if (v[end] == '}')
            return;
        i = end + 1;
    }
}

/* A value of a valid document, at path from the root if a path names it (else NULL). */
static void walk(const char *root, size_t root_n, const char *path, const char *v, size_t n, int depth)
{
    const char *s;
    size_t sn;
    json_type t;

    FUZZ_ASSERT(depth <= JSON_MAX_DEPTH);
    assert_in_doc(v, n);
    FUZZ_ASSERT(json_valid(v, n) == 0);
    t = json_get(v, n, "", &s, &sn);
    FUZZ_ASSERT(t != JSON_ABSENT && s == v && sn == n);
    switch (t) {
    case JSON_STRING:
        check_string(v, n);
        break;
    case JSON_NUMBER:
        check_number(v, n, "", v, n);
        if (path && spend(2 * root_n))
            check_number(root, root_n, path, v, n);
        break;
    case JSON_BOOL: {
        int b = -1;
        FUZZ_ASSERT(json_get_bool(v, n, "", &b) == 0 && b == (v[0] == 't'));
        break;
    }
    case JSON_ARRAY:
        walk_array(root, root_n, v, n, depth);
        break;
    case JSON_OBJECT:
        walk_object(root, root_n, path, v, n, depth);
        break;
    default:
        break;
    }
}

/* What a caller would read from any input, valid or not. */
static void probe(const char *d, size_t n, const char *path, int valid)
{
    const char *v = NULL;
    size_t vn = 0;
    uint64_t u;
    int64_t i;
    int b;
    json_type t = json_get(d, n, path, &v, &vn);
    if (t == JSON_ABSENT)
        return;   /* the getters would find nothing either (each starts with json_get) */
    /* the getter of its type (another type's answers -1 right after the same json_get) */
    if (t == JSON_NUMBER) {
        (void)json_get_u64(d, n, path, &u);
        (void)json_get_i64(d, n, path, &i);
    } else if (t == JSON_BOOL) {
        (void)json_get_bool(d, n, path, &b);
    } else if (t == JSON_STRING) {
        (void)json_get_string(d, n, path, unescaped, 1 + n % 64);
    }
    assert_in_doc(v, vn);
    FUZZ_ASSERT(vn > 0);
    if (valid)
        FUZZ_ASSERT(json_valid(v, vn) == 0);
    if (t == JSON_STRING)
        (void)json_unescape(v, vn, unescaped, sizeof unescaped);
    if (t == JSON_ARRAY) {
        size_t pos = 0, prev = 0;
        const char *e;
        size_t en;
        while (json_array_next(v, vn, &pos, &e, &en) != JSON_ABSENT) {
            assert_in_doc(e, en);
            FUZZ_ASSERT(pos > prev && pos <= vn);
            prev = pos;
            if (json_get(e, en, "", NULL, NULL) == JSON_STRING)
                (void)json_unescape(e, en, unescaped, sizeof unescaped);
        }
    }
}

/* The input as the text of a string: written, then read back. */
static void write_input(const char *d, size_t n)
{
    size_t w = json_write_string_n(written, sizeof written, d, n);
    if (is_clean_utf8((const unsigned char *)d, n))
        FUZZ_ASSERT(w > 0);   /* valid UTF-8 (even more than "clean") is always written */
    if (w == 0)
        return;
    FUZZ_ASSERT(w >= n + 2 && json_valid(written, w) == 0);
    if (memchr(d, '\0', n)) {
        FUZZ_ASSERT(json_unescape(written, w, again, sizeof again) == -1);
        return;
    }
    FUZZ_ASSERT(json_unescape(written, w, again, sizeof again) == 0);
    FUZZ_ASSERT(strlen(again) == n && memcmp(again, d, n) == 0);
    /* a capacity one short of it: nothing */
    FUZZ_ASSERT(json_write_string_n(written, w - 1, d, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const paths[] = { "", "a", "a.b", "error.code", "config.subjects", "config.name",
                                         "state.last_seq", "connect_urls", "k.k.k" };
    const char *d = (const char *)data;
    if (size > MAX_INPUT)
        return 0;
    doc_start = d;
    doc_len = size;
    lookup_budget = 8 * size;
    int valid = json_valid(d, size) == 0;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        probe(d, size, paths[i], valid);
    (void)json_unescape(d, size, unescaped, sizeof unescaped);
    if (valid) {
        const char *v;
        size_t vn;
        FUZZ_ASSERT(json_get(d, size, "", &v, &vn) != JSON_ABSENT);
        /* the value, without the whitespace around it */
        FUZZ_ASSERT(vn > 0 && !is_ws(v[0]) && !is_ws(v[vn - 1]));
        for (size_t k = 0; k < (size_t)(v - d); k++)
            FUZZ_ASSERT(is_ws(d[k]));
        for (size_t k = (size_t)(v - d) + vn; k < size; k++)
            FUZZ_ASSERT(is_ws(d[k]));
        walk(d, size, "", v, vn, 0);
    }
    write_input(d, size);
    return 0;
}
