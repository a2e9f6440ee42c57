// llama.cpp's `simple` example, decoding through subspec: llama.cpp tokenizes, renders
// the pieces and samples (greedy, as in `simple`); subspec runs the model, offloaded to
// the memory budget, speculatively.
//
//   simple -m model.gguf [-n n_predict] [--budget MiB] [--plain] [prompt]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "subspec_llama.hpp"

static void print_usage(int, char **argv) {
    std::printf("\nexample usage:\n");
    std::printf("\n    %s -m model.gguf [-n n_predict] [--budget MiB] [--plain] [prompt]\n", argv[0]);
    std::printf("\n    --budget MiB  memory for the model (default: all of it resident)\n");
    std::printf("    --plain       one target pass per token (no speculation)\n\n");
}

int main(int argc, char **argv) {
    std::string model_path;
    std::string prompt = "Hello my name is";
    int n_predict = 32;
    uint64_t budget_mib = 0;
    bool plain = false;
    {
        int i = 1;
        for (; i < argc; i++) {
            if (std::strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
                model_path = argv[++i];
            } else if (std::strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
                try {
                    n_predict = std::stoi(argv[++i]);
                } catch (...) {
                    print_usage(argc, argv);
                    return 1;
                }
            } else if (std::strcmp(argv[i], "--budget") == 0 && i + 1 < argc) {
                try {
                    budget_mib = std::stoull(argv[++i]);
                } catch (...) {
                    print_usage(argc, argv);
                    return 1;
                }
            } else if (std::strcmp(argv[i], "--plain") == 0) {
                plain = true;
            } else if (argv[i][0] == '-') {
                print_usage(argc, argv);
                return 1;
            } else {
                break;  // the prompt starts here
            }
        }
        if (model_path.empty() || n_predict < 1) {
            print_usage(argc, argv);
            return 1;
        }
        if (i < argc) {
            prompt = argv[i++];
            for (; i < argc; i++) prompt += std::string(" ") + argv[i];
        }
    }
    llama_log_set([](ggml_log_level level, const char *text, void *) {
        if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
    }, nullptr);

    try {
        subspec::LoadParams params(model_path);
        if (budget_mib > 0) params.memory_budget(budget_mib << 20);
        subspec_llama::Adapter adapter = subspec_llama::Adapter::load(params);
        subspec_model_info info = adapter.engine().info();
        std::fprintf(stderr, "%s: %s, %u of %u layers offloaded\n", __func__, info.architecture,
                     info.n_offloaded_layers, info.n_layers);

        std::vector<llama_token> prompt_tokens = adapter.tokenize(prompt, true);
        for (llama_token id : prompt_tokens) std::printf("%s", adapter.token_to_piece(id).c_str());

        llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

        subspec_llama::Session session = adapter.new_session();
        session.speculate(!plain);
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<llama_token> out = session.generate(prompt_tokens, smpl, static_cast<size_t>(n_predict),
                                                        [&](llama_token t) {
                                                            if (!adapter.is_eog(t)) {
                                                                std::printf("%s", adapter.token_to_piece(t).c_str());
                                                                std::fflush(stdout);
                                                            }
                                                            return true;
                                                        });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("\n");
        subspec_sequence_stats st = session.stats();
        std::fprintf(stderr, "%s: decoded %zu tokens in %.2f s, speed: %.2f t/s (%s, tau %.2f, %llu iterations)\n",
                     __func__, out.size(), s, out.size() / s, plain ? "plain" : "speculative", st.tau,
                     static_cast<unsigned long long>(st.iterations));
        llama_sampler_free(smpl);
    } catch (const subspec::Error &e) {
        std::fprintf(stderr, "%s: error: %s\n", __func__, e.what());
        return 1;
    }
    return 0;
}
