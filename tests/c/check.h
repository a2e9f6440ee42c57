/* The C test programs' check macro and counters (tests/c/test_ffi.c, test_faults.c):
 * CHECK(cond, fmt, ...) counts a pass, or counts a failure and prints where and why. */
#ifndef SUBSPEC_TEST_CHECK_H
#define SUBSPEC_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

#endif
