// Tests of the C++ wrapper: RAII, exceptions with status codes, and generation equal to the
// Rust engine's (fixtures from `cargo test --test ffi`).
//
//   test FIXTURE_DIR
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "subspec.hpp"

static int passed, failed;
#define CHECK(cond)                                                    \
    do {                                                               \
        if (cond) {                                                    \
            passed++;                                                  \
        } else {                                                       \
            failed++;                                                  \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                              \
    } while (0)

static std::map<std::string, std::string> fixture(const std::string &dir, const std::string &model) {
    std::ifstream f(dir + "/" + model + ".expected");
    std::map<std::string, std::string> m;
    std::string line;
    while (std::getline(f, line)) {
        auto colon = line.find(": ");
        if (colon != std::string::npos) m[line.substr(0, colon)] = line.substr(colon + 2);
    }
    return m;
}

static std::vector<int32_t> ids(const std::string &s) {
    std::istringstream in(s);
    std::vector<int32_t> v;
    int32_t t;
    while (in >> t) v.push_back(t);
    return v;
}

template <class F>
static subspec_status status_of(F f) {
    try {
        f();
    } catch (const subspec::Error &e) {
        return e.status();
    }
    return SUBSPEC_STATUS_OK;
}

static void test_model(const std::string &dir, const std::string &name, std::string path) {
    auto want = fixture(dir, name);
    if (path.empty()) path = want["model"];
    auto prompt = ids(want["prompt"]);
    auto engine = subspec::Engine::load(subspec::LoadParams(path).context_length(256).threads(2));
    auto sampled = subspec::StepParams().temperature(0.8f).top_k(40).top_p(0.95f).seed(7);

    auto seq = engine.new_sequence();
    auto out = seq.generate(prompt, subspec::StepParams(), 32);
    CHECK(out == ids(want["greedy"]));
    CHECK(seq.tokens().size() == prompt.size() + out.size());
    CHECK(seq.stats().tau >= 1.0);
    std::printf("cpp %s: %zu tokens, tau %.2f\n", name.c_str(), out.size(), seq.stats().tau);

    seq.reset();
    CHECK(seq.stats().iterations == 0);
    CHECK(seq.generate(prompt, sampled.speculate(false), 32) == ids(want["sampled"]));
    seq.truncate(prompt.size());
    CHECK(seq.generate({}, sampled.speculate(true), 32) == ids(want["sampled"]));

    // Errors: the sequence is unchanged.
    size_t len = seq.tokens().size();
    CHECK(status_of([&] { seq.step({-3}); }) == SUBSPEC_STATUS_INVALID_TOKEN);
    CHECK(status_of([&] { seq.step({1}, subspec::StepParams().top_p(0.0f)); }) == SUBSPEC_STATUS_INVALID_ARGUMENT);
    CHECK(seq.tokens().size() == len);
    try {
        seq.step({1 << 30});
        CHECK(false);
    } catch (const subspec::Error &e) {
        CHECK(std::string(e.what()).find("out of range") != std::string::npos);
    }

    // Sequences on threads, and a sequence that outlives its engine (moved out of scope).
    std::vector<std::vector<int32_t>> outs(3);
    std::vector<std::thread> th;
    for (int i = 0; i < 3; i++)
        th.emplace_back([&, i] { outs[i] = engine.new_sequence().generate(prompt, subspec::StepParams(), 32); });
    for (auto &t : th) t.join();
    for (auto &o : outs) CHECK(o == ids(want["greedy"]));
    // A draft over the first half of the vocabulary: lossless; past it: refused.
    uint32_t vocab = engine.info().vocab_size;
    auto half = subspec::Engine::load(
        subspec::LoadParams(path).context_length(256).draft_vocab(vocab / 2).draft_shortlist(SUBSPEC_SHORTLIST_NONE));
    CHECK(half.info().draft_lm_head_bytes == 0);
    CHECK(half.new_sequence().generate(prompt, subspec::StepParams(), 32) == ids(want["greedy"]));
    // A ranking head of 32 tokens at 2 bits: its own bytes, lossless.
    auto ranked = subspec::Engine::load(
        subspec::LoadParams(path).context_length(256).draft_shortlist(32).draft_head_bits(2));
    CHECK(ranked.info().draft_lm_head_bytes > 0);
    CHECK(ranked.new_sequence().generate(prompt, subspec::StepParams(), 32) == ids(want["greedy"]));
    CHECK(status_of([&] {
              subspec::Engine::load(subspec::LoadParams(path).context_length(256).draft_vocab(vocab + 1));
          }) == SUBSPEC_STATUS_INVALID_ARGUMENT);
    // The KV cache's type: f32 plans more than the default f16; with each type
    // speculative decoding equals plain decoding; an unknown type is refused.
    auto kv = [&](uint32_t t) { return subspec::LoadParams(path).context_length(256).kv_dtype(t); };
    CHECK(kv(SUBSPEC_KV_F32).minimum_budget() > kv(SUBSPEC_KV_DEFAULT).minimum_budget());
    for (uint32_t t : {SUBSPEC_KV_F32, SUBSPEC_KV_BF16}) {
        auto e = subspec::Engine::load(kv(t));
        auto spec = e.new_sequence().generate(prompt, subspec::StepParams(), 32);
        CHECK(!spec.empty());
        CHECK(e.new_sequence().generate(prompt, subspec::StepParams().speculate(false), 32) == spec);
    }
    CHECK(status_of([&] { subspec::Engine::load(kv(7)); }) == SUBSPEC_STATUS_INVALID_ARGUMENT);
    subspec::Sequence kept = engine.new_sequence();
    { subspec::Engine gone = std::move(engine); }
    CHECK(kept.generate(prompt, subspec::StepParams(), 4).size() >= 1);
}

// Engine::step_batch: sequences stepped together (greedy speculative, seeded sampling and
// plain mixed, leaving the batch when done) get exactly what each gets alone through
// step(); a bad item fails alone and is unchanged while the others step; a malformed call
// throws and changes nothing. `other`: an engine whose sequence the batch must refuse.
static void test_batch(const subspec::Engine &e, const std::vector<int32_t> &prompt, const std::string &name,
                       const subspec::Engine *other = nullptr) {
    const size_t N = 12, cap = 5;
    std::vector<std::vector<int32_t>> prompts = {prompt, std::vector<int32_t>(prompt.rbegin(), prompt.rend()),
                                                 std::vector<int32_t>(prompt.begin() + 1, prompt.end())};
    std::vector<subspec::StepParams> params = {
        subspec::StepParams(),                                                     // greedy, speculative
        subspec::StepParams().temperature(0.8f).top_k(40).top_p(0.95f).seed(11),  // seeded sampling
        subspec::StepParams().speculate(false)};                                   // plain
    std::vector<subspec::Sequence> solo, seqs;
    std::vector<std::vector<int32_t>> want(3), got(3);
    for (size_t i = 0; i < 3; i++) {
        solo.push_back(e.new_sequence());
        std::vector<int32_t> input = prompts[i];
        while (want[i].size() < N) {
            auto t = solo[i].step(input, params[i], cap);
            want[i].insert(want[i].end(), t.begin(), t.end());
            input.clear();
        }
        seqs.push_back(e.new_sequence());
    }
    int calls = 0;
    for (;;) {
        std::vector<subspec::BatchItem> items;
        std::vector<size_t> who;
        for (size_t i = 0; i < 3; i++)
            if (got[i].size() < N) {
                items.push_back({&seqs[i], got[i].empty() ? prompts[i] : std::vector<int32_t>(), params[i]});
                who.push_back(i);
            }
        if (items.empty()) break;
        auto r = e.step_batch(items, cap);
        calls++;
        CHECK(r.size() == items.size());
        for (size_t k = 0; k < r.size() && k < who.size(); k++) {
            CHECK(r[k].ok() && r[k].message.empty() && !r[k].tokens.empty() && r[k].tokens.size() <= cap);
            got[who[k]].insert(got[who[k]].end(), r[k].tokens.begin(), r[k].tokens.end());
        }
    }
    // The same tokens; not always cut the same (a batch runs a step with a new prompt
    // plain and speculates from the next), so the first N are compared.
    for (size_t i = 0; i < 3; i++) {
        CHECK(got[i].size() >= N && want[i].size() >= N && std::equal(want[i].begin(), want[i].begin() + N, got[i].begin()));
        CHECK(seqs[i].length() == prompts[i].size() + got[i].size());
        seqs[i].truncate(prompts[i].size() + N);  // each at its solo twin's point
        solo[i].truncate(prompts[i].size() + N);
    }
    std::printf("cpp %s step_batch: 3 sequences x %zu tokens in %d calls == solo steps\n", name.c_str(), N, calls);

    // One bad item (an out-of-vocabulary id) fails alone and is unchanged; the others step,
    // each exactly as its solo twin does.
    auto d = e.new_sequence();
    d.step(prompts[0], params[2], 1);
    const auto d_tokens = d.tokens();
    std::vector<size_t> lens;
    for (auto &s : seqs) lens.push_back(s.length());
    auto r = e.step_batch({{&seqs[0], {}, params[0]},
                           {&d, {prompt[0], 1 << 30}, params[2]},
                           {&seqs[1], {}, params[1]},
                           {&seqs[2], {prompt[1]}, params[2]}},
                          cap);
    CHECK(r.size() == 4);
    if (r.size() == 4) {
        CHECK(r[1].status == SUBSPEC_STATUS_INVALID_TOKEN && r[1].tokens.empty());
        CHECK(r[1].message.find("out of range") != std::string::npos);
        CHECK(status_of([&] { r[1].check(); }) == SUBSPEC_STATUS_INVALID_TOKEN);
        CHECK(d.tokens() == d_tokens);
        CHECK(r[0].ok() && r[2].ok() && r[3].ok());
        CHECK(status_of([&] { r[0].check(); }) == SUBSPEC_STATUS_OK);
        CHECK(r[0].tokens == solo[0].step({}, params[0], cap));
        CHECK(r[2].tokens == solo[1].step({}, params[1], cap));
        CHECK(r[3].tokens == solo[2].step({prompt[1]}, params[2], cap));
        CHECK(seqs[0].length() == lens[0] + r[0].tokens.size());
        CHECK(seqs[1].length() == lens[1] + r[2].tokens.size());
        CHECK(seqs[2].length() == lens[2] + 1 + r[3].tokens.size());
    }
    // Two bad items: each its own status and its own message, both unchanged.
    for (size_t i = 0; i < 3; i++) lens[i] = seqs[i].length();
    r = e.step_batch({{&d, {-3}, params[0]},
                      {&seqs[0], {}, subspec::StepParams().top_p(0.0f)},
                      {&seqs[1], {}, params[1]}},
                     cap);
    CHECK(r.size() == 3);
    if (r.size() == 3) {
        CHECK(r[0].status == SUBSPEC_STATUS_INVALID_TOKEN && r[0].message.find("-3") != std::string::npos);
        CHECK(r[1].status == SUBSPEC_STATUS_INVALID_ARGUMENT && r[1].message.find("top_p") != std::string::npos &&
              r[1].tokens.empty());
        CHECK(r[2].ok() && seqs[1].length() == lens[1] + r[2].tokens.size());
    }
    CHECK(d.tokens() == d_tokens && seqs[0].length() == lens[0]);
    CHECK(d.step({}, params[2], 1).size() == 1);

    // The call as a whole refused: it throws, and no sequence changed.
    for (size_t i = 0; i < 3; i++) lens[i] = seqs[i].length();
    try {
        e.step_batch({{&seqs[0], {prompt[0]}, params[2]}, {&seqs[0], {}, params[2]}}, cap);
        CHECK(false);
    } catch (const subspec::Error &err) {
        CHECK(err.status() == SUBSPEC_STATUS_INVALID_ARGUMENT);
        CHECK(std::string(err.what()).find("twice") != std::string::npos);
    }
    CHECK(status_of([&] { e.step_batch({{&seqs[1], {prompt[0]}, params[2]}, {nullptr, {}, params[2]}}, cap); }) ==
          SUBSPEC_STATUS_NULL_POINTER);
    subspec::Sequence moved = std::move(d);
    CHECK(status_of([&] { e.step_batch({{&seqs[1], {}, params[2]}, {&d, {}, params[2]}}, cap); }) ==
          SUBSPEC_STATUS_NULL_POINTER);
    CHECK(status_of([&] { e.step_batch({{&seqs[2], {prompt[0]}, params[2]}}, 0); }) ==
          SUBSPEC_STATUS_BUFFER_TOO_SMALL);
    if (other) {
        auto foreign = other->new_sequence();
        CHECK(status_of([&] { e.step_batch({{&seqs[0], {}, params[2]}, {&foreign, prompt, params[2]}}, cap); }) ==
              SUBSPEC_STATUS_INVALID_ARGUMENT);
        CHECK(foreign.length() == 0);
    }
    for (size_t i = 0; i < 3; i++) CHECK(seqs[i].length() == lens[i]);
    CHECK(e.step_batch({}, cap).empty());
    CHECK(moved.step({}, params[2], 1).size() == 1);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    std::string dir = argv[1];
    CHECK(subspec::version() == std::to_string(SUBSPEC_VERSION_MAJOR) + "." +
                                    std::to_string(SUBSPEC_VERSION_MINOR) + "." +
                                    std::to_string(SUBSPEC_VERSION_PATCH));
    CHECK(status_of([] { subspec::Engine::load(subspec::LoadParams("/nonexistent/model")); }) == SUBSPEC_STATUS_IO);
    CHECK(status_of([&] { subspec::Engine::load(subspec::LoadParams(dir + "/tiny").device(0)); }) ==
          SUBSPEC_STATUS_DEVICE_UNAVAILABLE);
    int calls = 0;
    CHECK(status_of([&] {
              subspec::Engine::load(subspec::LoadParams(dir + "/tiny").progress([&](float) { return ++calls < 2; }));
          }) == SUBSPEC_STATUS_ABORTED);
    CHECK(calls == 2);

    CHECK(status_of([&] { subspec::Engine::load(subspec::LoadParams(dir + "/tiny").memory_budget(1)); }) ==
          SUBSPEC_STATUS_OUT_OF_MEMORY);
    {
        // Planned for two sequences: two KV caches in the minimum, a third refused until one goes.
        auto lp = subspec::LoadParams(dir + "/tiny").context_length(256);
        uint64_t one = lp.minimum_budget();
        CHECK(lp.max_sequences(2).minimum_budget() > one);
        auto e = subspec::Engine::load(lp);
        auto a = e.new_sequence();
        {
            auto b = e.new_sequence();
            CHECK(status_of([&] { e.new_sequence(); }) == SUBSPEC_STATUS_OUT_OF_MEMORY);
        }
        auto c = e.new_sequence();
        CHECK(c.length() == 0);
    }
    {
        auto lp = subspec::LoadParams(dir + "/tiny").context_length(256);
        auto e = subspec::Engine::load(lp.memory_budget(lp.minimum_budget()));
        CHECK(e.info().n_offloaded_layers >= 1);
        CHECK(e.new_sequence().generate(ids(fixture(dir, "tiny")["prompt"]), e.step_params(), 32) ==
              ids(fixture(dir, "tiny")["greedy"]));
    }
    {
        // The draft options: an own quantized lm_head costs memory and is reported, the
        // layer choice is honoured, adaptive depth is accepted; the output stays greedy's.
        auto tiny = fixture(dir, "tiny");
        auto lp = subspec::LoadParams(dir + "/tiny").context_length(256);
        uint64_t shared = lp.minimum_budget();
        lp.quantize_lm_head(true);
        CHECK(lp.minimum_budget() > shared);
        auto e = subspec::Engine::load(lp);
        auto i = e.info();
        CHECK(i.draft_lm_head_bytes > 0 && i.draft_bytes > i.draft_lm_head_bytes && i.n_substitute_layers == 2);
        CHECK(i.struct_size == sizeof(subspec_model_info));
        auto sp = e.step_params().adaptive_depth(true);
        CHECK(sp.raw().adaptive_depth && sp.raw().struct_size == sizeof(subspec_step_params));
        CHECK(e.new_sequence().generate(ids(tiny["prompt"]), sp, 32) == ids(tiny["greedy"]));
        auto one = subspec::Engine::load(subspec::LoadParams(dir + "/tiny").substitute_layers({1}));
        CHECK(one.info().n_substitute_layers == 1);
        auto lo = subspec::LoadParams(dir + "/tiny").context_length(256).substitute_all_layers(false);
        auto off = subspec::Engine::load(lo.memory_budget(lo.minimum_budget()));
        CHECK(off.info().n_offloaded_layers >= 1 && off.info().n_substitute_layers == off.info().n_offloaded_layers);
        CHECK(off.new_sequence().generate(ids(tiny["prompt"]), off.step_params().adaptive_depth(true), 32) ==
              ids(tiny["greedy"]));
        CHECK(status_of([&] { subspec::Engine::load(subspec::LoadParams(dir + "/tiny").substitute_layers({0, 0})); }) ==
              SUBSPEC_STATUS_INVALID_ARGUMENT);
        auto st = e.new_sequence().stats();
        CHECK(st.struct_size == sizeof st && st.length == 0);
    }
    {
        // Host-owned sampling: a stateful host sampler (greedy after a repetition penalty
        // on what it has picked) gives the same tokens walking verified trees as over
        // plain eval, offloaded too.
        auto prompt = ids(fixture(dir, "tiny")["prompt"]);
        auto lo = subspec::LoadParams(dir + "/tiny").context_length(256);
        for (uint64_t budget : {uint64_t(0), lo.minimum_budget()}) {
            auto e = subspec::Engine::load(subspec::LoadParams(dir + "/tiny").context_length(256).memory_budget(budget));
            size_t vocab = e.info().vocab_size;
            auto sampler = [](std::vector<int32_t> &seen) {
                return [&seen](const float *l, size_t n) {
                    int32_t best = 0;
                    float vb = 0;
                    for (size_t i = 0; i < n; i++) {
                        float x = l[i];
                        for (int32_t t : seen)
                            if (t == int32_t(i)) x = x > 0 ? x / 1.5f : x * 1.5f;
                        if (i == 0 || x > vb) best = int32_t(i), vb = x;
                    }
                    seen.push_back(best);
                    return best;
                };
            };
            std::vector<int32_t> seen_plain, seen_spec, plain, spec;
            auto pick_plain = sampler(seen_plain);
            auto pick_spec = sampler(seen_spec);
            auto a = e.new_sequence();
            std::vector<int32_t> input = prompt;
            while (plain.size() < 32) {
                auto l = a.eval(input, vocab);
                plain.push_back(pick_plain(l.data(), l.size()));
                input = {plain.back()};
            }
            auto b = e.new_sequence();
            input = prompt;
            while (spec.size() < 32) {
                auto got = b.iter_sample(input, e.step_params(), pick_spec, 32 - spec.size());
                spec.insert(spec.end(), got.begin(), got.end());
                input.clear();
            }
            CHECK(spec == plain);
            CHECK(b.stats().generated == 32);
            // State errors leave the sequence unchanged.
            size_t len = b.tokens().size();
            CHECK(status_of([&] { b.iter_end(); }) == SUBSPEC_STATUS_INVALID_STATE);
            b.iter_begin({}, e.step_params());
            CHECK(status_of([&] { b.step({}); }) == SUBSPEC_STATUS_INVALID_STATE);
            auto top = b.iter_top_logprobs(3);
            CHECK(top.size() == 3 && top[0].second >= top[1].second && top[1].second >= top[2].second);
            b.iter_cancel();
            CHECK(b.tokens().size() == len);
        }
    }
    test_model(dir, "tiny", dir + "/tiny");
    {
        // step_batch, resident and offloaded (the batch streams the offloaded layers once).
        auto prompt = ids(fixture(dir, "tiny")["prompt"]);
        auto lp = subspec::LoadParams(dir + "/tiny").context_length(256).threads(2);
        auto e = subspec::Engine::load(lp);
        auto lo = subspec::LoadParams(dir + "/tiny").context_length(256).threads(2).max_sequences(8);
        auto off = subspec::Engine::load(lo.memory_budget(lo.minimum_budget()));
        CHECK(off.info().n_offloaded_layers >= 1);
        test_batch(e, prompt, "tiny", &off);
        test_batch(off, prompt, "tiny offloaded", &e);
    }
    auto info = subspec::Engine::load(subspec::LoadParams(dir + "/tiny").draft(false)).info();
    CHECK(info.vocab_size == 128 && !info.has_draft);
    if (argc < 3 || std::string(argv[2]) != "--tiny-only") {
        test_model(dir, "smollm2", "");
        test_batch(subspec::Engine::load(subspec::LoadParams(fixture(dir, "smollm2")["model"]).context_length(256).threads(2)),
                   ids(fixture(dir, "smollm2")["prompt"]), "smollm2");
        auto e = subspec::Engine::load(subspec::LoadParams(fixture(dir, "smollm2")["model"]).draft(false));
        auto p = e.tokenize("The three primary colours are");
        CHECK(p == ids(fixture(dir, "smollm2")["prompt"]));
        CHECK(e.detokenize(p) == "The three primary colours are");
        CHECK(e.token_text(p[1]) == "\xc4\xa0three" && e.token_text(2) == "<|im_end|>");
        // An abort from another thread stops a long prefill mid-way; the sequence unchanged.
        subspec::Sequence s = e.new_sequence();
        std::vector<int32_t> longp;
        while (longp.size() < 600) longp.insert(longp.end(), p.begin(), p.end());
        std::thread stopper([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            s.abort();
        });
        bool stopped = false;
        try {
            s.step(longp, subspec::StepParams().speculate(false), 1);
        } catch (const subspec::Error &err) {
            stopped = err.status() == SUBSPEC_STATUS_ABORTED && s.length() == 0;
        }
        stopper.join();
        s.clear_abort();
        CHECK(stopped);
        CHECK(s.step(p, subspec::StepParams().speculate(false), 1).size() == 1);
        CHECK(e.eos_ids().size() >= 1 && e.is_eos(e.eos_ids()[0]));
    }
    std::printf("cpp: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
