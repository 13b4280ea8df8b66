/* json: the little JSON the cluster mode (issue 14, docs/CLUSTER.md) needs:
 * nats-server's INFO, the JetStream API's replies and the records other
 * relays publish, all of them untrusted bytes from the network.
 *
 * Owns: reading fields of untrusted JSON (a document is checked whole by
 * json_valid, then fields are found by a path of keys and returned as spans
 * of the document's own bytes, with typed getters for the few kinds the
 * relay reads); writing JSON strings (the rest of a small document is the
 * caller's snprintf).
 * Never: allocates (everything works on the caller's spans); builds a tree;
 * accepts an invalid document (json_valid is strict RFC 8259, and the
 * readers do not repair what it refused).  Linear time in the document:
 * one pass per path step.  Portable C11.
 */
#ifndef CHATRELAY_JSON_H
#define CHATRELAY_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32   /* arrays and objects nested deeper are refused */

typedef enum json_type { JSON_ABSENT = 0, JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

/* 0 if doc[0..len) is one well-formed JSON value (RFC 8259; whitespace
 * around it allowed; nesting at most JSON_MAX_DEPTH; strings valid UTF-8,
 * escapes valid, no unpaired surrogates), else -1. */
int json_valid(const char *doc, size_t len);

/* The value at a path of object keys separated by '.' ("error.code",
 * "config.num_replicas"; "" = the document itself) in a VALID document
 * (callers validate first; on an invalid one these never read out of
 * bounds, and may return JSON_ABSENT).  Keys are compared after unescaping
 * (a key holding '.' cannot be named).  If a key occurs twice, the last one
 * wins.  Returns its type and sets *val and *val_len to the value's raw text
 * span (a string's span includes its quotes); JSON_ABSENT if a key is
 * missing or a step is not an object. */
json_type json_get(const char *doc, size_t len, const char *path, const char **val, size_t *val_len);

/* Convenience: 0 on success, -1 if absent or of another type.  u64: a
 * non-negative integer without fraction or exponent that fits in uint64_t;
 * i64 likewise signed.  bool: true/false.  string: unescaped into out
 * (capacity cap, NUL-terminated), -1 if it does not fit or holds \u0000. */
int json_get_u64(const char *doc, size_t len, const char *path, uint64_t *out);
int json_get_i64(const char *doc, size_t len, const char *path, int64_t *out);
int json_get_bool(const char *doc, size_t len, const char *path, int *out);
int json_get_string(const char *doc, size_t len, const char *path, char *out, size_t cap);

/* Iterates the elements of an array value's raw span (from json_get):
 * *pos starts at 0; returns the type of the next element and sets
 * *val and *val_len, or JSON_ABSENT at the end (and on every later call). */
json_type json_array_next(const char *arr, size_t arr_len, size_t *pos, const char **val, size_t *val_len);

/* Unescapes a string value's raw span (with its quotes) into out; 0 or -1
 * as json_get_string (and -1 if raw is not exactly one valid string). */
int json_unescape(const char *raw, size_t raw_len, char *out, size_t cap);

/* Writes s (UTF-8, NUL-terminated; or n bytes for json_write_string_n, NUL
 * allowed) as a JSON string with its quotes, escaping " \ and every control
 * below 0x20 (\n \r \t as short escapes, the others \u00XX).  Returns the
 * bytes written (no NUL is added), or 0 if they do not fit or s is not valid
 * UTF-8 (so what it writes is always a string json_valid accepts); on 0, out
 * may hold anything. */
size_t json_write_string(char *out, size_t cap, const char *s);
size_t json_write_string_n(char *out, size_t cap, const char *s, size_t n);

#endif
