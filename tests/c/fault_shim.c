/*
 * A fault shim for the slow tier, seen from C: interposes pread64 (what the library's
 * O_DIRECT reads of the model file call) and makes chosen reads of a *.safetensors or
 * *.gguf file fail with EIO or hit end of file at once (a tensor's first, block-aligned
 * read: the library reads with O_DIRECT). Linked into the test program, its
 * pread64 takes precedence over libc's for libsubspec.so too (the same interposition
 * LD_PRELOAD does); reads of any other file, and all reads while nothing is armed, go to
 * libc. The counters are atomic: the library reads from its reader thread.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "fault_shim.h"

static atomic_int kind;
static atomic_long skip_left;
static atomic_long times_left;

void fault_shim_arm(int k, long skip, long times) {
    atomic_store(&kind, k);
    atomic_store(&skip_left, skip);
    atomic_store(&times_left, times);
}

long fault_shim_pending(void) { return atomic_load(&times_left); }

static int is_model_file(int fd) {
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, ".safetensors") != NULL || strstr(path, ".gguf") != NULL;
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    /* Only a tensor's first read counts (aligned: the library reads with O_DIRECT); a
     * continuation at the end of the file would return 0 anyway. */
    if (atomic_load(&times_left) > 0 && offset % 4096 == 0 && is_model_file(fd)) {
        if (atomic_fetch_sub(&skip_left, 1) <= 0 && atomic_fetch_sub(&times_left, 1) > 0) {
            if (atomic_load(&kind) == FAULT_EIO) {
                errno = EIO;
                return -1;
            }
            return 0; /* FAULT_EOF: end of file where data should be */
        }
    }
    return real(fd, buf, count, offset);
}
