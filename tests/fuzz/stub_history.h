/* stub_history: storage/history.h for the fuzzer, without SQLite.
 *
 * A link-time stand-in for chatrelay_storage in fuzz_input: the hub calls
 * history_begin/append/commit/rollback, the queries and the upkeep as it
 * would on the real database, and the answers come from a script the fuzz
 * input supplies, so libFuzzer steers outages (busy, I/O errors at begin,
 * append or commit), refused records and unreadable queries.  The stub keeps
 * what each successful commit wrote, in order, for the harness to check
 * deliveries against (store-then-forward), and answers replays and searches
 * from it.  It aborts when the hub breaks the API's call order (an append
 * outside a transaction, a commit after a rollback, ...).
 * Never: sleeps, touches a file, or decides anything the fuzz input did not.
 * One instance (the fuzzer is single-threaded), reset for every input.
 */
#ifndef CHATRELAY_STUB_HISTORY_H
#define CHATRELAY_STUB_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "../../storage/history.h"

/* Starts a new database with no rows.  script[0] is the poison byte: a
 * record whose body contains it is refused (HISTORY_REJECTED, like a CHECK
 * constraint someone added; 0: none).  Each later byte decides one call, in
 * turn and cycling (empty: everything succeeds):
 *   history_begin:  bits 0-1: 2 busy, 3 I/O error (else begins);
 *                   bits 2-3: 2 the commit is busy, 3 it fails (else commits);
 *                   bits 4-5: 3 the first append fails with an I/O error;
 *   queries:        bits 0-1: 3 unavailable (busy); bits 2-3: 3 a search
 *                   stops at its budget after (bits 4-6) rows;
 *   upkeep:         bits 0-1: 3 fails; 2 does work (idle step) or removes
 *                   the oldest row (retention), else nothing is due.
 * Queries and upkeep read the script with a cursor of their own. */
void stub_history_reset(const unsigned char *script, size_t len);
/* The handle for hub_config.history. */
history *stub_history_handle(void);
/* Frees every row (at the end of an input). */
void stub_history_free(void);

/* Everything successful commits wrote, in commit order (pruning does not
 * remove rows from this log, only from what queries see). */
size_t stub_history_committed(void);
const history_record *stub_history_record(size_t i);

typedef struct stub_history_stats {
    uint64_t begins, commits_ok;
    uint64_t failures;          /* begins, appends and commits that failed (not refusals) */
    uint64_t rejected, queries, queries_failed;
} stub_history_stats;
void stub_history_get_stats(stub_history_stats *out);

#endif
