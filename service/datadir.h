/* datadir: where chatrelay keeps its files, %ProgramData%\ChatRelay.
 *
 * Owns: finding that folder, creating it when missing (with the ACL the
 * service needs when `install` creates it), and the default file names in it
 * (history.db, chatrelay.log).
 * Never: opens the files.  Win32 only.
 */
#ifndef CHATRELAY_DATADIR_H
#define CHATRELAY_DATADIR_H

#include <stddef.h>

#include "options.h"

/* %ProgramData%\ChatRelay as UTF-8 into out.  Returns 0 or -1 (err says why). */
int datadir_path(char *out, size_t cap, char *err, size_t errlen);

/* Creates the folder if it does not exist (its parent must).  With
 * service_acl, a folder created here gets the service's ACL at once (see
 * datadir_grant_service_access), so no other user can read the history.
 * An existing folder is left as it is.  Returns 0 or -1. */
int datadir_ensure(const char *dir, int service_acl, char *err, size_t errlen);

/* Gives NT AUTHORITY\LocalService modify rights on dir (and what it will
 * contain), SYSTEM and Administrators full control: what `install` does so
 * the service account can write its database and log and administrators can
 * read them.  Returns 0 or -1. */
int datadir_grant_service_access(const char *dir, char *err, size_t errlen);

/* Fills o->db_path (unless --no-history or given) and, for the service,
 * o->log_path (unless given) with the defaults in the data folder, creating
 * the folder if a default is used (with the service ACL when service).
 * Returns 0 or -1. */
int datadir_fill_defaults(relay_options *o, int service, char *err, size_t errlen);

#endif
