/* Steps a process's wall clock (CLOCK_REALTIME only) by the number of seconds written in
 * the file named by $CLOCKSHIFT_FILE, re-read at most every 100 ms. CLOCK_MONOTONIC is left
 * alone, as a real step of the system clock leaves it. Loaded with LD_PRELOAD by the
 * end-to-end tests to step a gateway's clock mid-stream without touching the machine's. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static double offset;
static struct timespec checked;

static void refresh(void) {
    struct timespec now;
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    double since = (now.tv_sec - checked.tv_sec) + (now.tv_nsec - checked.tv_nsec) / 1e9;
    if (checked.tv_sec != 0 && since < 0.1) return;
    checked = now;
    const char *path = getenv("CLOCKSHIFT_FILE");
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    double value;
    if (fscanf(f, "%lf", &value) == 1) offset = value;
    fclose(f);
}

int clock_gettime(clockid_t clk, struct timespec *tp) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(clk, tp);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        long long ns = (long long)tp->tv_sec * 1000000000LL + tp->tv_nsec + (long long)(offset * 1e9);
        tp->tv_sec = ns / 1000000000LL;
        tp->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
