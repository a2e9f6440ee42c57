// The C++ wrapper (bindings/cpp/subspec.hpp) in one page: load SmolLM2 with its 4-bit
// substitute draft, generate from a chat prompt (token ids from SmolLM2's tokenizer),
// print ids, text and tau. Errors arrive as subspec::Error.
//
//   c++ -std=c++17 -Ibindings/cpp examples/cpp/generate.cpp $(pkg-config --cflags --libs subspec)
#include <cstdio>
#include <vector>

#include "subspec.hpp"

int main(int argc, char **argv) try {
    // "<|im_start|>user\nWhat are the three primary colours?<|im_end|>\n<|im_start|>assistant\n"
    const std::vector<int32_t> prompt = {1, 4093, 198, 1780, 359, 260, 1296, 3003, 14797, 47, 2, 198, 1, 520, 9531, 198};

    auto engine = subspec::Engine::load(
        subspec::LoadParams(argc > 1 ? argv[1] : "models/smollm2-135m-instruct").context_length(1024));
    auto seq = engine.new_sequence();
    std::vector<int32_t> out = seq.generate(prompt, subspec::StepParams(), 128);

    std::printf("ids:");
    for (int32_t t : out) std::printf(" %d", t);
    std::printf("\ntext: %s\n", engine.detokenize(out).c_str());
    subspec_sequence_stats st = seq.stats();
    std::printf("%llu tokens in %llu target passes: tau %.2f\n", (unsigned long long)st.generated,
                (unsigned long long)st.iterations, st.tau);
    return 0;
} catch (const subspec::Error &e) {
    std::fprintf(stderr, "subspec error %u: %s\n", (unsigned)e.status(), e.what());
    return 1;
}
