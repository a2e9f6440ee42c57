/*
 * Faults on the slow tier seen through the C ABI (issue 13), with tests/c/fault_shim.c
 * interposing pread64: the tiny random model loads at its minimum budget (every layer
 * streamed from its model.safetensors on every target pass); a read that fails with EIO
 * or hits end of file mid-stream makes subspec_step return SUBSPEC_STATUS_IO with a
 * message naming the file, the sequence keeps exactly its tokens, and once the fault is
 * spent the sequence goes on to the tokens a fault-free run gives, plain and speculative.
 * A faulty read while loading resident weights fails subspec_load the same way.
 *
 *   test_faults FIXTURE_DIR      (FIXTURE_DIR/tiny from `cargo test --test ffi`)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_shim.h"
#include "check.h"
#include "subspec.h"


static const char *last_error(void) {
    static char buf[1024];
    buf[0] = 0;
    subspec_last_error(NULL, buf, sizeof buf, NULL);
    return buf;
}

enum { N_NEW = 16, N_PROMPT = 5, MAX = 64 };
static const int32_t PROMPT[N_PROMPT] = {3, 17, 42, 99, 7};

typedef struct {
    int32_t ids[MAX];
    size_t n;
} ids_t;

static ids_t tokens_of(const subspec_sequence *seq) {
    ids_t t = {{0}, 0};
    if (subspec_sequence_tokens(seq, t.ids, MAX, &t.n) != SUBSPEC_STATUS_OK) abort();
    return t;
}

/* Steps until the sequence holds the prompt and N_NEW tokens; OK or the failing status. */
static subspec_status run_to_end(subspec_sequence *seq, const subspec_step_params *sp) {
    for (;;) {
        ids_t t = tokens_of(seq);
        if (t.n >= N_PROMPT + N_NEW) return SUBSPEC_STATUS_OK;
        int32_t out[8];
        size_t n = 0;
        size_t want = N_PROMPT + N_NEW - t.n;
        subspec_status st = subspec_step(seq, sp, NULL, 0, out, want < 8 ? want : 8, &n);
        if (st != SUBSPEC_STATUS_OK) return st;
    }
}

static void test_step_faults(subspec_engine *e, int speculate) {
    subspec_step_params sp;
    if (subspec_engine_step_params_init(e, &sp, sizeof sp) != SUBSPEC_STATUS_OK) abort();
    sp.speculate = speculate;
    /* The fault-free output. */
    subspec_sequence *ref = NULL;
    if (subspec_sequence_create(e, &ref) != SUBSPEC_STATUS_OK) abort();
    int32_t first[1];
    size_t n = 0;
    if (subspec_step(ref, &sp, PROMPT, N_PROMPT, first, 1, &n) != SUBSPEC_STATUS_OK) abort();
    CHECK(run_to_end(ref, &sp) == SUBSPEC_STATUS_OK, "reference run: %s", last_error());
    ids_t want = tokens_of(ref);
    subspec_sequence_free(ref);
    for (int kind = FAULT_EIO; kind <= FAULT_EOF; kind++) {
        for (long skip = 0; skip <= 9; skip += 9) {
            subspec_sequence *seq = NULL;
            if (subspec_sequence_create(e, &seq) != SUBSPEC_STATUS_OK) abort();
            CHECK(subspec_step(seq, &sp, PROMPT, N_PROMPT, first, 1, &n) == SUBSPEC_STATUS_OK,
                  "first step: %s", last_error());
            fault_shim_arm(kind, skip, 1);
            /* Layers already in the staging ring may serve one more pass; a later step
             * reaches the faulty read. */
            subspec_status st = SUBSPEC_STATUS_OK;
            ids_t before = tokens_of(seq);
            for (int i = 0; i < 4 && st == SUBSPEC_STATUS_OK; i++) {
                before = tokens_of(seq);
                int32_t out[8];
                st = subspec_step(seq, &sp, NULL, 0, out, 4, &n);
            }
            const char *msg = last_error();
            CHECK(st == SUBSPEC_STATUS_IO, "kind %d skip %ld: status %s (%s)", kind, skip,
                  subspec_status_string(st), msg);
            CHECK(strstr(msg, "model.safetensors") != NULL, "message names the file: %s", msg);
            CHECK(fault_shim_pending() == 0, "the fault was used");
            ids_t after = tokens_of(seq);
            CHECK(after.n == before.n && memcmp(after.ids, before.ids, after.n * 4) == 0,
                  "kind %d: the failed step changed the sequence (%zu -> %zu tokens)", kind,
                  before.n, after.n);
            /* The fault is spent: streaming recovers and the output is the fault-free one. */
            CHECK(run_to_end(seq, &sp) == SUBSPEC_STATUS_OK, "after the fault: %s", last_error());
            ids_t got = tokens_of(seq);
            CHECK(got.n >= want.n && memcmp(got.ids, want.ids, want.n * 4) == 0,
                  "kind %d skip %ld speculate %d: output differs from the fault-free run",
                  kind, skip, speculate);
            subspec_sequence_free(seq);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR\n", argv[0]);
        return 2;
    }
    char tiny[1024];
    snprintf(tiny, sizeof tiny, "%s/tiny", argv[1]);
    subspec_load_params p;
    if (subspec_load_params_init(&p, sizeof p) != SUBSPEC_STATUS_OK) abort();
    p.model_path = tiny;
    p.context_length = 128;
    p.require_tokenizer = false;
    uint64_t min = 0;
    if (subspec_minimum_budget(&p, &min) != SUBSPEC_STATUS_OK) {
        fprintf(stderr, "minimum budget: %s\n", last_error());
        return 2;
    }
    p.memory_budget = min;
    /* A faulty read of resident weights (read once at load) fails the load. */
    for (int kind = FAULT_EIO; kind <= FAULT_EOF; kind++) {
        subspec_engine *bad = NULL;
        fault_shim_arm(kind, 0, 1);
        subspec_status st = subspec_load(&p, &bad);
        const char *msg = last_error();
        CHECK(st == SUBSPEC_STATUS_IO && bad == NULL, "load with kind %d: %s (%s)", kind,
              subspec_status_string(st), msg);
        CHECK(strstr(msg, "model.safetensors") != NULL, "message names the file: %s", msg);
        fault_shim_arm(0, 0, 0);
    }
    subspec_engine *e = NULL;
    if (subspec_load(&p, &e) != SUBSPEC_STATUS_OK) {
        fprintf(stderr, "load: %s\n", last_error());
        return 2;
    }
    test_step_faults(e, 0);
    test_step_faults(e, 1);
    subspec_free(e);
    printf("faults: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
