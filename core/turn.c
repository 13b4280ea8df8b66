/* turn: the order of one loop turn.  See turn.h. */
#include "turn.h"

static void begin_closes(hub *h, const turn_shell *shell)
{
    uint32_t slot;
    const char *reason;
    while (hub_next_close(h, &slot, &reason))
        shell->begin_close(shell->ctx, slot, reason);
}

int turn_run(hub *h, const turn_shell *shell, int64_t *now_out)
{
    uint32_t slot;
    shell->completions(shell->ctx);
    int64_t now = shell->now_ms(shell->ctx);
    begin_closes(h, shell);
    shell->reap(shell->ctx, now);
    int wait = hub_turn(h, now);
    begin_closes(h, shell);
    while (hub_next_flush(h, &slot))
        shell->flush(shell->ctx, slot);
    if (hub_turn_due(h))
        wait = 0;   /* a send done at once in the flush freed room for held output */
    if (now_out)
        *now_out = now;
    return wait;
}
