/* hub_support: what the hub tests share: reading everything a session was
 * sent, as the shell's sends would, marking it sent.  Header-only (static) so
 * each test stays one executable; a test defines HUB_OUT_MAX first for a
 * larger buffer than the default. */
#ifndef CHATRELAY_HUB_SUPPORT_H
#define CHATRELAY_HUB_SUPPORT_H

#include <string.h>

#include "hub.h"

#ifndef HUB_OUT_MAX
#define HUB_OUT_MAX (1 << 16)
#endif

static char out_text[HUB_OUT_MAX];

/* Everything queued for slot, as one string (cut at HUB_OUT_MAX), marked sent. */
static const char *take_output(hub *h, uint32_t slot)
{
    sendq *q = hub_sendq(h, slot);
    sendq_span spans[64];
    size_t used = 0, n;
    while ((n = sendq_gather(q, spans, 64, 1 << 20)) > 0) {
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            if (used + spans[i].len < sizeof out_text - 1) {
                memcpy(out_text + used, spans[i].ptr, spans[i].len);
                used += spans[i].len;
            }
            total += spans[i].len;
        }
        hub_session_sent(h, slot, total);
    }
    out_text[used] = '\0';
    return out_text;
}

#endif
