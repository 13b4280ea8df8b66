/* install: the `install`, `uninstall` and `configure` verbs of chatrelay.exe.
 *
 * Owns: registering the service with the SCM (this exe, quoted, plus the
 * given relay options as its binPath; NT AUTHORITY\LocalService; automatic
 * delayed start; description; restart on failure), preparing the data folder
 * for that account, the event source, and the reverse (stop, wait for
 * STOPPED, delete).  Both need an elevated (administrator) prompt.
 * Never: runs the service.  Win32 only.
 */
#ifndef CHATRELAY_INSTALL_H
#define CHATRELAY_INSTALL_H

/* argv[first..argc): [--service-name NAME] [relay options...].
 * Return the process exit code: 0 done, 1 failed, 2 bad arguments. */
int install_main(int argc, char **argv, int first);
/* argv[first..argc): [--service-name NAME]. */
int uninstall_main(int argc, char **argv, int first);
/* The part of install after the service exists (failure actions, delayed
 * start, data folder, event source), for an existing service: the MSI
 * creates the service from its tables and then runs this.
 * argv[first..argc): [--service-name NAME]. */
int configure_main(int argc, char **argv, int first);

/* The verbs' part of --help. */
const char *install_help(void);

#endif
