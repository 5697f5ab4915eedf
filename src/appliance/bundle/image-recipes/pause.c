/*
 * pause: the first process of every pod sandbox. It holds the pod's namespaces open and does nothing.
 *
 * SIGINT and SIGTERM end it with status 0, so that stopping a sandbox is a clean exit. As PID 1 of a pod
 * that shares one PID namespace it is the parent of orphaned processes, so it reaps them on SIGCHLD.
 * Written for the appliance toolkit after the behaviour of Kubernetes' build/pause/linux/pause.c.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "unknown"
#endif

static void stop(int signal_number) {
    (void)signal_number;
    _exit(0);
}

static void reap(int signal_number) {
    (void)signal_number;
    int saved_errno = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved_errno;
}

static int handle(int signal_number, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signal_number, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("pause %s (appliance toolkit)\n", VERSION);
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: warning: not running as PID 1, so other processes' zombies are not reaped\n");
    }
    if (handle(SIGINT, stop, 0) < 0 || handle(SIGTERM, stop, 0) < 0 ||
        handle(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
