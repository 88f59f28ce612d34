/*
 * A slower disk for `python -m bench.run --fsync-delay-us N` (never loaded by the daemon in
 * service): preloaded into a daemon under test, every fsync() and fdatasync() does the real call
 * and then sleeps N microseconds (the environment's LNT_BENCH_FSYNC_DELAY_US), as if the disk
 * took that much longer to make the write durable. The data is still made durable by the real
 * call first; only the answer comes later.
 *
 * Why: a recharge is committed to disk at five points, and how fast this machine's virtual disk
 * syncs varies from day to day (about 2.7 ms when issue 11 was filed, 0.12 ms on 2026-11-26),
 * which changes the throughput at a given number of terminals more than any change of ours.
 * With the delay, runs on different days (and the release the issue measured) can be compared
 * on the same disk. SQLite's syncs go through these two functions; PostgreSQL's happen in its
 * server and are not slowed.
 *
 * Built by bench/run.py with the machine's C compiler: cc -O2 -shared -fPIC slowsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

static void slow(void)
{
    const char *text = getenv("LNT_BENCH_FSYNC_DELAY_US");
    long us = text ? atol(text) : 0;
    if (us <= 0)
        return;
    struct timespec left = { us / 1000000L, (us % 1000000L) * 1000L };
    int saved = errno; /* the caller sees the real call's errno, not the sleep's */
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
    errno = saved;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int result = real(fd);
    slow();
    return result;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int result = real(fd);
    slow();
    return result;
}
