// subspec_llama.hpp: a header-only C++17 adapter for programs built on llama.cpp.
//
// llama.cpp keeps what a server owns: tokenization, detokenization, chat templates and
// its sampler chains (penalties, DRY, top-k/p, min-p, typical, temperature, grammars,
// logit bias, dist). subspec does the decoding: the target model offloaded, a draft built
// from it, a token tree verified in one pass. Every token is drawn by the host's own
// llama_sampler from the target's own logits at its position (subspec's host-owned
// sampling, subspec_iter_*), so the output is exactly what plain decoding with that
// sampler gives, stateful samplers and grammars included, only faster.
//
//   subspec_llama::Adapter a = subspec_llama::Adapter::load(
//       subspec::LoadParams("model.gguf").memory_budget(720ull << 20));
//   std::vector<llama_token> prompt = a.tokenize("Hello", /*add_special=*/true);
//   subspec_llama::Session s = a.new_session();
//   llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
//   llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
//   std::vector<llama_token> out = s.generate(prompt, smpl, 64);
//   std::string text = a.detokenize(out);
//
// The vocabularies are checked at construction: llama.cpp's (loaded with vocab_only from
// the same GGUF) and subspec's must agree token for token, or the adapter refuses to be
// built (subspec::Error, SUBSPEC_STATUS_TOKENIZER, naming the first differing id).
//
// Errors are thrown as subspec::Error (status and message), the adapter's own ones too:
//   SUBSPEC_STATUS_TOKENIZER        the vocabularies differ; llama.cpp cannot load the file
//   SUBSPEC_STATUS_NULL_POINTER     a NULL sampler
//   SUBSPEC_STATUS_INVALID_ARGUMENT a sampler that selects no candidate (`selected`
//                                   outside the array after llama_sampler_apply)
//   SUBSPEC_STATUS_INVALID_TOKEN    a sampler that selects an id outside the vocabulary
//   SUBSPEC_STATUS_CONTEXT_FULL     a step on a sequence at its context length
//   anything subspec_iter_* returns (I/O, device errors, ...).
// After any error thrown by Session::step or Session::generate the sequence is exactly as
// before that step. The sampler is the host's: tokens it accepted during a step that then
// failed stay accepted (llama.cpp samplers cannot be rewound); a failure at the step's
// first position (a NULL sampler, a sampler that selects nothing) happens before any
// accept. Lifetimes: the Adapter owns its llama_model unless one was passed in (then the
// caller keeps it alive); a Session keeps its engine alive but uses the adapter's
// vocabulary, so keep the Adapter alive while its Sessions run. One Session per thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "llama.h"
#include "subspec.hpp"

namespace subspec_llama {

namespace detail {
[[noreturn]] inline void fail(subspec_status st, const std::string &msg) {
    throw subspec::Error(st, "subspec_llama: " + msg);
}

/// A token's text for an error message: printable ASCII kept, other bytes as \xNN.
inline std::string quoted(const std::string &s) {
    static const char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            out += static_cast<char>(c);
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out + "\"";
}
}  // namespace detail

/// Refuses (throws SUBSPEC_STATUS_TOKENIZER) unless llama.cpp's vocabulary and the
/// engine's agree: the same number of tokens as the model's output rows, and the same
/// string for every id (llama_vocab_get_text against subspec_token_text). The message
/// names the first differing id and both strings.
inline void check_vocab(const llama_vocab *vocab, const subspec::Engine &engine) {
    if (vocab == nullptr) detail::fail(SUBSPEC_STATUS_NULL_POINTER, "the llama.cpp vocabulary is NULL");
    subspec_model_info info = engine.info();
    const int32_t n = llama_vocab_n_tokens(vocab);
    if (!info.has_tokenizer)
        detail::fail(SUBSPEC_STATUS_TOKENIZER, "the subspec engine has no tokenizer to compare with llama.cpp's");
    if (n < 0 || static_cast<uint32_t>(n) != info.vocab_size)
        detail::fail(SUBSPEC_STATUS_TOKENIZER,
                     "vocabularies differ in size: llama.cpp has " + std::to_string(n) +
                         " tokens, the subspec model's output has " + std::to_string(info.vocab_size));
    size_t needed = 0;
    std::string ours(64, '\0');
    for (int32_t id = 0; id < n; id++) {
        const char *theirs = llama_vocab_get_text(vocab, id);
        subspec_status st = subspec_token_text(engine.raw(), id, &ours[0], ours.size(), &needed);
        if (st == SUBSPEC_STATUS_BUFFER_TOO_SMALL) {
            ours.resize(needed);
            st = subspec_token_text(engine.raw(), id, &ours[0], ours.size(), &needed);
        }
        if (st != SUBSPEC_STATUS_OK)
            detail::fail(SUBSPEC_STATUS_TOKENIZER,
                         "vocabularies differ at token id " + std::to_string(id) + ": llama.cpp has " +
                             detail::quoted(theirs ? theirs : "") + ", subspec has none (" +
                             subspec_status_string(st) + ")");
        const std::string mine(ours.data(), needed - 1);
        if (theirs == nullptr || mine != theirs)
            detail::fail(SUBSPEC_STATUS_TOKENIZER,
                         "vocabularies differ at token id " + std::to_string(id) + ": llama.cpp has " +
                             detail::quoted(theirs ? theirs : "") + ", subspec has " + detail::quoted(mine));
    }
}

/// What one Session::step did.
struct StepResult {
    std::vector<llama_token> tokens;  // emitted, in order (the last may be end-of-generation)
    bool end_of_generation = false;   // the last token is one (llama_vocab_is_eog)
    bool stopped = false;             // on_token returned false for the last token
};

class Adapter;

/// One conversation: a subspec sequence (its KV cache) decoded with the host's samplers.
/// Move-only.
class Session {
public:
    /// One speculative iteration: appends `input` (a prompt, a user turn, or nothing),
    /// drafts a tree and verifies it in one target pass, then samples with `smpl` position
    /// after position while the verified tree holds the next position's logits: at most
    /// `max_tokens` tokens, ending after an end-of-generation token, at a full context, or
    /// after a token for which `on_token` (optional) returns false. Each token is
    /// llama_sampler_apply'd on the target's exact logits and llama_sampler_accept'ed, as
    /// llama_sampler_sample does. The tokens join the sequence (do not pass them back).
    /// On error throws and the sequence is as before the call (see the header comment).
    StepResult step(const std::vector<llama_token> &input, llama_sampler *smpl, size_t max_tokens = 1024,
                    const std::function<bool(llama_token)> &on_token = nullptr) {
        if (smpl == nullptr) detail::fail(SUBSPEC_STATUS_NULL_POINTER, "the sampler is NULL");
        if (max_tokens == 0) detail::fail(SUBSPEC_STATUS_BUFFER_TOO_SMALL, "max_tokens is 0");
        size_t len = seq_.length() + input.size();
        if (len >= n_ctx_)
            detail::fail(SUBSPEC_STATUS_CONTEXT_FULL,
                         "the sequence and its input are " + std::to_string(len) +
                             " tokens: no room for another in the context of " + std::to_string(n_ctx_));
        seq_.iter_begin(input, params_);
        StepResult r;
        try {
            bool more = true;
            while (more && r.tokens.size() < max_tokens && len < n_ctx_) {
                auto [logits, n] = seq_.iter_logits();
                llama_token t = sample(smpl, logits, n);
                more = seq_.iter_push(t);
                llama_sampler_accept(smpl, t);
                r.tokens.push_back(t);
                len++;
                if (llama_vocab_is_eog(vocab_, t)) {
                    r.end_of_generation = true;
                    break;
                }
                if (on_token && !on_token(t)) {
                    r.stopped = true;
                    break;
                }
            }
        } catch (...) {
            seq_.iter_cancel();
            throw;
        }
        seq_.iter_end();
        return r;
    }

    /// Steps from `prompt` until an end-of-generation token, `n_predict` tokens, a full
    /// context, or a token for which `on_token` (optional, sees each token as it is
    /// emitted) returns false. Returns the new tokens.
    std::vector<llama_token> generate(const std::vector<llama_token> &prompt, llama_sampler *smpl,
                                      size_t n_predict,
                                      const std::function<bool(llama_token)> &on_token = nullptr) {
        std::vector<llama_token> out, input = prompt;
        while (out.size() < n_predict && (!input.empty() || seq_.length() < n_ctx_)) {
            StepResult r = step(input, smpl, n_predict - out.size(), on_token);
            input.clear();
            out.insert(out.end(), r.tokens.begin(), r.tokens.end());
            if (r.end_of_generation || r.stopped) break;
        }
        return out;
    }

    /// The step parameters (tree shape, `speculate`); the sampling fields are unused:
    /// the host samples. Default: the engine's own (subspec_engine_step_params_init).
    Session &params(const subspec::StepParams &p) { params_ = p; return *this; }
    const subspec::StepParams &params() const noexcept { return params_; }
    /// Plain decoding (one target pass per token) or speculative (the default).
    Session &speculate(bool s) { params_.speculate(s); return *this; }

    /// Keeps the first `len` tokens (e.g. to regenerate an answer).
    void truncate(size_t len) { seq_.truncate(len); }
    /// Empties the sequence.
    void reset() { seq_.reset(); }
    /// The number of tokens in the sequence.
    size_t length() const { return seq_.length(); }
    /// Every token of the sequence (prompt and generated).
    std::vector<llama_token> tokens() const { return seq_.tokens(); }
    /// Statistics (iterations, accepted tokens, tau) since creation or the last reset.
    subspec_sequence_stats stats() const { return seq_.stats(); }
    /// The underlying subspec sequence, e.g. for its iter_* calls or top log-probabilities.
    subspec::Sequence &sequence() noexcept { return seq_; }

private:
    friend class Adapter;
    Session(subspec::Sequence seq, subspec::StepParams params, const llama_vocab *vocab, size_t n_ctx)
        : seq_(std::move(seq)), params_(params), vocab_(vocab), n_ctx_(n_ctx) {}

    /// llama_sampler_sample's candidate array over our logits: every id, p = 0, unsorted.
    llama_token sample(llama_sampler *smpl, const float *logits, size_t n) {
        cur_.resize(n);
        for (size_t i = 0; i < n; i++) cur_[i] = llama_token_data{static_cast<llama_token>(i), logits[i], 0.0f};
        llama_token_data_array arr{cur_.data(), cur_.size(), -1, false};
        llama_sampler_apply(smpl, &arr);
        if (arr.data == nullptr || arr.selected < 0 || static_cast<size_t>(arr.selected) >= arr.size)
            detail::fail(SUBSPEC_STATUS_INVALID_ARGUMENT,
                         std::string("the sampler \"") + (llama_sampler_name(smpl) ? llama_sampler_name(smpl) : "") +
                             "\" selected no candidate (selected = " + std::to_string(arr.selected) + " of " +
                             std::to_string(arr.size) + "): end its chain with a selecting sampler (greedy, dist)");
        llama_token t = arr.data[arr.selected].id;
        if (t < 0 || static_cast<size_t>(t) >= n)
            detail::fail(SUBSPEC_STATUS_INVALID_TOKEN, "the sampler selected token id " + std::to_string(t) +
                                                          ", outside the vocabulary of " + std::to_string(n));
        return t;
    }

    subspec::Sequence seq_;
    subspec::StepParams params_;
    const llama_vocab *vocab_;
    size_t n_ctx_;
    std::vector<llama_token_data> cur_;
};

/// llama.cpp's vocabulary and templates bound to a subspec engine of the same model.
/// Move-only.
class Adapter {
public:
    /// Loads `params`' model file (a GGUF) twice: llama.cpp with vocab_only (no weights)
    /// and the subspec engine; then checks the vocabularies.
    static Adapter load(const subspec::LoadParams &params) {
        llama_backend_init();
        llama_model_params mp = llama_model_default_params();
        mp.vocab_only = true;
        const std::string path = params.raw().model_path;
        llama_model *model = llama_model_load_from_file(path.c_str(), mp);
        if (model == nullptr)
            detail::fail(SUBSPEC_STATUS_TOKENIZER, "llama.cpp could not load the vocabulary of " + path);
        try {
            return Adapter(model, true, subspec::Engine::load(params));
        } catch (...) {
            llama_model_free(model);
            throw;
        }
    }

    /// Binds a llama_model the host loaded already (vocab_only or whole; not owned: keep it
    /// alive) to an engine; checks the vocabularies.
    Adapter(const llama_model *model, subspec::Engine engine) : Adapter(model, false, std::move(engine)) {}

    Adapter(Adapter &&o) noexcept
        : model_(std::exchange(o.model_, nullptr)), owned_(o.owned_), vocab_(o.vocab_), engine_(std::move(o.engine_)) {}
    Adapter &operator=(Adapter &&o) noexcept {
        if (this != &o) {
            release();
            model_ = std::exchange(o.model_, nullptr);
            owned_ = o.owned_;
            vocab_ = o.vocab_;
            engine_ = std::move(o.engine_);
        }
        return *this;
    }
    Adapter(const Adapter &) = delete;
    Adapter &operator=(const Adapter &) = delete;
    ~Adapter() { release(); }

    /// A new, empty session with the engine's own step parameters (speculative).
    Session new_session() const {
        return Session(engine_.new_sequence(), engine_.step_params(), vocab_, engine_.info().context_length);
    }

    /// llama.cpp's tokenization (add_special: BOS and the like as the model wants;
    /// parse_special: "<|im_start|>" and the like become their tokens).
    std::vector<llama_token> tokenize(const std::string &text, bool add_special, bool parse_special = true) const {
        const int32_t len = static_cast<int32_t>(text.size());
        int32_t n = -llama_tokenize(vocab_, text.data(), len, nullptr, 0, add_special, parse_special);
        std::vector<llama_token> ids(static_cast<size_t>(std::max(n, 0)));
        if (n < 0 || llama_tokenize(vocab_, text.data(), len, ids.data(), n, add_special, parse_special) != n)
            detail::fail(SUBSPEC_STATUS_TOKENIZER, "llama.cpp could not tokenize the text");
        return ids;
    }

    /// One token's text as llama.cpp renders it (special tokens shown when `special`).
    std::string token_to_piece(llama_token token, bool special = true) const {
        char buf[256];
        int32_t n = llama_token_to_piece(vocab_, token, buf, sizeof buf, 0, special);
        if (n < 0) {
            std::string s(static_cast<size_t>(-n), '\0');
            n = llama_token_to_piece(vocab_, token, &s[0], static_cast<int32_t>(s.size()), 0, special);
            if (n < 0) detail::fail(SUBSPEC_STATUS_TOKENIZER, "llama.cpp could not render token " + std::to_string(token));
            s.resize(static_cast<size_t>(n));
            return s;
        }
        return std::string(buf, static_cast<size_t>(n));
    }

    /// llama.cpp's detokenization of `tokens`.
    std::string detokenize(const std::vector<llama_token> &tokens, bool special = true) const {
        const int32_t n_tok = static_cast<int32_t>(tokens.size());
        std::string s(tokens.size() * 8 + 16, '\0');
        int32_t n = llama_detokenize(vocab_, tokens.data(), n_tok, &s[0], static_cast<int32_t>(s.size()), false, special);
        if (n < 0) {
            s.resize(static_cast<size_t>(-n));
            n = llama_detokenize(vocab_, tokens.data(), n_tok, &s[0], static_cast<int32_t>(s.size()), false, special);
        }
        if (n < 0) detail::fail(SUBSPEC_STATUS_TOKENIZER, "llama.cpp could not detokenize");
        s.resize(static_cast<size_t>(n));
        return s;
    }

    /// The conversation rendered by the model's chat template through llama.cpp's
    /// llama_chat_apply_template; when llama.cpp does not know the template (it matches
    /// known ones by pattern) or the model has none, subspec renders it (its Jinja engine,
    /// ChatML for a model without a template). Tokenize the result with add_special false.
    std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>> &messages,
                                    bool add_generation_prompt) const {
        std::vector<llama_chat_message> chat;
        for (const auto &m : messages) chat.push_back({m.first.c_str(), m.second.c_str()});
        const char *tmpl = model_ ? llama_model_chat_template(model_, nullptr) : nullptr;
        if (tmpl != nullptr) {
            std::string buf(1024, '\0');
            int32_t n = llama_chat_apply_template(tmpl, chat.data(), chat.size(), add_generation_prompt, &buf[0],
                                                  static_cast<int32_t>(buf.size()));
            if (n > static_cast<int32_t>(buf.size())) {
                buf.resize(static_cast<size_t>(n));
                n = llama_chat_apply_template(tmpl, chat.data(), chat.size(), add_generation_prompt, &buf[0], n);
            }
            if (n >= 0) {
                buf.resize(static_cast<size_t>(n));
                return buf;
            }
        }
        std::vector<const char *> roles, contents;
        for (const auto &m : chat) {
            roles.push_back(m.role);
            contents.push_back(m.content);
        }
        size_t needed = 0;
        subspec_status st = subspec_apply_chat_template(engine_.raw(), roles.data(), contents.data(), chat.size(),
                                                        add_generation_prompt, nullptr, 0, &needed);
        if (st != SUBSPEC_STATUS_BUFFER_TOO_SMALL) subspec::detail::check(st);
        std::string out(needed, '\0');
        subspec::detail::check(subspec_apply_chat_template(engine_.raw(), roles.data(), contents.data(), chat.size(),
                                                           add_generation_prompt, &out[0], out.size(), &needed));
        out.resize(needed - 1);
        return out;
    }

    bool is_eog(llama_token t) const { return llama_vocab_is_eog(vocab_, t); }
    const llama_vocab *vocab() const noexcept { return vocab_; }
    const llama_model *model() const noexcept { return model_; }
    const subspec::Engine &engine() const noexcept { return engine_; }

private:
    Adapter(const llama_model *model, bool owned, subspec::Engine engine)
        : model_(model), owned_(owned), vocab_(model ? llama_model_get_vocab(model) : nullptr), engine_(std::move(engine)) {
        if (model == nullptr) detail::fail(SUBSPEC_STATUS_NULL_POINTER, "the llama_model is NULL");
        check_vocab(vocab_, engine_);
    }
    void release() noexcept {
        if (owned_ && model_ != nullptr) llama_model_free(const_cast<llama_model *>(model_));
        model_ = nullptr;
    }

    const llama_model *model_;
    bool owned_;
    const llama_vocab *vocab_;
    subspec::Engine engine_;
};

}  // namespace subspec_llama
