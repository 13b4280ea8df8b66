/* relay: the I/O thread.  Win32 only.
 *
 * Owns: the listening sockets (WSAEventSelect FD_ACCEPT, waited on alertably),
 * the fixed Session array, overlapped WSARecv/WSASend with completion routines
 * (a session's send is tried without an OVERLAPPED first; only what the kernel
 * does not take at once goes overlapped),
 * the loop turn (wait -> APC drain -> hub work -> flush -> reap -> accept) and
 * the stop sequence.  Never: parses text (hub/chat do), blocks in a completion
 * routine, or touches SQLite inside one.
 */
#ifndef CHATRELAY_RELAY_H
#define CHATRELAY_RELAY_H

#include "options.h"

typedef struct relay relay;

/* Why relay_start failed, for the service's exit code (service-specific errors). */
enum {
    RELAY_OK = 0,
    RELAY_ERR_OPTIONS = 1,
    RELAY_ERR_WINSOCK = 2,
    RELAY_ERR_LISTEN = 3,       /* bind/listen failed (port in use, bad address) */
    RELAY_ERR_DATABASE = 4,     /* history could not be opened */
    RELAY_ERR_MEMORY = 5,
    RELAY_ERR_THREAD = 6
};

/* Progress callback while starting/stopping (service checkpoints). */
typedef void (*relay_progress_fn)(void *ctx);

/* Opens the database, binds and listens, then starts the I/O thread.
 * Returns RELAY_OK with *out set, or an error (already logged with the failing
 * call and its error code).  Does not return until the relay is listening. */
int relay_start(const relay_options *opt, relay **out, relay_progress_fn progress, void *ctx);
/* Asks the I/O thread to stop (safe from any thread, e.g. a control handler).
 * The I/O thread ends only after this call (or after giving up on a broken
 * wait), so a caller that still holds r may call it until relay_wait returns. */
void relay_request_stop(relay *r);
/* Waits until the I/O thread has finished its stop sequence (calling progress
 * every ~200 ms), then frees everything (except memory the kernel may still
 * own, if some I/O never completed).  Returns the thread's exit status: 0, or
 * 1 if the loop failed or I/O was left outstanding. */
int relay_wait(relay *r, relay_progress_fn progress, void *ctx);

#endif
