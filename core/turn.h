/* turn: the order of one loop turn, written once.
 *
 * Owns: the sequence of steps a turn takes after the shell's wait returned
 * (and its completion routines ran), which the Win32 shell (relay.c) and the
 * fuzzer's shell both run, so that what the fuzzer proves holds for the order
 * the product runs:
 *   1. completions: the shell hands the hub what its routines recorded (sends
 *      accounted with hub_session_sent, bytes received with hub_session_input);
 *   2. close requests: sessions the hub asked to close start closing;
 *   3. reap: sessions whose I/O has all completed go back to the hub
 *      (hub_session_closed: their leave records enter the outbox) before the
 *      commit, so a leave is stored and announced in this turn;
 *   4. hub_turn: one transaction, delivery, the later lists, the timers;
 *   5. close requests again (the turn may have made more: slow consumers,
 *      idle timeouts), then flush: one gathered send for each session with
 *      unsent data and no send in flight.
 * Never: waits, accepts, or touches a socket: the shell's callbacks do.
 * Portable C11.
 */
#ifndef CHATRELAY_TURN_H
#define CHATRELAY_TURN_H

#include <stdint.h>

#include "hub.h"

typedef struct turn_shell {
    void *ctx;
    void (*completions)(void *ctx);
    int64_t (*now_ms)(void *ctx);     /* read after the completions: the turn's clock */
    void (*begin_close)(void *ctx, uint32_t slot, const char *reason);
    void (*reap)(void *ctx, int64_t now_ms);
    void (*flush)(void *ctx, uint32_t slot);
} turn_shell;

/* Runs one turn; returns the hub's wait (ms until it needs a turn without
 * input, -1 = none).  *now_out, when not NULL, gets the turn's clock. */
int turn_run(hub *h, const turn_shell *shell, int64_t *now_out);

#endif
