/* datadir: where chatrelay keeps its files, %ProgramData%\ChatRelay.
 *
 * Owns: finding that folder, creating it when missing (with the ACL the
 * service needs when `install` creates it), the default file names in it
 * (history.db, chatrelay.log), and checking that the folder of any database
 * path exists before the relay opens it.
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
 * An existing folder is left as it is; a file of that name is an error.
 * Returns 0 or -1. */
int datadir_ensure(const char *dir, int service_acl, char *err, size_t errlen);

/* 0 if dir exists and is a folder; otherwise -1 with err saying which
 * ("does not exist", "is a file", or the Win32 error). */
int datadir_check_folder(const char *dir, char *err, size_t errlen);

/* The folder of a history database must exist before SQLite is asked to
 * create the file in it (SQLite would only say "unable to open database
 * file").  The folder of an explicit --db is not created: a mistyped path
 * must not grow folders.  0, or -1 with err naming the file and the folder. */
int datadir_check_db_folder(const char *db_path, char *err, size_t errlen);

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
