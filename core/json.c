/* json: reading fields of untrusted JSON, writing JSON strings.  See json.h;
 * the grammar is RFC 8259's, UTF-8 is RFC 3629's (no overlong forms, no
 * encoded surrogates, nothing above U+10FFFF).
 *
 * Everything rests on scan_value, which checks one value and returns where
 * it ends.  It is iterative, with a stack of the open containers bounded by
 * JSON_MAX_DEPTH, so no input can exhaust the C stack.  json_get scans the
 * members of one object per path step with it, so a lookup costs one pass
 * over the value per step; every read is bounds-checked against the span it
 * was given, which is why an invalid document is harmless (only absent).
 */
#include "json.h"

#include <string.h>

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The length of the well-formed UTF-8 sequence at s[i..len), or 0 if there
 * is none (Unicode's table 3-7: the second byte's range depends on the first). */
static size_t utf8_seq(const char *s, size_t len, size_t i)
{
    const unsigned char *p = (const unsigned char *)s + i;
    size_t left = len - i, n;
    unsigned char lo = 0x80, hi = 0xBF;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        n = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
        n = 3;
        if (p[0] == 0xE0)
            lo = 0xA0;          /* below is overlong */
        else if (p[0] == 0xED)
            hi = 0x9F;          /* above is a surrogate */
    } else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
        n = 4;
        if (p[0] == 0xF0)
            lo = 0x90;          /* below is overlong */
        else if (p[0] == 0xF4)
            hi = 0x8F;          /* above is past U+10FFFF */
    } else
        return 0;               /* a continuation byte, C0/C1 (overlong), F5-FF */
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if (p[k] < 0x80 || p[k] > 0xBF)
            return 0;
    return n;
}

/* The value of 4 hex digits at s[i..i+4), or -1. */
static long hex4(const char *s, size_t len, size_t i)
{
    long v = 0;
    if (i > len || len - i < 4)
        return -1;
    for (size_t k = 0; k < 4; k++) {
        char c = s[i + k];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Checks the string that starts at s[*pos] (its opening quote) and moves
 * *pos past its closing quote. */
static int scan_string(const char *s, size_t len, size_t *pos)
{
    size_t i = *pos;
    if (i >= len || s[i] != '"')
        return -1;
    i++;
    for (;;) {
        if (i >= len)
            return -1;
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            *pos = i + 1;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (i + 1 >= len)
                return -1;
            switch (s[i + 1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                i += 2;
                break;
            case 'u': {
                long cp = hex4(s, len, i + 2);
                if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                    return -1;   /* a low surrogate with no high one before it */
                i += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    long low;
                    if (len - i < 6 || s[i] != '\\' || s[i + 1] != 'u')
                        return -1;
                    low = hex4(s, len, i + 2);
                    if (low < 0xDC00 || low > 0xDFFF)
                        return -1;
                    i += 6;
                }
                break;
            }
            default:
                return -1;
            }
            continue;
        }
        size_t n = utf8_seq(s, len, i);
        if (n == 0)
            return -1;
        i += n;
    }
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?  What may follow is the
 * caller's business (so "01" fails there, at the '1'). */
static int scan_number(const char *s, size_t len, size_t *pos)
{
    size_t i = *pos;
    if (i < len && s[i] == '-')
        i++;
    if (i >= len || !is_digit(s[i]))
        return -1;
    if (s[i] == '0')
        i++;
    else
        while (i < len && is_digit(s[i]))
            i++;
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len || !is_digit(s[i]))
            return -1;
        while (i < len && is_digit(s[i]))
            i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= len || !is_digit(s[i]))
            return -1;
        while (i < len && is_digit(s[i]))
            i++;
    }
    *pos = i;
    return 0;
}

static int scan_literal(const char *s, size_t len, size_t *pos, const char *word)
{
    size_t n = strlen(word);
    if (len - *pos < n || memcmp(s + *pos, word, n) != 0)
        return -1;
    *pos += n;
    return 0;
}

/* A string, number or literal at s[*pos]. */
static int scan_scalar(const char *s, size_t len, size_t *pos)
{
    switch (s[*pos]) {
    case '"': return scan_string(s, len, pos);
    case 't': return scan_literal(s, len, pos, "true");
    case 'f': return scan_literal(s, len, pos, "false");
    case 'n': return scan_literal(s, len, pos, "null");
    default:  return scan_number(s, len, pos);
    }
}

/* A member's key and its colon, from *pos (whitespace allowed before each). */
static int scan_key(const char *s, size_t len, size_t *pos)
{
    size_t i = skip_ws(s, len, *pos);
    if (scan_string(s, len, &i) != 0)
        return -1;
    i = skip_ws(s, len, i);
    if (i >= len || s[i] != ':')
        return -1;
    *pos = i + 1;
    return 0;
}

/* Checks the one value that starts at s[*pos] (after whitespace) and moves
 * *pos just past it. */
static int scan_value(const char *s, size_t len, size_t *pos)
{
    char stack[JSON_MAX_DEPTH];   /* '{' or '[' of each container we are inside */
    size_t depth = 0, i = *pos;

    for (;;) {
        /* a value starts here */
        i = skip_ws(s, len, i);
        if (i >= len)
            return -1;
        if (s[i] == '{' || s[i] == '[') {
            char c = s[i];
            if (depth == JSON_MAX_DEPTH)
                return -1;
            stack[depth++] = c;
            i = skip_ws(s, len, i + 1);
            if (i < len && s[i] == (c == '{' ? '}' : ']')) {
                depth--;
                i++;
            } else {
                if (c == '{' && scan_key(s, len, &i) != 0)
                    return -1;
                continue;   /* to the first element's value */
            }
        } else if (scan_scalar(s, len, &i) != 0) {
            return -1;
        }
        /* a value ended at i: close the containers it completes, up to the next value */
        for (;;) {
            if (depth == 0) {
                *pos = i;
                return 0;
            }
            i = skip_ws(s, len, i);
            if (i >= len)
                return -1;
            if (s[i] == ',') {
                i++;
                if (stack[depth - 1] == '{' && scan_key(s, len, &i) != 0)
                    return -1;
                break;
            }
            if (s[i] != (stack[depth - 1] == '{' ? '}' : ']'))
                return -1;
            depth--;
            i++;
        }
    }
}

int json_valid(const char *doc, size_t len)
{
    size_t i;
    if (!doc)
        return -1;
    i = skip_ws(doc, len, 0);
    if (scan_value(doc, len, &i) != 0)
        return -1;
    return skip_ws(doc, len, i) == len ? 0 : -1;
}

static json_type type_of(char c)
{
    switch (c) {
    case '{': return JSON_OBJECT;
    case '[': return JSON_ARRAY;
    case '"': return JSON_STRING;
    case 't': case 'f': return JSON_BOOL;
    case 'n': return JSON_NULL;
    default:  return JSON_NUMBER;
    }
}

static size_t put_utf8(unsigned long cp, unsigned char *u)
{
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (unsigned char)(0xF0 | (cp >> 18));
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The bytes of the one character (or raw byte) at raw[*i] inside a string
 * that scan_string accepted, and *i moved past it.  Only for checked
 * strings: it trusts that an escape is complete. */
static size_t decode_unit(const char *raw, size_t len, size_t *i, unsigned char u[4])
{
    char c = raw[*i];
    if (c != '\\') {
        u[0] = (unsigned char)c;
        *i += 1;
        return 1;
    }
    c = raw[*i + 1];
    *i += 2;
    switch (c) {
    case 'b': u[0] = '\b'; return 1;
    case 'f': u[0] = '\f'; return 1;
    case 'n': u[0] = '\n'; return 1;
    case 'r': u[0] = '\r'; return 1;
    case 't': u[0] = '\t'; return 1;
    case 'u': {
        unsigned long cp = (unsigned long)hex4(raw, len, *i);
        *i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned long low = (unsigned long)hex4(raw, len, *i + 2);
            *i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        return put_utf8(cp, u);
    }
    default: u[0] = (unsigned char)c; return 1;   /* " \ / */
    }
}

/* The checked string raw[0..raw_len) (with quotes), unescaped, equals key[0..key_len). */
static int key_equals(const char *raw, size_t raw_len, const char *key, size_t key_len)
{
    size_t i = 1, k = 0;
    unsigned char u[4];
    while (i < raw_len - 1) {
        size_t n = decode_unit(raw, raw_len, &i, u);
        if (n > key_len - k || memcmp(u, key + k, n) != 0)
            return 0;
        k += n;
    }
    return k == key_len;
}

/* In the object at s[i] (s ends at len), the value of the last member named
 * key: 0 and its span [*vlo, *vhi), or -1 if it has none or is no object. */
static int find_member(const char *s, size_t len, size_t i, const char *key, size_t key_len,
                       size_t *vlo, size_t *vhi)
{
    int found = 0;
    if (i >= len || s[i] != '{')
        return -1;
    i = skip_ws(s, len, i + 1);
    if (i < len && s[i] == '}')
        return -1;
    for (;;) {
        size_t k = i, v;
        int match;
        if (scan_string(s, len, &i) != 0)
            return -1;
        match = key_equals(s + k, i - k, key, key_len);
        i = skip_ws(s, len, i);
        if (i >= len || s[i] != ':')
            return -1;
        v = i = skip_ws(s, len, i + 1);
        if (scan_value(s, len, &i) != 0)
            return -1;
        if (match) {   /* and go on: a later duplicate wins */
            *vlo = v;
            *vhi = i;
            found = 1;
        }
        i = skip_ws(s, len, i);
        if (i < len && s[i] == '}')
            return found ? 0 : -1;
        if (i >= len || s[i] != ',')
            return -1;
        i = skip_ws(s, len, i + 1);
    }
}

json_type json_get(const char *doc, size_t len, const char *path, const char **val, size_t *val_len)
{
    size_t lo, hi;
    if (!doc || !path)
        return JSON_ABSENT;
    lo = skip_ws(doc, len, 0);
    if (*path == '\0') {
        hi = lo;
        if (scan_value(doc, len, &hi) != 0)
            return JSON_ABSENT;
    } else {
        hi = len;   /* each step's object scan finds where the value ends */
        for (;;) {
            const char *dot = strchr(path, '.');
            size_t n = dot ? (size_t)(dot - path) : strlen(path);
            if (find_member(doc, hi, lo, path, n, &lo, &hi) != 0)
                return JSON_ABSENT;
            if (!dot)
                break;
            path = dot + 1;
        }
    }
    if (val)
        *val = doc + lo;
    if (val_len)
        *val_len = hi - lo;
    return type_of(doc[lo]);
}

/* Digits only, into *out, or -1 if there are none, another byte, or more than max. */
static int digits(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d;
        if (!is_digit(s[i]))
            return -1;
        d = (unsigned)(s[i] - '0');
        if (v > (max - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int json_get_u64(const char *doc, size_t len, const char *path, uint64_t *out)
{
    const char *v;
    size_t n;
    if (json_get(doc, len, path, &v, &n) != JSON_NUMBER)
        return -1;
    return digits(v, n, UINT64_MAX, out);
}

int json_get_i64(const char *doc, size_t len, const char *path, int64_t *out)
{
    const char *v;
    size_t n;
    uint64_t mag;
    if (json_get(doc, len, path, &v, &n) != JSON_NUMBER)
        return -1;
    if (n > 0 && v[0] == '-') {
        /* INT64_MIN's magnitude is one past INT64_MAX */
        if (digits(v + 1, n - 1, (uint64_t)INT64_MAX + 1, &mag) != 0)
            return -1;
        *out = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
        return 0;
    }
    if (digits(v, n, INT64_MAX, &mag) != 0)
        return -1;
    *out = (int64_t)mag;
    return 0;
}

int json_get_bool(const char *doc, size_t len, const char *path, int *out)
{
    const char *v;
    size_t n;
    if (json_get(doc, len, path, &v, &n) != JSON_BOOL)
        return -1;
    *out = v[0] == 't';
    return 0;
}

int json_get_string(const char *doc, size_t len, const char *path, char *out, size_t cap)
{
    const char *v;
    size_t n;
    if (json_get(doc, len, path, &v, &n) != JSON_STRING) {
        if (out && cap > 0)
            out[0] = '\0';
        return -1;
    }
    return json_unescape(v, n, out, cap);
}

json_type json_array_next(const char *arr, size_t arr_len, size_t *pos, const char **val, size_t *val_len)
{
    size_t i, v;
    if (!arr || !pos || *pos >= arr_len)
        return JSON_ABSENT;
    if (*pos == 0) {
        /* no element can end at 0: it is the start */
        i = skip_ws(arr, arr_len, 0);
        if (i >= arr_len || arr[i] != '[')
            goto end;
        i = skip_ws(arr, arr_len, i + 1);
        if (i < arr_len && arr[i] == ']')
            goto end;
    } else {
        i = skip_ws(arr, arr_len, *pos);
        if (i >= arr_len || arr[i] != ',')
            goto end;   /* the ']' (or, in an invalid span, anything else) */
        i = skip_ws(arr, arr_len, i + 1);
    }
    v = i;
    if (i >= arr_len || scan_value(arr, arr_len, &i) != 0)
        goto end;
    *pos = i;
    if (val)
        *val = arr + v;
    if (val_len)
        *val_len = i - v;
    return type_of(arr[v]);
end:
    *pos = arr_len;
    return JSON_ABSENT;
}

int json_unescape(const char *raw, size_t raw_len, char *out, size_t cap)
{
    size_t i = 0, o = 0;
    unsigned char u[4];
    if (!out || cap == 0)
        return -1;
    out[0] = '\0';
    if (!raw || scan_string(raw, raw_len, &i) != 0 || i != raw_len)
        return -1;
    i = 1;
    while (i < raw_len - 1) {
        size_t n = decode_unit(raw, raw_len, &i, u);
        if ((n == 1 && u[0] == 0) || n >= cap - o) {
            out[0] = '\0';   /* \u0000 (a C string would end there), or no room for it and the NUL */
            return -1;
        }
        memcpy(out + o, u, n);
        o += n;
    }
    out[o] = '\0';
    return 0;
}

size_t json_write_string_n(char *out, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!out || (!s && n > 0))
        return 0;
    if (cap < 2)
        return 0;
    out[o++] = '"';
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        char e[6];
        size_t k = 0, take = 1;
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            k = 2;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            e[0] = '\\';
            e[1] = (char)(c == '\n' ? 'n' : c == '\r' ? 'r' : 't');
            k = 2;
        } else if (c < 0x20) {
            memcpy(e, "\\u00", 4);
            e[4] = hex[c >> 4];
            e[5] = hex[c & 15];
            k = 6;
        } else if (c >= 0x80) {
            take = utf8_seq(s, n, i);
            if (take == 0)
                return 0;   /* not UTF-8: the output would not be JSON */
        }
        if (k == 0) {
            if (take > cap - o)
                return 0;
            memcpy(out + o, s + i, take);
            o += take;
        } else {
            if (k > cap - o)
                return 0;
            memcpy(out + o, e, k);
            o += k;
        }
        i += take;
    }
    if (cap - o < 1)
        return 0;
    out[o++] = '"';
    return o;
}

size_t json_write_string(char *out, size_t cap, const char *s)
{
    if (!s)
        return 0;
    return json_write_string_n(out, cap, s, strlen(s));
}
