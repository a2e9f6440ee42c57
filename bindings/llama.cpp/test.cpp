// The llama.cpp adapter against a real, pinned llama.cpp (scripts/test-llama-cpp.sh builds
// and runs this):
//   vocab     llama.cpp's vocabulary and subspec's agree token for token on every test
//             model; another model's vocabulary, or one token renamed, is refused naming it
//   greedy    llama.cpp's own decoding loop (llama_decode + greedy sampler) on the F16 GGUF
//             and the adapter give the same first 32 tokens on at least 80% of 12 prompts;
//             where they differ, the position and the target's top-2 logit gap are printed
//   lossless  through the adapter, speculative output == plain output token for token for
//             a chain of penalties + DRY + top-k + top-p + min-p + temperature + dist(seed) over
//             several seeds, and for a GBNF JSON grammar chain whose output parses as JSON
//   errors    a NULL sampler, a sampler that selects nothing or an id outside the
//             vocabulary, push after the iteration ended, ending twice, a step while an
//             iteration is open, a full context: each its documented error, the sequence
//             unchanged
//
//   test --f16 SMOLLM2_F16.gguf --renamed RENAMED.gguf [--other OTHER.gguf ...]
//        [--json-grammar FILE] [--errors-only]
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "check.h"  // tests/c: CHECK(cond, fmt, ...) and the counters
#include "subspec_llama.hpp"

using Tokens = std::vector<llama_token>;

/// Runs `f`, which must throw subspec::Error with `status` and a message containing `part`.
template <class F>
static void expect_error(const char *what, subspec_status status, const char *part, F f) {
    try {
        f();
        CHECK(false, "%s: no error", what);
    } catch (const subspec::Error &e) {
        CHECK(e.status() == status && std::strstr(e.what(), part) != nullptr, "%s: status %u (%s), want %u with '%s'",
              what, (unsigned)e.status(), e.what(), (unsigned)status, part);
    }
}

static void quiet_llama_logs() {
    llama_log_set([](ggml_log_level level, const char *text, void *) {
        if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
    }, nullptr);
}

/// A sampler chain: `steps` in order (llama_sampler_chain_add takes ownership).
static llama_sampler *chain(std::initializer_list<llama_sampler *> steps) {
    llama_sampler *c = llama_sampler_chain_init(llama_sampler_chain_default_params());
    for (llama_sampler *s : steps) llama_sampler_chain_add(c, s);
    return c;
}

static const char *PROMPTS[12] = {
    "The three primary colours are",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The capital of France is",
    "To make a cup of tea, first",
    "The best way to learn a new language is",
    "In 1969, the first humans",
    "Water boils at a temperature of",
    "A list of healthy breakfast foods:\n1.",
    "The quick brown fox",
    "Photosynthesis is the process by which",
    "Dear hiring manager, I am writing to",
};

// ---- vocab ----
static void test_vocab(const std::string &path, const std::string &renamed, const std::vector<std::string> &others) {
    {
        auto a = subspec_llama::Adapter::load(subspec::LoadParams(path).draft(false));
        CHECK(llama_vocab_n_tokens(a.vocab()) == (int32_t)a.engine().info().vocab_size, "vocab size");
        // The same ids as llama.cpp's tokenizer for text, and llama.cpp's pieces.
        Tokens t = a.tokenize("The three primary colours are", false);
        CHECK(t == Tokens(a.engine().tokenize("The three primary colours are")), "tokenize agrees with subspec");
        CHECK(a.detokenize(t) == "The three primary colours are", "detokenize: %s", a.detokenize(t).c_str());
        std::string chat = a.apply_chat_template({{"user", "hi"}}, true);
        CHECK(chat.find("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n") != std::string::npos,
              "chat template: %s", chat.c_str());
    }
    for (const std::string &o : others) {
        auto a = subspec_llama::Adapter::load(subspec::LoadParams(o).draft(false));
        std::printf("vocab: %s: %d tokens agree\n", o.c_str(), llama_vocab_n_tokens(a.vocab()));
        passed++;
    }
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    auto engine = [&] { return subspec::Engine::load(subspec::LoadParams(path).draft(false)); };
    if (!renamed.empty()) {
        llama_model *m = llama_model_load_from_file(renamed.c_str(), mp);
        CHECK(m != nullptr, "load %s", renamed.c_str());
        expect_error("one token renamed", SUBSPEC_STATUS_TOKENIZER, "vocabularies differ at token id 1000:",
                     [&] { subspec_llama::Adapter a(m, engine()); });
        llama_model_free(m);
    }
    for (const std::string &o : others) {
        llama_model *m = llama_model_load_from_file(o.c_str(), mp);
        expect_error("another model's vocabulary", SUBSPEC_STATUS_TOKENIZER, "vocabularies differ",
                     [&] { subspec_llama::Adapter a(m, engine()); });
        llama_model_free(m);
    }
    expect_error("a NULL llama_model", SUBSPEC_STATUS_NULL_POINTER, "llama_model is NULL",
                 [&] { subspec_llama::Adapter a(nullptr, engine()); });
    expect_error("a missing file", SUBSPEC_STATUS_TOKENIZER, "could not load the vocabulary",
                 [&] { subspec_llama::Adapter::load(subspec::LoadParams("/nonexistent.gguf")); });
}

// ---- greedy against llama.cpp's own decoding ----
static Tokens llama_greedy(llama_context *ctx, const llama_vocab *vocab, Tokens prompt, size_t n) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_sampler *g = llama_sampler_init_greedy();
    Tokens out;
    Tokens next = prompt;
    while (out.size() < n) {
        if (llama_decode(ctx, llama_batch_get_one(next.data(), (int32_t)next.size())) != 0) {
            CHECK(false, "llama_decode failed");
            break;
        }
        llama_token t = llama_sampler_sample(g, ctx, -1);
        out.push_back(t);
        if (llama_vocab_is_eog(vocab, t)) break;
        next = {t};
    }
    llama_sampler_free(g);
    return out;
}

static void test_greedy(const std::string &path) {
    auto a = subspec_llama::Adapter::load(subspec::LoadParams(path).threads(2));
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(path.c_str(), mp);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = cp.n_threads_batch = 2;
    llama_context *ctx = llama_init_from_model(model, cp);
    CHECK(model && ctx, "llama.cpp loads %s", path.c_str());
    if (!model || !ctx) return;
    const size_t n_vocab = a.engine().info().vocab_size;
    int same = 0;
    for (const char *p : PROMPTS) {
        Tokens prompt = a.tokenize(p, true);
        Tokens theirs = llama_greedy(ctx, a.vocab(), prompt, 32);
        llama_sampler *greedy = chain({llama_sampler_init_greedy()});
        subspec_llama::Session s = a.new_session();
        Tokens ours = s.generate(prompt, greedy, 32);
        llama_sampler_free(greedy);
        if (ours == theirs) {
            same++;
            continue;
        }
        size_t i = 0;
        while (i < ours.size() && i < theirs.size() && ours[i] == theirs[i]) i++;
        Tokens ctx_tokens = prompt;
        ctx_tokens.insert(ctx_tokens.end(), ours.begin(), ours.begin() + i);
        subspec_llama::Session probe = a.new_session();
        std::vector<float> l = probe.sequence().eval(ctx_tokens, n_vocab);
        float top1 = -INFINITY, top2 = -INFINITY;
        for (float v : l) {
            if (v > top1) {
                top2 = top1;
                top1 = v;
            } else if (v > top2) {
                top2 = v;
            }
        }
        std::printf("greedy: \"%s\" differs at generated position %zu: subspec %d, llama.cpp %d; "
                    "the target's top-2 logit gap there is %.4f\n",
                    p, i, i < ours.size() ? ours[i] : -1, i < theirs.size() ? theirs[i] : -1, top1 - top2);
    }
    std::printf("greedy: %d of 12 prompts give the same first 32 tokens as llama.cpp\n", same);
    CHECK(same >= 10, "greedy: only %d of 12 prompts agree with llama.cpp (at least 80%% must)", same);
    llama_free(ctx);
    llama_model_free(model);
}

// ---- lossless for any sampler ----
static Tokens run(subspec_llama::Adapter &a, const Tokens &prompt, bool speculate, llama_sampler *smpl, size_t n,
                  double *tau = nullptr) {
    subspec_llama::Session s = a.new_session();
    s.speculate(speculate);
    Tokens out = s.generate(prompt, smpl, n);
    if (tau) *tau = s.stats().tau;
    llama_sampler_free(smpl);
    return out;
}

static const char *JSON_GRAMMAR = R"(
root   ::= "{" ws "\"name\":" ws string "," ws "\"age\":" ws number "," ws "\"tags\":" ws tags ws "}"
string ::= "\"" [a-zA-Z ]{1,16} "\""
number ::= [1-9] [0-9]{0,2}
tags   ::= "[" ws (string ("," ws string){0,2})? ws "]"
ws     ::= [ ]?
)";

static void test_lossless(const std::string &path, const std::string &json_grammar_file) {
    auto a = subspec_llama::Adapter::load(subspec::LoadParams(path).threads(2));
    const char *prompts[] = {"Once upon a time, in a small village by the sea,", "def fibonacci(n):"};
    const int32_t n_vocab = llama_vocab_n_tokens(a.vocab());
    double tau_sum = 0;
    int runs = 0;
    for (const char *p : prompts) {
        Tokens prompt = a.tokenize(p, true);
        for (uint32_t seed : {1u, 2u, 3u, 42u}) {
            auto make = [&] {
                const char *breakers[] = {"\n", ".", ","};
                return chain({llama_sampler_init_penalties(n_vocab, 64, 1.1f, 0.1f, 0.1f),
                              llama_sampler_init_dry(a.vocab(), 0.8f, 1.75f, 2, 64, breakers, 3),
                              llama_sampler_init_top_k(40),
                              llama_sampler_init_top_p(0.9f, 1), llama_sampler_init_min_p(0.05f, 1),
                              llama_sampler_init_temp(0.8f), llama_sampler_init_dist(seed)});
            };
            double tau = 0;
            Tokens plain = run(a, prompt, false, make(), 48);
            Tokens spec = run(a, prompt, true, make(), 48, &tau);
            tau_sum += tau;
            runs++;
            CHECK(spec == plain && !plain.empty(), "sampling chain, seed %u, \"%s\": speculative (%zu tokens) != plain (%zu)",
                  seed, p, spec.size(), plain.size());
        }
    }
    std::printf("lossless: penalties+DRY+top-k+top-p+min-p+temp+dist, %d runs equal; mean tau %.2f\n", runs,
                tau_sum / runs);
    CHECK(tau_sum / runs > 1.2, "speculation accepted drafts (tau %.2f)", tau_sum / runs);

    // A GBNF grammar: the output is JSON of the grammar's shape.
    std::string chat = a.apply_chat_template(
        {{"user", "Describe a person as JSON with a name, an age and up to three tags."}}, true);
    Tokens prompt = a.tokenize(chat, false);
    for (uint32_t seed : {7u, 8u, 9u}) {
        auto make = [&] {
            return chain({llama_sampler_init_grammar(a.vocab(), JSON_GRAMMAR, "root"), llama_sampler_init_top_k(20),
                          llama_sampler_init_temp(0.7f), llama_sampler_init_dist(seed)});
        };
        Tokens plain = run(a, prompt, false, make(), 96);
        Tokens spec = run(a, prompt, true, make(), 96);
        CHECK(spec == plain, "grammar, seed %u: speculative != plain", seed);
        Tokens body = spec;
        if (!body.empty() && a.is_eog(body.back())) body.pop_back();
        std::string text = a.detokenize(body, false);
        bool ok = false;
        try {
            nlohmann::json j = nlohmann::json::parse(text);
            ok = j.is_object() && j["name"].is_string() && j["age"].is_number_integer() && j["tags"].is_array();
        } catch (const std::exception &) {
        }
        CHECK(ok, "grammar, seed %u: not the grammar's JSON: %s", seed, text.c_str());
        std::printf("grammar (seed %u): %s\n", seed, text.c_str());
    }
    // llama.cpp's own json.gbnf, greedy: speculative == plain.
    if (!json_grammar_file.empty()) {
        std::ifstream f(json_grammar_file);
        std::stringstream ss;
        ss << f.rdbuf();
        std::string g = ss.str();
        CHECK(!g.empty(), "read %s", json_grammar_file.c_str());
        auto make = [&] { return chain({llama_sampler_init_grammar(a.vocab(), g.c_str(), "root"), llama_sampler_init_greedy()}); };
        Tokens plain = run(a, prompt, false, make(), 64);
        Tokens spec = run(a, prompt, true, make(), 64);
        CHECK(spec == plain && !plain.empty(), "json.gbnf greedy: speculative != plain");
    }
}

// ---- errors ----
struct Foreign {
    int accepted = 0;
    bool out_of_vocab = false;
};
static llama_sampler_i foreign_iface() {
    llama_sampler_i i{};
    i.name = [](const llama_sampler *) { return "foreign"; };
    i.accept = [](llama_sampler *s, llama_token) { static_cast<Foreign *>(s->ctx)->accepted++; };
    i.apply = [](llama_sampler *s, llama_token_data_array *cur) {
        if (static_cast<Foreign *>(s->ctx)->out_of_vocab) {  // a bogus id, selected
            cur->data[0].id = 1 << 30;
            cur->selected = 0;
        }  // otherwise: selects nothing
    };
    return i;
}

static void test_errors(const std::string &path) {
    auto a = subspec_llama::Adapter::load(subspec::LoadParams(path).threads(2).context_length(64));
    subspec_llama::Session s = a.new_session();
    llama_sampler *greedy = chain({llama_sampler_init_greedy()});
    Tokens prompt = a.tokenize("The three primary colours are", true);
    s.generate(prompt, greedy, 4);
    const Tokens before = s.tokens();
    auto unchanged = [&](const char *what) {
        CHECK(s.tokens() == before, "%s: the sequence changed", what);
        CHECK(s.step({}, greedy, 1).tokens.size() == 1, "%s: the sequence steps on", what);
        s.truncate(before.size());
    };

    expect_error("NULL sampler", SUBSPEC_STATUS_NULL_POINTER, "sampler is NULL", [&] { s.step({}, nullptr); });
    unchanged("NULL sampler");

    llama_sampler_i iface = foreign_iface();
    Foreign state;
    llama_sampler *foreign = llama_sampler_init(&iface, &state);
    expect_error("a sampler that selects nothing", SUBSPEC_STATUS_INVALID_ARGUMENT, "selected no candidate",
                 [&] { s.step({}, foreign); });
    CHECK(state.accepted == 0, "nothing accepted");
    unchanged("a sampler that selects nothing");
    state.out_of_vocab = true;
    expect_error("a sampler that selects a bogus id", SUBSPEC_STATUS_INVALID_TOKEN, "outside the vocabulary",
                 [&] { s.step({}, foreign); });
    CHECK(state.accepted == 0, "nothing accepted");
    unchanged("a sampler that selects a bogus id");
    llama_sampler_free(foreign);

    // The iteration protocol, through the sequence: push after the end, end twice, a step
    // while an iteration is open, a bad token pushed.
    subspec::Sequence &q = s.sequence();
    q.iter_begin({}, s.params());
    expect_error("a step while an iteration is open", SUBSPEC_STATUS_INVALID_STATE, "iteration",
                 [&] { s.step({}, greedy); });
    expect_error("a bad token pushed", SUBSPEC_STATUS_INVALID_TOKEN, "vocabulary", [&] { q.iter_push(1 << 30); });
    q.iter_cancel();
    unchanged("a step while an iteration is open");
    subspec::StepParams plain = s.params();
    q.iter_begin({}, plain.speculate(false));
    bool more = q.iter_push(before.back() == 0 ? 1 : 0);
    CHECK(!more, "a plain iteration ends after one token");
    expect_error("a push after the iteration ended", SUBSPEC_STATUS_INVALID_STATE, "ended", [&] { q.iter_push(1); });
    CHECK(q.iter_end() == 1, "end");
    expect_error("ending twice", SUBSPEC_STATUS_INVALID_STATE, "no host-sampled", [&] { q.iter_end(); });
    CHECK(s.tokens().size() == before.size() + 1, "the pushed token was committed");
    s.truncate(before.size());
    unchanged("ending twice");

    // A full context (64 tokens): generation stops there, and a step says so.
    s.reset();
    s.generate(Tokens(60, prompt.back()), greedy, 100);
    CHECK(s.length() == 64, "generation stops at the context length: %zu", s.length());
    expect_error("a step at a full context", SUBSPEC_STATUS_CONTEXT_FULL, "context", [&] { s.step({}, greedy); });
    CHECK(s.length() == 64, "unchanged at full context");
    s.reset();
    Tokens long_prompt(64, prompt[0]);
    expect_error("a prompt that fills the context", SUBSPEC_STATUS_CONTEXT_FULL, "context",
                 [&] { s.step(long_prompt, greedy); });
    CHECK(s.length() == 0, "unchanged after a too-long prompt");

    // on_token stops mid-iteration; the sequence keeps what it saw.
    size_t seen = 0;
    Tokens out = s.generate(prompt, greedy, 20, [&](llama_token) { return ++seen < 3; });
    CHECK(out.size() == 3 && s.length() == prompt.size() + 3, "on_token stop: %zu tokens, length %zu", out.size(),
          s.length());
    llama_sampler_free(greedy);
}

int main(int argc, char **argv) {
    std::string f16, renamed, grammar;
    std::vector<std::string> others;
    bool errors_only = false;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (arg == "--f16") f16 = next();
        else if (arg == "--renamed") renamed = next();
        else if (arg == "--other") others.push_back(next());
        else if (arg == "--json-grammar") grammar = next();
        else if (arg == "--errors-only") errors_only = true;
        else {
            std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
            return 2;
        }
    }
    if (f16.empty()) {
        std::fprintf(stderr, "usage: %s --f16 SMOLLM2_F16.gguf [--renamed F] [--other F]... [--json-grammar F] [--errors-only]\n", argv[0]);
        return 2;
    }
    quiet_llama_logs();
    llama_backend_init();
    try {
        test_errors(f16);
        if (!errors_only) {
            test_vocab(f16, renamed, others);
            test_greedy(f16);
            test_lossless(f16, grammar);
        }
    } catch (const std::exception &e) {
        CHECK(false, "uncaught: %s", e.what());
    }
    llama_backend_free();
    std::printf("llama.cpp adapter: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
