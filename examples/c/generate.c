/*
 * The C ABI in one page: load SmolLM2 with its 4-bit substitute draft, step a chat prompt
 * (token ids written in from SmolLM2's tokenizer) to completion, print the ids, the text
 * and tau (tokens per target pass).
 *
 *   cc examples/c/generate.c $(pkg-config --cflags --libs subspec) -o generate
 *   ./generate models/smollm2-135m-instruct
 */
#include <stdio.h>

#include "subspec.h"

/* "<|im_start|>user\nWhat are the three primary colours?<|im_end|>\n<|im_start|>assistant\n" */
static const int32_t PROMPT[] = {1, 4093, 198, 1780, 359, 260, 1296, 3003, 14797, 47, 2, 198, 1, 520, 9531, 198};

static int fail(const char *what) {
    char msg[512];
    subspec_last_error(NULL, msg, sizeof msg, NULL);
    fprintf(stderr, "%s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv) {
    subspec_load_params lp;
    SUBSPEC_LOAD_PARAMS_INIT(&lp); /* the library's defaults: CPU, 4-bit HQQ draft */
    lp.model_path = argc > 1 ? argv[1] : "models/smollm2-135m-instruct";
    lp.context_length = 1024;
    subspec_engine *engine = NULL;
    if (subspec_load(&lp, &engine) != SUBSPEC_STATUS_OK) return fail("load");

    subspec_sequence *seq = NULL;
    if (subspec_sequence_create(engine, &seq) != SUBSPEC_STATUS_OK) return fail("sequence");
    subspec_step_params sp;
    SUBSPEC_ENGINE_STEP_PARAMS_INIT(engine, &sp); /* greedy, speculative, the engine's tree */

    int32_t out[256];
    size_t total = 0, n = 0, max_new = 128;
    const int32_t *input = PROMPT;
    size_t n_input = sizeof PROMPT / sizeof PROMPT[0];
    int done = 0;
    while (!done && total < max_new) {
        if (subspec_step(seq, &sp, input, n_input, out + total, max_new - total, &n) != SUBSPEC_STATUS_OK)
            return fail("step");
        input = NULL, n_input = 0; /* the prompt goes in once; new tokens are already appended */
        for (size_t i = total; i < total + n; i++) done |= subspec_is_eos(engine, out[i]);
        total += n;
    }

    printf("ids:");
    for (size_t i = 0; i < total; i++) printf(" %d", out[i]);
    char text[4096];
    if (subspec_detokenize(engine, out, total, text, sizeof text, NULL) == SUBSPEC_STATUS_OK)
        printf("\ntext: %s\n", text);
    subspec_sequence_stats st = {.struct_size = sizeof st};
    subspec_sequence_get_stats(seq, &st);
    printf("%llu tokens in %llu target passes: tau %.2f\n", (unsigned long long)st.generated,
           (unsigned long long)st.iterations, st.tau);

    subspec_sequence_free(seq);
    subspec_free(engine);
    return 0;
}
