// Tokens/s and tau through the llama.cpp adapter, side by side with llama.cpp's own CPU
// decoding of the same GGUF, in one run (bench/llama-cpp-adapter.sh builds and runs it):
//   llama.cpp   llama_decode + the sampler, the whole model resident (mmap)
//   adapter     subspec decoding with the same llama.cpp sampler: resident, and offloaded
//               to --budget MiB; plain (one target pass per token) and speculative
// Two samplers: greedy, and a typical chain (top-p 0.9, temperature 0.7, dist(seed)).
// Each request is a chat prompt from bench/prompts.jsonl rendered with the model's
// template, then `-n` new tokens; tokens/s = new tokens / wall time of the request
// (prompt included), summed over the requests.
//
//   bench -m model.gguf --prompts bench/prompts.jsonl [-n 64] [--requests 4] [--budget 720]
//         [--threads 2] [--ctx 2048]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "subspec_llama.hpp"

using Tokens = std::vector<llama_token>;
using Clock = std::chrono::steady_clock;

static llama_sampler *make_sampler(bool greedy, uint32_t seed) {
    llama_sampler *c = llama_sampler_chain_init(llama_sampler_chain_default_params());
    if (greedy) {
        llama_sampler_chain_add(c, llama_sampler_init_greedy());
    } else {
        llama_sampler_chain_add(c, llama_sampler_init_top_p(0.9f, 1));
        llama_sampler_chain_add(c, llama_sampler_init_temp(0.7f));
        llama_sampler_chain_add(c, llama_sampler_init_dist(seed));
    }
    return c;
}

struct Result {
    size_t tokens = 0;
    double seconds = 0, tau_sum = 0;
    int runs = 0;
};

static Tokens llama_generate(llama_context *ctx, const llama_vocab *vocab, const Tokens &prompt, llama_sampler *smpl,
                             size_t n) {
    llama_memory_clear(llama_get_memory(ctx), true);
    Tokens out, next = prompt;
    while (out.size() < n) {
        if (llama_decode(ctx, llama_batch_get_one(next.data(), static_cast<int32_t>(next.size()))) != 0) break;
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        out.push_back(t);
        if (llama_vocab_is_eog(vocab, t)) break;
        next = {t};
    }
    return out;
}

int main(int argc, char **argv) {
    std::string model, prompts_file = "bench/prompts.jsonl";
    size_t n = 64, requests = 4;
    uint64_t budget = 720;
    int threads = 2;
    uint32_t n_ctx = 2048;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : nullptr;
        if (a == "-m" && v) model = argv[++i];
        else if (a == "--prompts" && v) prompts_file = argv[++i];
        else if (a == "-n" && v) n = std::stoul(argv[++i]);
        else if (a == "--requests" && v) requests = std::stoul(argv[++i]);
        else if (a == "--budget" && v) budget = std::stoull(argv[++i]);
        else if (a == "--threads" && v) threads = std::stoi(argv[++i]);
        else if (a == "--ctx" && v) n_ctx = static_cast<uint32_t>(std::stoul(argv[++i]));
        else {
            std::fprintf(stderr, "usage: %s -m model.gguf [--prompts F] [-n N] [--requests R] [--budget MiB] [--threads T] [--ctx N]\n", argv[0]);
            return 2;
        }
    }
    if (model.empty()) {
        std::fprintf(stderr, "%s: -m model.gguf is required\n", argv[0]);
        return 2;
    }
    llama_log_set([](ggml_log_level level, const char *text, void *) {
        if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
    }, nullptr);
    llama_backend_init();

    std::vector<std::string> texts;
    {
        std::ifstream f(prompts_file);
        std::string line;
        std::vector<std::string> all;
        while (std::getline(f, line))
            if (!line.empty()) all.push_back(nlohmann::json::parse(line)["prompt"].get<std::string>());
        if (all.empty()) {
            std::fprintf(stderr, "%s: no prompts in %s\n", argv[0], prompts_file.c_str());
            return 1;
        }
        for (size_t r = 0; r < requests; r++) texts.push_back(all[r * all.size() / requests]);
    }

    try {
        auto params = [&] { return subspec::LoadParams(model).threads(threads).context_length(n_ctx); };
        auto resident = subspec_llama::Adapter::load(params());
        auto offloaded = subspec_llama::Adapter::load(params().memory_budget(budget << 20));
        std::vector<Tokens> prompts;
        for (const std::string &t : texts)
            prompts.push_back(resident.tokenize(resident.apply_chat_template({{"user", t}}, true), false));

        llama_model_params mp = llama_model_default_params();
        mp.n_gpu_layers = 0;
        llama_model *lm = llama_model_load_from_file(model.c_str(), mp);
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = n_ctx;
        cp.n_batch = n_ctx;
        cp.n_threads = cp.n_threads_batch = threads;
        llama_context *ctx = lm ? llama_init_from_model(lm, cp) : nullptr;
        if (!ctx) {
            std::fprintf(stderr, "%s: llama.cpp could not load %s\n", argv[0], model.c_str());
            return 1;
        }
        subspec_model_info oi = offloaded.engine().info();
        std::printf("model %s, %zu requests x %zu new tokens, %d threads; offloaded: %u of %u layers at %llu MiB\n\n",
                    model.c_str(), prompts.size(), n, threads, oi.n_offloaded_layers, oi.n_layers,
                    static_cast<unsigned long long>(budget));
        std::printf("| sampler | decoder | tok/s | tau | vs llama.cpp | vs plain, same placement |\n");
        std::printf("|---|---|---|---|---|---|\n");
        for (bool greedy : {true, false}) {
            Result base;
            for (size_t r = 0; r < prompts.size(); r++) {
                llama_sampler *s = make_sampler(greedy, 1000 + static_cast<uint32_t>(r));
                auto t0 = Clock::now();
                base.tokens += llama_generate(ctx, resident.vocab(), prompts[r], s, n).size();
                base.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
                llama_sampler_free(s);
            }
            const char *sname = greedy ? "greedy" : "top-p 0.9, temp 0.7";
            const double base_tps = base.tokens / base.seconds;
            std::printf("| %s | llama.cpp (resident) | %.2f | | 1.00x | |\n", sname, base_tps);
            for (auto *a : {&resident, &offloaded}) {
                double plain_tps = 0;
                for (bool spec : {false, true}) {
                    Result res;
                    for (size_t r = 0; r < prompts.size(); r++) {
                        llama_sampler *s = make_sampler(greedy, 1000 + static_cast<uint32_t>(r));
                        subspec_llama::Session sess = a->new_session();
                        sess.speculate(spec);
                        auto t0 = Clock::now();
                        res.tokens += sess.generate(prompts[r], s, n).size();
                        res.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
                        res.tau_sum += sess.stats().tau;
                        res.runs++;
                        llama_sampler_free(s);
                    }
                    const double tps = res.tokens / res.seconds;
                    if (!spec) plain_tps = tps;
                    char tau[32] = "";
                    if (spec) std::snprintf(tau, sizeof tau, "%.2f", res.tau_sum / res.runs);
                    char vs_plain[32] = "";
                    if (spec) std::snprintf(vs_plain, sizeof vs_plain, "%.2fx", tps / plain_tps);
                    std::printf("| %s | adapter, %s, %s | %.2f | %s | %.2fx | %s |\n", sname,
                                a == &resident ? "resident" : "offloaded", spec ? "speculative" : "plain", tps, tau,
                                tps / base_tps, vs_plain);
                    std::fflush(stdout);
                }
            }
        }
        llama_free(ctx);
        llama_model_free(lm);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s: error: %s\n", argv[0], e.what());
        return 1;
    }
    llama_backend_free();
    return 0;
}
