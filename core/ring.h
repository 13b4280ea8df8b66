/* ring: growing the power-of-two rings the send queues (outbuf.c) and the
 * outbox (hub.c) keep their entries in.
 * Owns: nothing (one inline function).  Never: frees what the entries hold.
 * Portable C11. */
#ifndef CHATRELAY_RING_H
#define CHATRELAY_RING_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Doubles *ring (capacity *cap, first_cap when empty; elements of elem
 * bytes; count of them from *head on, wrapping) into a new allocation with
 * the entries unwrapped from index 0, in order.  0, or -1 (nothing changed)
 * when out of memory. */
static inline int ring_grow(void **ring, uint32_t *cap, uint32_t *head, uint32_t count, size_t elem,
                            uint32_t first_cap)
{
    uint32_t ncap = *cap ? *cap * 2 : first_cap;
    if (ncap <= *cap)
        return -1;
    char *grown = malloc((size_t)ncap * elem);
    if (!grown)
        return -1;
    if (count > 0) {
        uint32_t first = *cap - *head < count ? *cap - *head : count;
        memcpy(grown, (char *)*ring + (size_t)*head * elem, (size_t)first * elem);
        memcpy(grown + (size_t)first * elem, *ring, (size_t)(count - first) * elem);
    }
    free(*ring);
    *ring = grown;
    *cap = ncap;
    *head = 0;
    return 0;
}

#endif
