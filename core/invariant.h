/* invariant: CR_ASSERT, the check of an invariant of the product code.
 *
 * On wherever the code is tested (debug builds, the native sanitized unit
 * tests, the fuzzer: NDEBUG not defined, or CHATRELAY_ASSERTS defined), off
 * in release builds.  A failed check names the condition and its place on
 * stderr and aborts: an invariant that does not hold means the state can no
 * longer be trusted, and the tests must see it at once.  Never for input
 * from the network, the command line or the database: those get errors.
 */
#ifndef CHATRELAY_INVARIANT_H
#define CHATRELAY_INVARIANT_H

#if !defined(NDEBUG) || defined(CHATRELAY_ASSERTS)
#include <stdio.h>
#include <stdlib.h>

static inline void cr_assert_failed(const char *cond, const char *file, int line)
{
    fprintf(stderr, "%s:%d: invariant failed: %s\n", file, line, cond);
    fflush(stderr);
    abort();
}

#define CR_ASSERT(cond) ((cond) ? (void)0 : cr_assert_failed(#cond, __FILE__, __LINE__))
#else
#define CR_ASSERT(cond) ((void)0)
#endif

#endif
