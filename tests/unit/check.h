/* check: the tiny assertion kit of the unit tests.  A failed CHECK prints
 * file:line, the expression and (for the typed forms) both sides, counts the
 * failure and carries on; check_done() prints "N passed, M failed" and returns
 * the exit code, so each test binary is one ctest case. */
#ifndef CHATRELAY_CHECK_H
#define CHATRELAY_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond) do { \
    if (cond) check_passed++; \
    else { check_failed++; fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_INT(a, b) do { \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b); \
    if (check_a_ == check_b_) check_passed++; \
    else { check_failed++; fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", \
                                   __FILE__, __LINE__, #a, #b, check_a_, check_b_); } \
} while (0)

#define CHECK_STR(a, b) do { \
    const char *check_a_ = (a), *check_b_ = (b); \
    if (check_a_ && check_b_ && strcmp(check_a_, check_b_) == 0) check_passed++; \
    else { check_failed++; fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", \
                                   __FILE__, __LINE__, #a, #b, check_a_ ? check_a_ : "(null)", \
                                   check_b_ ? check_b_ : "(null)"); } \
} while (0)

/* Compares a byte range with a C string (for lines that are not NUL-terminated). */
#define CHECK_MEM(p, n, s) do { \
    const char *check_s_ = (s); size_t check_n_ = (size_t)(n); \
    if (check_n_ == strlen(check_s_) && memcmp((p), check_s_, check_n_) == 0) check_passed++; \
    else { check_failed++; fprintf(stderr, "%s:%d: %s == \"%s\" failed: got \"%.*s\"\n", \
                                   __FILE__, __LINE__, #p, check_s_, (int)check_n_, (const char *)(p)); } \
} while (0)

static inline int check_done(void)
{
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed == 0 && check_passed > 0 ? 0 : 1;
}

#endif
