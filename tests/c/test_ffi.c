/*
 * The C ABI proven from C: compiled with the system compiler against include/subspec.h
 * and libsubspec.so. Every bad input returns its documented status and message and leaves
 * the state as documented; generation equals the Rust engine's output token for token
 * (fixtures written by `cargo test --test ffi binding_fixtures`).
 *
 *   test_ffi FIXTURE_DIR [--tiny-only]
 *
 * --tiny-only runs only the tiny random model (fast enough for valgrind). The generated
 * SmolLM2 ids are written to FIXTURE_DIR/c-smollm2.out for the Go and Node tests.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "subspec.h"


/* The last error of this thread (or of `e`). */
static const char *last_error(const subspec_engine *e) {
    static char buf[1024];
    buf[0] = 0;
    subspec_last_error(e, buf, sizeof buf, NULL);
    return buf;
}

/* Checks that `st` is `want` and the thread's last error contains `part`. */
#define CHECK_STATUS(st, want, part)                                               \
    do {                                                                           \
        subspec_status got_ = (st);                                                \
        const char *msg_ = last_error(NULL);                                       \
        CHECK(got_ == (want) && strstr(msg_, (part)) != NULL,                      \
              "status %u (%s), want %u; message \"%s\", want it to contain \"%s\"", \
              (unsigned)got_, subspec_status_string(got_), (unsigned)(want), msg_, (part)); \
    } while (0)

/* ---- fixtures: lines "key: id id id" ---- */

typedef struct {
    int32_t ids[256];
    size_t n;
} ids_t;

static char fixture_dir[1024];

static int read_fixture(const char *model, const char *key, ids_t *out, char *line_out, size_t line_cap) {
    char path[1200], line[8192];
    snprintf(path, sizeof path, "%s/%s.expected", fixture_dir, model);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s: run `cargo test --release --test ffi` first\n", path);
        exit(2);
    }
    size_t klen = strlen(key);
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            char *p = line + klen + 1;
            line[strcspn(line, "\n")] = 0;
            if (line_out) snprintf(line_out, line_cap, "%s", p + 1);
            out->n = 0;
            char *tok;
            while ((tok = strtok(p, " ")) != NULL && out->n < 256) {
                out->ids[out->n++] = (int32_t)atol(tok);
                p = NULL;
            }
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

/* The library's defaults (the init functions write them; this test's own by-value copies
 * are fine: they are compiled against the same header). */
static subspec_load_params load_defaults(void) {
    subspec_load_params p;
    if (SUBSPEC_LOAD_PARAMS_INIT(&p) != SUBSPEC_STATUS_OK) abort();
    return p;
}

static subspec_step_params step_defaults(void) {
    subspec_step_params sp;
    if (SUBSPEC_STEP_PARAMS_INIT(&sp) != SUBSPEC_STATUS_OK) abort();
    return sp;
}

static subspec_engine *load(const char *path, unsigned context, unsigned threads) {
    subspec_load_params p = load_defaults();
    p.model_path = path;
    p.context_length = context;
    p.threads = threads;
    subspec_engine *e = NULL;
    subspec_status st = subspec_load(&p, &e);
    if (st != SUBSPEC_STATUS_OK) {
        fprintf(stderr, "loading %s: %s\n", path, last_error(NULL));
        exit(2);
    }
    return e;
}

/* Steps `seq` from `prompt` until EOS or `max_new` tokens (each step asks for at most the
 * tokens still wanted), as the Rust engine's `generate` does. */
static subspec_status generate(const subspec_engine *e, subspec_sequence *seq,
                               const subspec_step_params *sp, const ids_t *prompt,
                               size_t max_new, ids_t *out) {
    out->n = 0;
    const int32_t *input = prompt->ids;
    size_t n_input = prompt->n;
    while (out->n < max_new) {
        size_t n = 0;
        subspec_status st = subspec_step(seq, sp, input, n_input, out->ids + out->n,
                                         max_new - out->n, &n);
        if (st != SUBSPEC_STATUS_OK) return st;
        input = NULL;
        n_input = 0;
        int stop = 0;
        for (size_t i = 0; i < n; i++) stop |= subspec_is_eos(e, out->ids[out->n + i]);
        out->n += n;
        if (stop) break;
    }
    return SUBSPEC_STATUS_OK;
}

static int same(const ids_t *a, const ids_t *b) {
    return a->n == b->n && memcmp(a->ids, b->ids, a->n * sizeof(int32_t)) == 0;
}

static subspec_step_params sampled_params(void) {
    subspec_step_params sp = step_defaults();
    sp.temperature = 0.8f;
    sp.top_k = 40;
    sp.top_p = 0.95f;
    sp.seed = 7;
    return sp;
}

/* ---- the tests ---- */

static void test_version_and_strings(void) {
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", SUBSPEC_VERSION_MAJOR, SUBSPEC_VERSION_MINOR,
             SUBSPEC_VERSION_PATCH);
    CHECK(strcmp(subspec_version(), want) == 0, "version %s, macros %s", subspec_version(), want);
    CHECK(strcmp(subspec_status_string(SUBSPEC_STATUS_OK), "ok") == 0, "ok string");
    CHECK(strcmp(subspec_status_string(SUBSPEC_STATUS_NULL_POINTER), "null pointer") == 0, "null string");
    CHECK(strcmp(subspec_status_string(9999), "unknown status") == 0, "unknown string");
    CHECK(SUBSPEC_STATUS_OK == 0 && SUBSPEC_STATUS_PANIC == 14, "status numbering");
    /* Every code has its own string (all from the one list in src/ffi/status.rs). */
    for (unsigned a = 0; a <= SUBSPEC_STATUS_INVALID_STATE; a++) {
        CHECK(strcmp(subspec_status_string(a), "unknown status") != 0, "status %u has no string", a);
        for (unsigned b = 0; b < a; b++)
            CHECK(strcmp(subspec_status_string(a), subspec_status_string(b)) != 0, "statuses %u and %u", a, b);
    }
    CHECK(strcmp(subspec_status_string(SUBSPEC_STATUS_INVALID_STATE + 1), "unknown status") == 0, "past the last");

    subspec_load_params p = load_defaults();
    CHECK(p.model_path == NULL && p.device == SUBSPEC_DEVICE_CPU && p.memory_budget == 0 &&
              p.build_draft && p.draft_bits == 4 && p.draft_group == 64 &&
              p.draft_method == SUBSPEC_QUANT_HQQ && p.progress_callback == NULL &&
              p.struct_size == sizeof p && !p.quantize_lm_head && p.substitute_all_layers &&
              p.substitute_layers == NULL && p.n_substitute_layers == 0 && p.draft_vocab == 0 &&
              p.kv_dtype == SUBSPEC_KV_DEFAULT,
          "load defaults");
    subspec_step_params sp = step_defaults();
    CHECK(sp.temperature == 0.0f && sp.top_p == 1.0f && sp.speculate && sp.tree_width >= 1 &&
              sp.tree_depth >= 1 && sp.tree_max_tokens >= 2 && !sp.adaptive_depth &&
              sp.struct_size == sizeof sp && !sp.auto_depth && sp.reserved[0] == 0,
          "step defaults");
    /* The first published layouts: the whole structs, but for the load parameters'
       fields added since (reserved, max_sequences, draft_vocab, kv_dtype,
       draft_shortlist, draft_head_bits) and the statistics' (overlapped_steps,
       reused_trees). */
    CHECK(SUBSPEC_LOAD_PARAMS_SIZE_0_2 == offsetof(subspec_load_params, reserved) &&
              sizeof(subspec_load_params) == SUBSPEC_LOAD_PARAMS_SIZE_0_2 + 24 &&
              SUBSPEC_STEP_PARAMS_SIZE_0_2 == sizeof(subspec_step_params) &&
              SUBSPEC_MODEL_INFO_SIZE_0_2 == sizeof(subspec_model_info) &&
              SUBSPEC_SEQUENCE_STATS_SIZE_0_2 + 16 == sizeof(subspec_sequence_stats),
          "0.2 layout sizes");
}

static void test_load_errors(const char *tiny) {
    subspec_engine *e = (subspec_engine *)0x1; /* must stay untouched on failure */
    subspec_load_params p = load_defaults();

    CHECK_STATUS(subspec_load(NULL, &e), SUBSPEC_STATUS_NULL_POINTER, "params");
    p.model_path = tiny;
    CHECK_STATUS(subspec_load(&p, NULL), SUBSPEC_STATUS_NULL_POINTER, "out");
    p.model_path = NULL;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_NULL_POINTER, "params->model_path");

    p.model_path = "/nonexistent/model";
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_IO, "/nonexistent/model");

    /* A corrupt model: the tiny model's config with garbage weights. */
    char dir[] = "/tmp/subspec-c-corrupt-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char src[1200], dst[1200], buf[4096];
    snprintf(src, sizeof src, "%s/config.json", tiny);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    size_t n = fread(buf, 1, sizeof buf, in);
    fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    out = fopen(dst, "wb");
    fputs("this is not a safetensors file", out);
    fclose(out);
    p.model_path = dir;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_MODEL, "model.safetensors");
    unlink(dst);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    unlink(dst);
    rmdir(dir);

    p.model_path = tiny;
    p.device = 0;
    subspec_status st = subspec_load(&p, &e);
    const char *msg = last_error(NULL);
    CHECK(st == SUBSPEC_STATUS_DEVICE_UNAVAILABLE &&
              (strstr(msg, "no CUDA driver found") || strstr(msg, "not available in this build")),
          "CUDA: status %u, message %s", (unsigned)st, msg);
    p.device = -7;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "device -7");
    p.device = SUBSPEC_DEVICE_CPU;

    p.draft_bits = 5;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "bits");
    p.draft_bits = 4;
    p.draft_group = 48;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "group");
    p.draft_group = 64;
    p.draft_method = 9;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "draft_method");
    p.draft_method = SUBSPEC_QUANT_HQQ;
    p.kv_dtype = 9;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "kv_dtype 9");
    p.kv_dtype = SUBSPEC_KV_DEFAULT;
    p.context_length = 100000;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "max_context");
    p.context_length = 0;
    p.require_tokenizer = true;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_TOKENIZER, "tokenizer.json");
    p.require_tokenizer = false;
    p.memory_budget = 1;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_OUT_OF_MEMORY, "at least");
    uint64_t min = 0;
    CHECK_STATUS(subspec_minimum_budget(NULL, &min), SUBSPEC_STATUS_NULL_POINTER, "params");
    CHECK_STATUS(subspec_minimum_budget(&p, NULL), SUBSPEC_STATUS_NULL_POINTER, "out");
    CHECK(subspec_minimum_budget(&p, &min) == SUBSPEC_STATUS_OK && min > 1, "minimum budget %llu",
          (unsigned long long)min);
    p.memory_budget = min - 1;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_OUT_OF_MEMORY, "at least");
    p.memory_budget = 0;
    p.max_tree_tokens = 1;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "max_tree_tokens");
    p.max_tree_tokens = 0;
    CHECK(e == (subspec_engine *)0x1, "out written on failure");

    subspec_free(NULL);
    subspec_sequence_free(NULL);
    passed++;
}

typedef struct {
    int calls;
    float last;
    int stop_at;
} progress_t;

static bool on_progress(float f, void *user) {
    progress_t *p = user;
    p->calls++;
    p->last = f;
    return p->stop_at < 0 || p->calls < p->stop_at;
}

static bool abort_now(void *user) {
    return *(int *)user != 0;
}

static void test_callbacks(const char *tiny) {
    subspec_load_params p = load_defaults();
    p.model_path = tiny;
    progress_t pr = {0, -1.0f, -1};
    p.progress_callback = on_progress;
    p.progress_user_data = &pr;
    subspec_engine *e = NULL;
    CHECK(subspec_load(&p, &e) == SUBSPEC_STATUS_OK && e != NULL, "load with progress");
    CHECK(pr.calls >= 2 && pr.last == 1.0f, "progress calls %d, last %f", pr.calls, pr.last);
    subspec_free(e);

    pr = (progress_t){0, -1.0f, 2};
    e = NULL;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_ABORTED, "aborted");
    CHECK(e == NULL && pr.calls == 2, "abort by progress");

    int flag = 1;
    p.progress_callback = NULL;
    p.abort_callback = abort_now;
    p.abort_user_data = &flag;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_ABORTED, "aborted");
    flag = 0;
    CHECK(subspec_load(&p, &e) == SUBSPEC_STATUS_OK, "abort callback saying no");
    subspec_free(e);
}

static void test_null_pointers(subspec_engine *e) {
    subspec_sequence *s = NULL;
    int32_t buf[8], id = 0;
    size_t n = 0;
    char text[64];
    subspec_model_info info = {.struct_size = sizeof info};
    subspec_sequence_stats stats = {.struct_size = sizeof stats};
    subspec_step_params sp = step_defaults();

    CHECK_STATUS(subspec_sequence_create(NULL, &s), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_sequence_create(e, NULL), SUBSPEC_STATUS_NULL_POINTER, "out");
    CHECK(subspec_sequence_create(e, &s) == SUBSPEC_STATUS_OK, "create");

    CHECK_STATUS(subspec_sequence_reset(NULL), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK_STATUS(subspec_sequence_truncate(NULL, 0), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK_STATUS(subspec_sequence_tokens(NULL, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK_STATUS(subspec_sequence_tokens(s, buf, 8, NULL), SUBSPEC_STATUS_NULL_POINTER, "n_out");
    CHECK_STATUS(subspec_sequence_get_stats(NULL, &stats), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK_STATUS(subspec_sequence_get_stats(s, NULL), SUBSPEC_STATUS_NULL_POINTER, "out");

    int32_t in[1] = {3};
    CHECK_STATUS(subspec_step(NULL, &sp, in, 1, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK_STATUS(subspec_step(s, NULL, in, 1, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "params");
    CHECK_STATUS(subspec_step(s, &sp, NULL, 1, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "input");
    CHECK_STATUS(subspec_step(s, &sp, in, 1, NULL, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "out");
    CHECK_STATUS(subspec_step(s, &sp, in, 1, buf, 8, NULL), SUBSPEC_STATUS_NULL_POINTER, "n_out");

    CHECK_STATUS(subspec_get_model_info(NULL, &info), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_get_model_info(e, NULL), SUBSPEC_STATUS_NULL_POINTER, "out");
    CHECK_STATUS(subspec_eos_ids(NULL, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_eos_ids(e, buf, 8, NULL), SUBSPEC_STATUS_NULL_POINTER, "n_out");
    CHECK_STATUS(subspec_eos_ids(e, NULL, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "out");
    CHECK(!subspec_is_eos(NULL, 1), "is_eos(NULL)");
    CHECK_STATUS(subspec_token_to_id(NULL, "a", &id), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_token_to_id(e, NULL, &id), SUBSPEC_STATUS_NULL_POINTER, "token");
    CHECK_STATUS(subspec_token_to_id(e, "a", NULL), SUBSPEC_STATUS_NULL_POINTER, "out");
    CHECK_STATUS(subspec_tokenize(NULL, "a", false, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_tokenize(e, NULL, false, buf, 8, &n), SUBSPEC_STATUS_NULL_POINTER, "text");
    CHECK_STATUS(subspec_tokenize(e, "a", false, buf, 8, NULL), SUBSPEC_STATUS_NULL_POINTER, "n_out");
    CHECK_STATUS(subspec_detokenize(NULL, in, 1, text, 64, &n), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_detokenize(e, NULL, 1, text, 64, &n), SUBSPEC_STATUS_NULL_POINTER, "tokens");
    CHECK_STATUS(subspec_token_text(NULL, 1, text, 64, &n), SUBSPEC_STATUS_NULL_POINTER, "engine");

    /* last_error: a size query with buf NULL, and a too-small buffer. */
    size_t needed = 0;
    CHECK(subspec_last_error(NULL, NULL, 0, &needed) == SUBSPEC_STATUS_BUFFER_TOO_SMALL &&
              needed == strlen("`tokens` must not be NULL") + 1,
          "last_error size query: needed %zu", needed);
    char small[4] = "xyz";
    CHECK(subspec_last_error(NULL, small, sizeof small, &needed) == SUBSPEC_STATUS_BUFFER_TOO_SMALL &&
              strcmp(small, "xyz") == 0,
          "last_error too small");
    /* Per engine: the last failure on this engine (the eos_ids(e, NULL, ...) above was
     * followed by failures on engine NULL and on e). */
    CHECK(strstr(last_error(e), "must not be NULL") != NULL, "engine last error: %s", last_error(e));

    /* The sequence is untouched by all of the above. */
    CHECK(subspec_sequence_tokens(s, buf, 8, &n) == SUBSPEC_STATUS_OK && n == 0, "untouched: %zu", n);
    subspec_sequence_free(s);
}

static void test_metadata_tiny(subspec_engine *e) {
    subspec_model_info info = {.struct_size = sizeof info};
    CHECK(subspec_get_model_info(e, &info) == SUBSPEC_STATUS_OK, "info");
    CHECK(strcmp(info.architecture, "LlamaForCausalLM") == 0 && info.vocab_size == 128 &&
              info.n_layers == 2 && info.hidden_size == 64 && info.bos_id == 0 && info.n_eos == 1 &&
              info.has_draft && !info.has_tokenizer && info.tokenizer_vocab_size == 0 &&
              info.context_length == 256 && info.threads >= 1 && info.n_offloaded_layers == 0 &&
              info.max_tree_tokens == 128,
          "tiny info: %s vocab %u layers %u", info.architecture, info.vocab_size, info.n_layers);
    int32_t eos[4] = {-5, -5, -5, -5};
    size_t n = 0;
    CHECK_STATUS(subspec_eos_ids(e, eos, 0, &n), SUBSPEC_STATUS_BUFFER_TOO_SMALL, "needed");
    CHECK(n == 1 && eos[0] == -5, "eos too small: n %zu", n);
    CHECK(subspec_eos_ids(e, eos, 4, &n) == SUBSPEC_STATUS_OK && n == 1 && eos[0] == 1, "eos ids");
    CHECK(subspec_is_eos(e, 1) && !subspec_is_eos(e, 2) && !subspec_is_eos(e, -1), "is_eos");
    int32_t id;
    size_t needed;
    char text[16];
    CHECK_STATUS(subspec_token_to_id(e, "a", &id), SUBSPEC_STATUS_TOKENIZER, "tokenizer.json");
    CHECK_STATUS(subspec_tokenize(e, "a", false, NULL, 0, &n), SUBSPEC_STATUS_TOKENIZER, "tokenizer.json");
    int32_t bad[1] = {500};
    CHECK_STATUS(subspec_detokenize(e, bad, 1, text, 16, &needed), SUBSPEC_STATUS_INVALID_TOKEN, "500");
    CHECK_STATUS(subspec_token_text(e, 1, text, 16, &needed), SUBSPEC_STATUS_TOKENIZER, "tokenizer.json");
}

/* Greedy and seeded sampling, speculative and plain, equal the Rust engine's output. */
static void test_generation(subspec_engine *e, const char *model, ids_t *greedy_out) {
    ids_t prompt, want, got;
    CHECK(read_fixture(model, "prompt", &prompt, NULL, 0), "fixture prompt");
    const char *keys[2] = {"greedy", "sampled"};
    for (int k = 0; k < 2; k++) {
        CHECK(read_fixture(model, keys[k], &want, NULL, 0), "fixture %s", keys[k]);
        subspec_step_params sp = k == 0 ? step_defaults() : sampled_params();
        for (int spec = 1; spec >= 0; spec--) {
            sp.speculate = spec;
            subspec_sequence *s = NULL;
            CHECK(subspec_sequence_create(e, &s) == SUBSPEC_STATUS_OK, "create");
            subspec_status st = generate(e, s, &sp, &prompt, 32, &got);
            CHECK(st == SUBSPEC_STATUS_OK, "generate: %s", last_error(NULL));
            CHECK(same(&got, &want), "%s %s %s: %zu tokens, want %zu (first %d vs %d)", model,
                  keys[k], spec ? "speculative" : "plain", got.n, want.n, got.n ? got.ids[0] : -1,
                  want.n ? want.ids[0] : -1);
            subspec_sequence_stats stats = {.struct_size = sizeof stats};
            CHECK(subspec_sequence_get_stats(s, &stats) == SUBSPEC_STATUS_OK, "stats");
            CHECK(stats.length == prompt.n + got.n && stats.generated == got.n &&
                      stats.iterations >= 1 && stats.tau >= 1.0 &&
                      (spec || stats.iterations == got.n),
                  "stats: length %llu generated %llu iterations %llu tau %f",
                  (unsigned long long)stats.length, (unsigned long long)stats.generated,
                  (unsigned long long)stats.iterations, stats.tau);
            if (k == 0 && spec) {
                printf("%s: greedy speculative, %zu tokens in %llu steps, tau %.2f\n", model, got.n,
                       (unsigned long long)stats.iterations, stats.tau);
                if (greedy_out) *greedy_out = got;
            }
            subspec_sequence_free(s);
        }
    }
}

/* ---- host-owned sampling ---- */

/* A host sampler: `kind` 0 greedy, 1 the second most likely, 2 greedy after a repetition
 * penalty on every token it has picked so far (stateful). Ties: the lower id. */
typedef struct {
    int kind;
    int32_t seen[256];
    size_t n_seen;
} host_sampler;

static int32_t host_pick(host_sampler *h, const float *logits, size_t n_vocab) {
    int32_t best = -1, second = -1;
    float vb = 0, vs = 0;
    for (size_t i = 0; i < n_vocab; i++) {
        float x = logits[i];
        if (h->kind == 2)
            for (size_t k = 0; k < h->n_seen; k++)
                if (h->seen[k] == (int32_t)i) {
                    x = x > 0 ? x / 1.5f : x * 1.5f;
                    break;
                }
        if (best < 0 || x > vb) {
            second = best, vs = vb;
            best = (int32_t)i, vb = x;
        } else if (second < 0 || x > vs) {
            second = (int32_t)i, vs = x;
        }
    }
    int32_t t = h->kind == 1 ? second : best;
    if (h->kind == 2 && h->n_seen < 256) h->seen[h->n_seen++] = t;
    return t;
}

/* Plain decoding with the host sampler: subspec_sequence_eval one token at a time. */
static int host_plain(subspec_engine *e, const ids_t *prompt, int kind, size_t n, ids_t *out) {
    host_sampler h = {.kind = kind};
    subspec_sequence *s = NULL;
    if (subspec_sequence_create(e, &s) != SUBSPEC_STATUS_OK) return 0;
    static float logits[1 << 16];
    const int32_t *input = prompt->ids;
    size_t n_input = prompt->n;
    int32_t t = 0;
    out->n = 0;
    while (out->n < n) {
        size_t n_vocab = 0;
        if (subspec_sequence_eval(s, input, n_input, logits, sizeof logits / sizeof *logits,
                                  &n_vocab) != SUBSPEC_STATUS_OK)
            break;
        t = host_pick(&h, logits, n_vocab);
        out->ids[out->n++] = t;
        input = &t;
        n_input = 1;
    }
    subspec_sequence_free(s);
    return out->n == n;
}

/* The host walk: begin, (logits, pick, push)* while has_next, end. */
static int host_walk(subspec_sequence *s, const subspec_step_params *sp, const ids_t *prompt,
                     int kind, size_t n, ids_t *out) {
    host_sampler h = {.kind = kind};
    const int32_t *input = prompt->ids;
    size_t n_input = prompt->n;
    out->n = 0;
    while (out->n < n) {
        if (subspec_iter_begin(s, sp, input, n_input) != SUBSPEC_STATUS_OK) return 0;
        input = NULL;
        n_input = 0;
        bool has_next = true;
        while (has_next && out->n < n) {
            const float *logits = NULL;
            size_t n_vocab = 0;
            if (subspec_iter_logits(s, &logits, &n_vocab) != SUBSPEC_STATUS_OK) return 0;
            int32_t t = host_pick(&h, logits, n_vocab);
            if (subspec_iter_push(s, t, &has_next) != SUBSPEC_STATUS_OK) return 0;
            out->ids[out->n++] = t;
        }
        size_t pushed = 0;
        if (subspec_iter_end(s, &pushed) != SUBSPEC_STATUS_OK || pushed == 0) return 0;
    }
    return 1;
}

/* Every host sampler's speculative walk equals its plain output; the state errors. */
static void test_host_sampling(subspec_engine *e, const char *model) {
    ids_t prompt, want, got;
    CHECK(read_fixture(model, "prompt", &prompt, NULL, 0), "fixture prompt");
    subspec_step_params sp = step_defaults();
    for (int kind = 0; kind < 3; kind++) {
        CHECK(host_plain(e, &prompt, kind, 32, &want), "plain eval: %s", last_error(NULL));
        for (int spec = 1; spec >= 0; spec--) {
            sp.speculate = spec;
            subspec_sequence *s = NULL;
            CHECK(subspec_sequence_create(e, &s) == SUBSPEC_STATUS_OK, "create");
            CHECK(host_walk(s, &sp, &prompt, kind, 32, &got), "walk: %s", last_error(NULL));
            CHECK(same(&got, &want), "%s host sampler %d %s: first %d vs %d", model, kind,
                  spec ? "speculative" : "plain", got.n ? got.ids[0] : -1, want.ids[0]);
            subspec_sequence_stats st = {.struct_size = sizeof st};
            CHECK(subspec_sequence_get_stats(s, &st) == SUBSPEC_STATUS_OK && st.generated == 32 &&
                      st.length == prompt.n + 32 && (spec || st.iterations == 32),
                  "host walk stats: generated %llu iterations %llu",
                  (unsigned long long)st.generated, (unsigned long long)st.iterations);
            if (kind == 0 && spec)
                printf("%s: host greedy walk, 32 tokens in %llu passes, tau %.2f\n", model,
                       (unsigned long long)st.iterations, st.tau);
            subspec_sequence_free(s);
        }
    }

    sp.speculate = true;
    subspec_sequence *s = NULL;
    CHECK(subspec_sequence_create(e, &s) == SUBSPEC_STATUS_OK, "create");
    const float *logits = NULL;
    size_t n_vocab = 0, n = 0, len = 0;
    bool has_next = false;
    int32_t toks[512];
    /* Nothing open. */
    CHECK_STATUS(subspec_iter_logits(s, &logits, &n_vocab), SUBSPEC_STATUS_INVALID_STATE, "no host-sampled");
    CHECK_STATUS(subspec_iter_push(s, 1, &has_next), SUBSPEC_STATUS_INVALID_STATE, "no host-sampled");
    CHECK_STATUS(subspec_iter_end(s, &n), SUBSPEC_STATUS_INVALID_STATE, "no host-sampled");
    CHECK_STATUS(subspec_iter_cancel(s), SUBSPEC_STATUS_INVALID_STATE, "no host-sampled");
    CHECK_STATUS(subspec_iter_begin(s, &sp, NULL, 0), SUBSPEC_STATUS_INVALID_ARGUMENT, "empty");
    int32_t bad[2] = {1, 128};
    CHECK_STATUS(subspec_iter_begin(s, &sp, bad, 2), SUBSPEC_STATUS_INVALID_TOKEN, "128");
    CHECK_STATUS(subspec_iter_begin(s, NULL, bad, 1), SUBSPEC_STATUS_NULL_POINTER, "params");
    CHECK(subspec_sequence_tokens(s, toks, 512, &len) == SUBSPEC_STATUS_OK && len == 0, "still empty");

    CHECK(subspec_iter_begin(s, &sp, prompt.ids, prompt.n) == SUBSPEC_STATUS_OK, "begin: %s", last_error(NULL));
    /* While open: step, eval, truncate, reset and another begin are refused. */
    int32_t out[8];
    float buf[256];
    CHECK_STATUS(subspec_iter_begin(s, &sp, NULL, 0), SUBSPEC_STATUS_INVALID_STATE, "iteration is open");
    CHECK_STATUS(subspec_step(s, &sp, NULL, 0, out, 8, &n), SUBSPEC_STATUS_INVALID_STATE, "iteration is open");
    CHECK_STATUS(subspec_sequence_eval(s, NULL, 0, buf, 256, &n_vocab), SUBSPEC_STATUS_INVALID_STATE, "iteration is open");
    CHECK_STATUS(subspec_sequence_truncate(s, 1), SUBSPEC_STATUS_INVALID_STATE, "iteration is open");
    CHECK_STATUS(subspec_sequence_reset(s), SUBSPEC_STATUS_INVALID_STATE, "iteration is open");
    CHECK_STATUS(subspec_iter_push(s, -1, &has_next), SUBSPEC_STATUS_INVALID_TOKEN, "-1");
    CHECK_STATUS(subspec_iter_push(s, 128, &has_next), SUBSPEC_STATUS_INVALID_TOKEN, "128");
    CHECK_STATUS(subspec_iter_push(s, 1, NULL), SUBSPEC_STATUS_NULL_POINTER, "has_next");
    CHECK_STATUS(subspec_iter_logits(s, NULL, &n_vocab), SUBSPEC_STATUS_NULL_POINTER, "logits");
    CHECK(subspec_sequence_tokens(s, toks, 512, &len) == SUBSPEC_STATUS_OK && len == prompt.n,
          "the refused calls changed nothing: %zu tokens", len);
    /* Top log-probabilities: descending, the first is the argmax. */
    CHECK(subspec_iter_logits(s, &logits, &n_vocab) == SUBSPEC_STATUS_OK && n_vocab == 128, "logits");
    host_sampler g = {.kind = 0};
    int32_t argmax = host_pick(&g, logits, n_vocab);
    int32_t ids[5];
    float lps[5];
    size_t n_top = 0;
    CHECK(subspec_iter_top_logprobs(s, 5, ids, lps, &n_top) == SUBSPEC_STATUS_OK && n_top == 5 &&
              ids[0] == argmax && lps[0] <= 0 && lps[0] >= lps[1] && lps[1] >= lps[4],
          "top logprobs: %zu, %d (argmax %d) %f %f", n_top, ids[0], argmax, lps[0], lps[1]);
    CHECK_STATUS(subspec_iter_top_logprobs(s, 5, NULL, lps, &n_top), SUBSPEC_STATUS_NULL_POINTER, "ids");
    /* Push the second most likely token until one is not in the tree. */
    host_sampler h2 = {.kind = 1};
    size_t pushed = 0;
    do {
        CHECK(subspec_iter_logits(s, &logits, &n_vocab) == SUBSPEC_STATUS_OK, "logits");
        CHECK(subspec_iter_push(s, host_pick(&h2, logits, n_vocab), &has_next) == SUBSPEC_STATUS_OK, "push");
        pushed++;
    } while (has_next && pushed < 64);
    CHECK(!has_next, "the walk ended");
    CHECK_STATUS(subspec_iter_push(s, 1, &has_next), SUBSPEC_STATUS_INVALID_STATE, "has ended");
    CHECK_STATUS(subspec_iter_logits(s, &logits, &n_vocab), SUBSPEC_STATUS_INVALID_STATE, "has ended");
    CHECK(subspec_sequence_tokens(s, toks, 512, &len) == SUBSPEC_STATUS_OK && len == prompt.n + pushed,
          "after a refused push: %zu tokens, want %zu", len, prompt.n + pushed);
    CHECK(subspec_iter_end(s, &n) == SUBSPEC_STATUS_OK && n == pushed, "end: %zu", n);
    n = 999;
    CHECK_STATUS(subspec_iter_end(s, &n), SUBSPEC_STATUS_INVALID_STATE, "no host-sampled");
    CHECK(n == 999, "a failed end leaves n_pushed untouched");
    CHECK(subspec_sequence_tokens(s, toks, 512, &len) == SUBSPEC_STATUS_OK && len == prompt.n + pushed,
          "after ending twice: %zu tokens", len);

    /* Cancel: the sequence exactly as before begin, its logits those of the same tokens. */
    int32_t more[2] = {9, 10};
    CHECK(subspec_iter_begin(s, &sp, more, 2) == SUBSPEC_STATUS_OK, "begin");
    CHECK(subspec_iter_push(s, 3, &has_next) == SUBSPEC_STATUS_OK, "push");
    CHECK(subspec_iter_cancel(s) == SUBSPEC_STATUS_OK, "cancel");
    size_t len2 = 0;
    CHECK(subspec_sequence_tokens(s, toks, 512, &len2) == SUBSPEC_STATUS_OK && len2 == len,
          "after cancel: %zu tokens, want %zu", len2, len);
    /* eval: a too-small buffer writes only the size needed. */
    n_vocab = 0;
    CHECK_STATUS(subspec_sequence_eval(s, NULL, 0, buf, 127, &n_vocab), SUBSPEC_STATUS_BUFFER_TOO_SMALL, "127");
    CHECK(n_vocab == 128, "size needed %zu", n_vocab);
    CHECK(subspec_sequence_eval(s, NULL, 0, buf, 256, &n_vocab) == SUBSPEC_STATUS_OK && n_vocab == 128, "eval");
    subspec_sequence *fresh = NULL;
    float buf2[256];
    CHECK(subspec_sequence_create(e, &fresh) == SUBSPEC_STATUS_OK, "create");
    CHECK(subspec_sequence_eval(fresh, toks, len, buf2, 256, &n_vocab) == SUBSPEC_STATUS_OK, "eval afresh");
    CHECK(memcmp(buf, buf2, 128 * sizeof(float)) == 0, "the logits after a cancel are those afresh");
    subspec_sequence_free(fresh);
    subspec_sequence_free(s);
}

/* Every failed step leaves the sequence exactly as it was; reset and truncate. */
static void test_sequence_errors(subspec_engine *e, const char *model) {
    ids_t prompt, want, got;
    read_fixture(model, "prompt", &prompt, NULL, 0);
    read_fixture(model, "greedy", &want, NULL, 0);
    subspec_model_info info = {.struct_size = sizeof info};
    subspec_get_model_info(e, &info);
    subspec_sequence *s = NULL;
    subspec_sequence_create(e, &s);
    subspec_step_params sp = step_defaults();
    int32_t out[64];
    size_t n = 12345, len = 0;
    subspec_sequence_stats stats = {.struct_size = sizeof stats};

    CHECK_STATUS(subspec_step(s, &sp, NULL, 0, out, 64, &n), SUBSPEC_STATUS_INVALID_ARGUMENT, "empty");
    int32_t bad[2] = {3, (int32_t)info.vocab_size};
    CHECK_STATUS(subspec_step(s, &sp, bad, 2, out, 64, &n), SUBSPEC_STATUS_INVALID_TOKEN, "out of range");
    bad[1] = -1;
    CHECK_STATUS(subspec_step(s, &sp, bad, 2, out, 64, &n), SUBSPEC_STATUS_INVALID_TOKEN, "-1");
    CHECK_STATUS(subspec_step(s, &sp, prompt.ids, prompt.n, out, 0, &n), SUBSPEC_STATUS_BUFFER_TOO_SMALL,
                 "out_capacity is 0");
    subspec_step_params badp = sp;
    badp.top_p = 2.0f;
    CHECK_STATUS(subspec_step(s, &badp, prompt.ids, prompt.n, out, 64, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "top_p");
    badp = sp;
    badp.tree_width = 0;
    CHECK_STATUS(subspec_step(s, &badp, prompt.ids, prompt.n, out, 64, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "width");
    badp = sp;
    badp.tree_max_tokens = 5000;
    CHECK_STATUS(subspec_step(s, &badp, prompt.ids, prompt.n, out, 64, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "max_tree_tokens");
    CHECK(subspec_sequence_tokens(s, NULL, 0, &len) == SUBSPEC_STATUS_OK && len == 0 && n == 12345,
          "failed steps changed the sequence: %zu tokens, n_out %zu", len, n);

    /* A good step, then failures in the middle of a generation change nothing either. */
    CHECK(subspec_step(s, &sp, prompt.ids, prompt.n, out, 4, &n) == SUBSPEC_STATUS_OK && n >= 1 && n <= 4,
          "step: %s", last_error(NULL));
    size_t after = prompt.n + n;
    subspec_sequence_get_stats(s, &stats);
    uint64_t iters = stats.iterations;
    CHECK_STATUS(subspec_step(s, &sp, bad, 2, out, 64, &n), SUBSPEC_STATUS_INVALID_TOKEN, "-1");
    CHECK_STATUS(subspec_step(s, &badp, prompt.ids, 1, out, 64, &n), SUBSPEC_STATUS_INVALID_ARGUMENT, "max_tree_tokens");
    subspec_sequence_get_stats(s, &stats);
    CHECK(stats.length == after && stats.iterations == iters, "failed step changed state: %llu vs %zu",
          (unsigned long long)stats.length, after);
    int32_t toks[64];
    CHECK_STATUS(subspec_sequence_tokens(s, toks, 1, &len), SUBSPEC_STATUS_BUFFER_TOO_SMALL, "needed");
    CHECK(len == after, "tokens needed %zu", len);

    /* An abort request (any thread) stops the next call at its first layer; taken once,
     * withdrawable; the sequence unchanged. */
    CHECK_STATUS(subspec_sequence_abort(NULL), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK_STATUS(subspec_sequence_clear_abort(NULL), SUBSPEC_STATUS_NULL_POINTER, "seq");
    CHECK(subspec_sequence_abort(s) == SUBSPEC_STATUS_OK, "abort");
    CHECK_STATUS(subspec_step(s, &sp, NULL, 0, out, 64, &n), SUBSPEC_STATUS_ABORTED, "before decoder layer 0");
    float lg[256];
    size_t nv = 0;
    CHECK(subspec_sequence_abort(s) == SUBSPEC_STATUS_OK, "abort");
    CHECK_STATUS(subspec_sequence_eval(s, NULL, 0, lg, 256, &nv), SUBSPEC_STATUS_ABORTED, "aborted by request");
    CHECK(subspec_sequence_abort(s) == SUBSPEC_STATUS_OK, "abort");
    CHECK_STATUS(subspec_iter_begin(s, &sp, NULL, 0), SUBSPEC_STATUS_ABORTED, "aborted by request");
    subspec_sequence_get_stats(s, &stats);
    CHECK(stats.length == after && stats.iterations == iters, "an aborted call changed the sequence");
    CHECK(subspec_sequence_abort(s) == SUBSPEC_STATUS_OK && subspec_sequence_clear_abort(s) == SUBSPEC_STATUS_OK,
          "abort, clear");
    CHECK(subspec_step(s, &sp, NULL, 0, out, 1, &n) == SUBSPEC_STATUS_OK && n == 1, "a withdrawn request stops nothing");
    CHECK(subspec_sequence_truncate(s, after) == SUBSPEC_STATUS_OK, "truncate back");

    /* Truncate to the prompt (prompt reuse) and continue: the same tokens again. */
    CHECK_STATUS(subspec_sequence_truncate(s, after + 1), SUBSPEC_STATUS_INVALID_ARGUMENT, "cannot truncate");
    CHECK(subspec_sequence_truncate(s, prompt.n) == SUBSPEC_STATUS_OK, "truncate");
    ids_t none = {{0}, 0};
    CHECK(generate(e, s, &sp, &none, 32, &got) == SUBSPEC_STATUS_OK && same(&got, &want),
          "after truncate: %zu tokens, want %zu", got.n, want.n);

    /* Use after reset: empty, statistics zero, a step without input is refused. */
    CHECK(subspec_sequence_reset(s) == SUBSPEC_STATUS_OK, "reset");
    subspec_sequence_get_stats(s, &stats);
    CHECK(stats.length == 0 && stats.iterations == 0 && stats.tau == 0.0, "stats after reset");
    CHECK_STATUS(subspec_step(s, &sp, NULL, 0, out, 64, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "the sequence is empty");
    CHECK(generate(e, s, &sp, &prompt, 32, &got) == SUBSPEC_STATUS_OK && same(&got, &want),
          "after reset: %zu tokens", got.n);
    subspec_sequence_free(s);
}

static void test_context_full(const char *tiny) {
    subspec_engine *e = load(tiny, 12, 1);
    subspec_sequence *s = NULL;
    subspec_sequence_create(e, &s);
    subspec_step_params sp = step_defaults();
    int32_t in[13] = {0, 5, 17, 42, 99, 3, 7, 8, 9, 10, 11, 12, 13}, out[16];
    size_t n = 0, total = 0;
    CHECK_STATUS(subspec_step(s, &sp, in, 13, out, 16, &n), SUBSPEC_STATUS_CONTEXT_FULL, "context length 12");
    CHECK(subspec_step(s, &sp, in, 6, out, 16, &n) == SUBSPEC_STATUS_OK, "step: %s", last_error(NULL));
    total = 6 + n;
    while (total < 12 && subspec_step(s, &sp, NULL, 0, out, 16, &n) == SUBSPEC_STATUS_OK) total += n;
    CHECK(total == 12, "filled to %zu", total);
    CHECK_STATUS(subspec_step(s, &sp, NULL, 0, out, 16, &n), SUBSPEC_STATUS_CONTEXT_FULL, "context length 12");
    /* The engine goes first; the sequence keeps it alive. */
    subspec_free(e);
    CHECK(subspec_sequence_truncate(s, 6) == SUBSPEC_STATUS_OK &&
              subspec_step(s, &sp, NULL, 0, out, 16, &n) == SUBSPEC_STATUS_OK,
          "sequence after engine free: %s", last_error(NULL));
    subspec_sequence_free(s);

    /* Without a draft, speculation is refused; plain steps work. */
    subspec_load_params p = load_defaults();
    p.model_path = tiny;
    p.build_draft = false;
    CHECK(subspec_load(&p, &e) == SUBSPEC_STATUS_OK, "load without draft");
    subspec_sequence_create(e, &s);
    CHECK_STATUS(subspec_step(s, &sp, in, 6, out, 16, &n), SUBSPEC_STATUS_INVALID_ARGUMENT, "draft");
    sp.speculate = false;
    CHECK(subspec_step(s, &sp, in, 6, out, 16, &n) == SUBSPEC_STATUS_OK && n == 1, "plain without draft");
    subspec_sequence_free(s);
    subspec_free(e);
}

/* At the smallest budget layers are offloaded (streamed each target pass): the output is
 * still the Rust engine's, token for token, with the engine's own tree. */
static void test_minimum_budget(const char *tiny) {
    subspec_load_params p = load_defaults();
    p.model_path = tiny;
    p.context_length = 256;
    uint64_t min = 0;
    CHECK(subspec_minimum_budget(&p, &min) == SUBSPEC_STATUS_OK, "minimum: %s", last_error(NULL));
    p.memory_budget = min;
    subspec_engine *e = NULL;
    if (subspec_load(&p, &e) != SUBSPEC_STATUS_OK) {
        CHECK(0, "load at the minimum budget %llu: %s", (unsigned long long)min, last_error(NULL));
        return;
    }
    subspec_model_info info = {.struct_size = sizeof info};
    subspec_get_model_info(e, &info);
    CHECK(info.n_offloaded_layers >= 1 && info.max_tree_tokens == 128, "offloaded %u, tree %u",
          info.n_offloaded_layers, info.max_tree_tokens);
    subspec_step_params sp;
    CHECK_STATUS(SUBSPEC_ENGINE_STEP_PARAMS_INIT(NULL, &sp), SUBSPEC_STATUS_NULL_POINTER, "engine");
    CHECK_STATUS(subspec_engine_step_params_init(e, NULL, sizeof sp), SUBSPEC_STATUS_NULL_POINTER,
                 "subspec_step_params");
    CHECK(SUBSPEC_ENGINE_STEP_PARAMS_INIT(e, &sp) == SUBSPEC_STATUS_OK && sp.speculate && sp.temperature == 0.0f &&
              !sp.adaptive_depth && sp.struct_size == sizeof sp &&
              sp.tree_max_tokens <= info.max_tree_tokens,
          "engine step params");
    ids_t prompt, want, got;
    read_fixture("tiny", "prompt", &prompt, NULL, 0);
    read_fixture("tiny", "greedy", &want, NULL, 0);
    subspec_sequence *s = NULL;
    subspec_sequence_create(e, &s);
    CHECK(generate(e, s, &sp, &prompt, 32, &got) == SUBSPEC_STATUS_OK && same(&got, &want),
          "offloaded generation: %zu tokens: %s", got.n, last_error(NULL));
    subspec_sequence_free(s);
    subspec_free(e);
}

/* An engine loaded for N sequences plans N KV caches and refuses the N+1th live one. */
static void test_max_sequences(const char *tiny) {
    subspec_load_params p = load_defaults();
    p.model_path = tiny;
    p.context_length = 256;
    uint64_t one = 0, three = 0;
    subspec_minimum_budget(&p, &one);
    p.max_sequences = 3;
    CHECK(subspec_minimum_budget(&p, &three) == SUBSPEC_STATUS_OK && three > one,
          "three sequences' minimum %llu vs one's %llu", (unsigned long long)three, (unsigned long long)one);
    p.memory_budget = one;
    subspec_engine *e = (subspec_engine *)0x1;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_OUT_OF_MEMORY, "for 3 sequences at once; it holds 1 sequence");
    CHECK(e == (subspec_engine *)0x1, "out written on failure");
    p.memory_budget = 0;
    p.reserved[2] = 1;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "`reserved` is not zero");
    p.reserved[2] = 0;
    p.max_sequences = 2;
    e = NULL;
    if (subspec_load(&p, &e) != SUBSPEC_STATUS_OK) {
        CHECK(0, "load for 2 sequences: %s", last_error(NULL));
        return;
    }
    subspec_sequence *a = NULL, *b = NULL, *c = (subspec_sequence *)0x1;
    CHECK(subspec_sequence_create(e, &a) == SUBSPEC_STATUS_OK && subspec_sequence_create(e, &b) == SUBSPEC_STATUS_OK,
          "two sequences: %s", last_error(e));
    CHECK_STATUS(subspec_sequence_create(e, &c), SUBSPEC_STATUS_OUT_OF_MEMORY, "planned for 2 sequences");
    CHECK(c == (subspec_sequence *)0x1, "out written on failure");
    subspec_sequence_free(a);
    c = NULL;
    CHECK(subspec_sequence_create(e, &c) == SUBSPEC_STATUS_OK, "after a free: %s", last_error(e));
    subspec_sequence_free(b);
    subspec_sequence_free(c);
    subspec_free(e);
}

typedef struct {
    subspec_engine *e;
    const ids_t *prompt;
    subspec_step_params sp;
    ids_t got;
    subspec_status st;
} worker_t;

static void *worker(void *arg) {
    worker_t *w = arg;
    subspec_sequence *s = NULL;
    w->st = subspec_sequence_create(w->e, &s);
    if (w->st == SUBSPEC_STATUS_OK) w->st = generate(w->e, s, &w->sp, w->prompt, 32, &w->got);
    subspec_sequence_free(s);
    return NULL;
}

/* Steps on different sequences from different threads at once. */
static void test_threads(subspec_engine *e, const char *model) {
    ids_t prompt, greedy, sampled;
    read_fixture(model, "prompt", &prompt, NULL, 0);
    read_fixture(model, "greedy", &greedy, NULL, 0);
    read_fixture(model, "sampled", &sampled, NULL, 0);
    worker_t w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_t){e, &prompt, i % 2 ? sampled_params() : step_defaults(), {{0}, 0}, 0};
        pthread_create(&th[i], NULL, worker, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(w[i].st == SUBSPEC_STATUS_OK && same(&w[i].got, i % 2 ? &sampled : &greedy),
              "thread %d: status %u, %zu tokens", i, (unsigned)w[i].st, w[i].got.n);
    }
}

static void test_tokenizer_smollm2(subspec_engine *e, const ids_t *prompt) {
    subspec_model_info info = {.struct_size = sizeof info};
    CHECK(subspec_get_model_info(e, &info) == SUBSPEC_STATUS_OK && info.has_tokenizer &&
              info.vocab_size == 49152 && info.tokenizer_vocab_size == 49152 && info.bos_id == 1 &&
              strcmp(info.architecture, "LlamaForCausalLM") == 0,
          "smollm2 info");
    int32_t ids[64], id = -5;
    size_t n = 0, needed = 0;
    const char *text = "The three primary colours are";
    CHECK_STATUS(subspec_tokenize(e, text, false, ids, 2, &n), SUBSPEC_STATUS_BUFFER_TOO_SMALL, "needed");
    CHECK(n == prompt->n, "tokenize needed %zu", n);
    CHECK(subspec_tokenize(e, text, false, ids, 64, &n) == SUBSPEC_STATUS_OK && n == prompt->n &&
              memcmp(ids, prompt->ids, n * sizeof(int32_t)) == 0,
          "tokenize");
    char buf[128];
    CHECK_STATUS(subspec_detokenize(e, ids, n, buf, 4, &needed), SUBSPEC_STATUS_BUFFER_TOO_SMALL, "needed");
    CHECK(needed == strlen(text) + 1, "detokenize needed %zu", needed);
    CHECK(subspec_detokenize(e, ids, n, buf, sizeof buf, &needed) == SUBSPEC_STATUS_OK &&
              strcmp(buf, text) == 0,
          "detokenize: %s", buf);
    CHECK(subspec_token_to_id(e, "<|im_end|>", &id) == SUBSPEC_STATUS_OK && id == 2, "im_end %d", id);
    CHECK(subspec_token_to_id(e, "no such token, surely", &id) == SUBSPEC_STATUS_OK && id == -1, "unknown");

    /* The vocabulary's own strings (what llama_vocab_get_text gives), not decoded text. */
    CHECK(subspec_token_text(e, 2, buf, sizeof buf, &needed) == SUBSPEC_STATUS_OK &&
              strcmp(buf, "<|im_end|>") == 0 && needed == sizeof "<|im_end|>",
          "token_text(2): %s", buf);
    CHECK(subspec_token_text(e, prompt->ids[1], buf, sizeof buf, NULL) == SUBSPEC_STATUS_OK &&
              strncmp(buf, "\xc4\xa0", 2) == 0,
          "token_text of a word after a space starts with U+0120: %s", buf);
    memcpy(buf, "keep", 5);
    CHECK_STATUS(subspec_token_text(e, 2, buf, 4, &needed), SUBSPEC_STATUS_BUFFER_TOO_SMALL, "needed");
    CHECK(needed == sizeof "<|im_end|>" && strcmp(buf, "keep") == 0, "token_text too small: %zu", needed);
    CHECK_STATUS(subspec_token_text(e, 49152, buf, sizeof buf, NULL), SUBSPEC_STATUS_INVALID_TOKEN, "49152 tokens");
    CHECK_STATUS(subspec_token_text(e, -1, buf, sizeof buf, NULL), SUBSPEC_STATUS_INVALID_TOKEN, "non-negative");

    /* The model's own chat template (SmolLM2 adds its default system turn). */
    const char *roles[] = {"user"}, *contents[] = {"hi"};
    const char *want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                       "Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    char chat[512];
    CHECK_STATUS(subspec_apply_chat_template(e, roles, contents, 1, true, chat, 8, &needed),
                 SUBSPEC_STATUS_BUFFER_TOO_SMALL, "buffer holds");
    CHECK(needed == strlen(want) + 1, "chat template needed %zu", needed);
    CHECK(subspec_apply_chat_template(e, roles, contents, 1, true, chat, sizeof chat, NULL) ==
                  SUBSPEC_STATUS_OK &&
              strcmp(chat, want) == 0,
          "chat template: %s", chat);
    CHECK_STATUS(subspec_apply_chat_template(e, NULL, contents, 1, true, chat, sizeof chat, NULL),
                 SUBSPEC_STATUS_NULL_POINTER, "roles");
    const char *null_content[] = {NULL};
    CHECK_STATUS(subspec_apply_chat_template(e, roles, null_content, 1, true, chat, sizeof chat, NULL),
                 SUBSPEC_STATUS_NULL_POINTER, "contents[0]");
}

/* A caller compiled against a newer header: the struct this library knows, then a field
 * it does not. */
typedef struct {
    subspec_load_params known;
    uint64_t newer_field;
} newer_load_params;

typedef struct {
    subspec_step_params known;
    uint64_t newer_field;
} newer_step_params;

typedef struct {
    subspec_model_info known;
    uint64_t newer_field;
} newer_model_info;

/* struct_size: 0 or below the first layout is refused by name; an old caller's exact
 * 0.2.0 size works, reading and writing nothing beyond it (the structs are malloc'ed at
 * exactly that size, so valgrind sees any access past it); a newer caller's larger struct
 * works only while the fields this library does not know are zero. */
static void test_struct_sizes(const char *tiny) {
    subspec_engine *e = (subspec_engine *)0x1;
    subspec_load_params p;
    uint64_t min = 0;

    CHECK_STATUS(subspec_load_params_init(NULL, sizeof p), SUBSPEC_STATUS_NULL_POINTER, "subspec_load_params");
    CHECK_STATUS(subspec_load_params_init(&p, 0), SUBSPEC_STATUS_INVALID_ARGUMENT, "subspec_load_params: size is 0");
    CHECK_STATUS(subspec_load_params_init(&p, SUBSPEC_LOAD_PARAMS_SIZE_0_2 - 1), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "smaller than its first published layout");
    CHECK_STATUS(subspec_step_params_init(NULL, 64), SUBSPEC_STATUS_NULL_POINTER, "subspec_step_params");

    p = load_defaults();
    p.model_path = tiny;
    p.struct_size = 0;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "subspec_load_params: params->struct_size is 0");
    p.struct_size = 8;
    CHECK_STATUS(subspec_minimum_budget(&p, &min), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "subspec_load_params: params->struct_size 8 is smaller");
    p.struct_size = 1 << 20;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "not initialized");
    CHECK(e == (subspec_engine *)0x1, "out written on failure");

    /* The old caller: every struct exactly its 0.2.0 size. */
    subspec_load_params *op = malloc(SUBSPEC_LOAD_PARAMS_SIZE_0_2);
    CHECK(subspec_load_params_init(op, SUBSPEC_LOAD_PARAMS_SIZE_0_2) == SUBSPEC_STATUS_OK &&
              op->struct_size == SUBSPEC_LOAD_PARAMS_SIZE_0_2 && op->build_draft && op->substitute_all_layers,
          "old load params init");
    op->model_path = tiny;
    op->context_length = 64;
    CHECK(subspec_load(op, &e) == SUBSPEC_STATUS_OK, "old caller load: %s", last_error(NULL));
    free(op);
    subspec_model_info *oi = malloc(SUBSPEC_MODEL_INFO_SIZE_0_2);
    memset(oi, 0, SUBSPEC_MODEL_INFO_SIZE_0_2);
    oi->struct_size = SUBSPEC_MODEL_INFO_SIZE_0_2;
    CHECK(subspec_get_model_info(e, oi) == SUBSPEC_STATUS_OK && oi->struct_size == SUBSPEC_MODEL_INFO_SIZE_0_2 &&
              oi->vocab_size == 128 && oi->context_length == 64 && oi->has_draft,
          "old caller info");
    oi->struct_size = SUBSPEC_MODEL_INFO_SIZE_0_2 - 1;
    CHECK_STATUS(subspec_get_model_info(e, oi), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "subspec_model_info: out->struct_size");
    oi->struct_size = 0;
    CHECK_STATUS(subspec_get_model_info(e, oi), SUBSPEC_STATUS_INVALID_ARGUMENT, "out->struct_size is 0");
    free(oi);
    subspec_step_params *os = malloc(SUBSPEC_STEP_PARAMS_SIZE_0_2);
    CHECK(subspec_step_params_init(os, SUBSPEC_STEP_PARAMS_SIZE_0_2) == SUBSPEC_STATUS_OK && os->speculate,
          "old step params init");
    subspec_sequence *s = NULL;
    subspec_sequence_create(e, &s);
    int32_t in[3] = {0, 5, 17}, out[8];
    size_t n = 0;
    CHECK(subspec_step(s, os, in, 3, out, 8, &n) == SUBSPEC_STATUS_OK && n >= 1, "old caller step: %s",
          last_error(NULL));
    os->struct_size = 0;
    CHECK_STATUS(subspec_step(s, os, NULL, 0, out, 8, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "subspec_step_params: params->struct_size is 0");
    free(os);
    subspec_sequence_stats *ost = malloc(SUBSPEC_SEQUENCE_STATS_SIZE_0_2);
    memset(ost, 0, SUBSPEC_SEQUENCE_STATS_SIZE_0_2);
    ost->struct_size = SUBSPEC_SEQUENCE_STATS_SIZE_0_2;
    CHECK(subspec_sequence_get_stats(s, ost) == SUBSPEC_STATUS_OK && ost->length == 3 + n, "old caller stats");
    ost->struct_size = 3;
    CHECK_STATUS(subspec_sequence_get_stats(s, ost), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "subspec_sequence_stats: out->struct_size 3");
    free(ost);

    /* The newer caller: accepted with the unknown field zero, refused when it is set. */
    newer_load_params np;
    memset(&np, 0xAB, sizeof np);
    CHECK(subspec_load_params_init(&np.known, sizeof np) == SUBSPEC_STATUS_OK && np.newer_field == 0 &&
              np.known.struct_size == sizeof np,
          "newer init zeroes the unknown tail");
    np.known.model_path = tiny;
    np.known.context_length = 64;
    uint64_t want = 0;
    p = load_defaults();
    p.model_path = tiny;
    p.context_length = 64;
    subspec_minimum_budget(&p, &want);
    CHECK(subspec_minimum_budget(&np.known, &min) == SUBSPEC_STATUS_OK && min == want, "newer, zero tail");
    np.newer_field = 1;
    CHECK_STATUS(subspec_minimum_budget(&np.known, &min), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "unknown to this library version");
    subspec_engine *e2 = NULL;
    CHECK_STATUS(subspec_load(&np.known, &e2), SUBSPEC_STATUS_INVALID_ARGUMENT, "subspec_load_params: byte");
    CHECK(e2 == NULL, "engine made from a refused struct");

    newer_step_params ns;
    subspec_step_params_init(&ns.known, sizeof ns);
    CHECK(subspec_step(s, &ns.known, NULL, 0, out, 8, &n) == SUBSPEC_STATUS_OK, "newer step, zero tail: %s",
          last_error(NULL));
    ns.newer_field = 7;
    CHECK_STATUS(subspec_step(s, &ns.known, NULL, 0, out, 8, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "subspec_step_params: byte");
    subspec_step_params_init(&ns.known, sizeof ns);
    ns.known.reserved[0] = 1;
    CHECK_STATUS(subspec_step(s, &ns.known, NULL, 0, out, 8, &n), SUBSPEC_STATUS_INVALID_ARGUMENT,
                 "`reserved` is not zero");

    newer_model_info ni;
    memset(&ni, 0, sizeof ni);
    ni.known.struct_size = sizeof ni;
    ni.newer_field = 42;
    CHECK(subspec_get_model_info(e, &ni.known) == SUBSPEC_STATUS_OK &&
              ni.known.struct_size == sizeof(subspec_model_info) && ni.newer_field == 42 &&
              ni.known.vocab_size == 128,
          "newer info: struct_size %zu, tail %llu", ni.known.struct_size, (unsigned long long)ni.newer_field);
    subspec_sequence_free(s);
    subspec_free(e);
}

/* The draft options the Rust API has: an own quantized lm_head costs memory and is
 * reported; the layer choice is honoured; adaptive depth is accepted; the output stays
 * the Rust engine's plain greedy decoding, token for token. */
static void test_draft_options(const char *tiny) {
    ids_t prompt, want, got;
    read_fixture("tiny", "prompt", &prompt, NULL, 0);
    read_fixture("tiny", "greedy", &want, NULL, 0);
    subspec_load_params p = load_defaults();
    p.model_path = tiny;
    p.context_length = 256;
    uint64_t shared = 0, own = 0;
    subspec_minimum_budget(&p, &shared);
    p.quantize_lm_head = true;
    CHECK(subspec_minimum_budget(&p, &own) == SUBSPEC_STATUS_OK && own > shared,
          "quantized lm_head: minimum %llu vs %llu", (unsigned long long)own, (unsigned long long)shared);

    uint32_t one[1] = {1}, twice[2] = {0, 0};
    uint64_t budget = 0;
    for (int variant = 0; variant < 4; variant++) {
        p = load_defaults();
        p.model_path = tiny;
        p.context_length = 256;
        if (variant == 0) p.quantize_lm_head = true;
        if (variant == 1) {
            p.substitute_all_layers = false;
            subspec_minimum_budget(&p, &budget);
            p.memory_budget = budget;
        }
        if (variant == 2) {
            p.substitute_layers = one;
            p.n_substitute_layers = 1;
        }
        if (variant == 3) {
            p.quantize_lm_head = true;
            subspec_minimum_budget(&p, &budget);
            p.memory_budget = budget;
        }
        subspec_engine *e = NULL;
        if (subspec_load(&p, &e) != SUBSPEC_STATUS_OK) {
            CHECK(0, "variant %d: %s", variant, last_error(NULL));
            continue;
        }
        subspec_model_info info = {.struct_size = sizeof info};
        subspec_get_model_info(e, &info);
        CHECK(info.has_draft && info.draft_bytes > 0 &&
                  (variant == 0 || variant == 3 ? info.draft_lm_head_bytes > 0 : info.draft_lm_head_bytes == 0),
              "variant %d: draft %llu bytes, lm_head %llu", variant, (unsigned long long)info.draft_bytes,
              (unsigned long long)info.draft_lm_head_bytes);
        if (variant == 1)
            CHECK(info.n_offloaded_layers >= 1 && info.n_substitute_layers == info.n_offloaded_layers,
                  "offloaded only: %u substitutes, %u offloaded", info.n_substitute_layers, info.n_offloaded_layers);
        if (variant == 2) CHECK(info.n_substitute_layers == 1, "one layer: %u", info.n_substitute_layers);
        if (variant == 0) CHECK(info.n_substitute_layers == 2, "all layers: %u", info.n_substitute_layers);
        for (int adaptive = 0; adaptive <= 1; adaptive++) {
            subspec_step_params sp;
            SUBSPEC_ENGINE_STEP_PARAMS_INIT(e, &sp);
            sp.adaptive_depth = adaptive;
            subspec_sequence *s = NULL;
            subspec_sequence_create(e, &s);
            CHECK(generate(e, s, &sp, &prompt, 32, &got) == SUBSPEC_STATUS_OK && same(&got, &want),
                  "variant %d adaptive %d: %zu tokens: %s", variant, adaptive, got.n, last_error(NULL));
            subspec_sequence_free(s);
        }
        subspec_free(e);
    }

    p = load_defaults();
    p.model_path = tiny;
    subspec_engine *e = (subspec_engine *)0x1;
    p.substitute_layers = twice;
    p.n_substitute_layers = 2;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "layer 0 twice");
    one[0] = 9;
    p.substitute_layers = one;
    p.n_substitute_layers = 1;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_INVALID_ARGUMENT, "layer 9");
    p.substitute_layers = NULL;
    CHECK_STATUS(subspec_load(&p, &e), SUBSPEC_STATUS_NULL_POINTER, "params->substitute_layers");
    CHECK(e == (subspec_engine *)0x1, "out written on failure");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR [--tiny-only]\n", argv[0]);
        return 2;
    }
    snprintf(fixture_dir, sizeof fixture_dir, "%s", argv[1]);
    int tiny_only = argc > 2 && strcmp(argv[2], "--tiny-only") == 0;
    char tiny[1100];
    snprintf(tiny, sizeof tiny, "%s/tiny", fixture_dir);

    test_version_and_strings();
    test_load_errors(tiny);
    test_callbacks(tiny);
    subspec_engine *e = load(tiny, 256, 2);
    test_null_pointers(e);
    test_metadata_tiny(e);
    test_generation(e, "tiny", NULL);
    test_sequence_errors(e, "tiny");
    test_host_sampling(e, "tiny");
    test_threads(e, "tiny");
    subspec_free(e);
    test_context_full(tiny);
    test_minimum_budget(tiny);
    test_max_sequences(tiny);
    test_struct_sizes(tiny);
    test_draft_options(tiny);

    if (!tiny_only) {
        char path[1200], line[2048];
        ids_t dummy, prompt, got;
        read_fixture("smollm2", "model", &dummy, line, sizeof line);
        read_fixture("smollm2", "prompt", &prompt, NULL, 0);
        e = load(line, 256, 0);
        test_tokenizer_smollm2(e, &prompt);
        test_generation(e, "smollm2", &got);
        test_threads(e, "smollm2");
        subspec_free(e);
        snprintf(path, sizeof path, "%s/c-smollm2.out", fixture_dir);
        FILE *f = fopen(path, "w");
        for (size_t i = 0; i < got.n; i++) fprintf(f, "%s%d", i ? " " : "", got.ids[i]);
        fprintf(f, "\n");
        fclose(f);
    }
    printf("c: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
