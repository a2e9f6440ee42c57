// subspec.hpp: a header-only C++17 RAII wrapper over the subspec C ABI (subspec.h).
//
//   subspec::Engine engine = subspec::Engine::load(subspec::LoadParams("models/smollm2"));
//   subspec::Sequence seq = engine.new_sequence();
//   std::vector<int32_t> out = seq.generate({504, 1345, 3340}, subspec::StepParams(), 64);
//
// Errors are thrown as subspec::Error (status code and message). The C structs are
// size-versioned: LoadParams and StepParams initialize theirs through the library
// (SUBSPEC_*_INIT), and the output structs are passed with struct_size set, so a program
// built with this header keeps working with a newer library. Handles are move-only and
// freed by their destructors; a Sequence keeps its engine's model alive, so destruction
// order does not matter. One Sequence is used by one thread at a time; an Engine may be
// shared by many threads. Engine::step_batch steps many sequences in one target pass
// (BatchItem in, BatchResult out: per-sequence status; a call-level failure throws).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "subspec.h"

namespace subspec {

/// A failed call: the C status code and the library's message.
class Error : public std::runtime_error {
public:
    Error(subspec_status status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    /// The C status code (SUBSPEC_STATUS_*).
    subspec_status status() const noexcept { return status_; }

private:
    subspec_status status_;
};

namespace detail {
/// What `read(buf, cap, &needed)` copies out (subspec_last_error or
/// subspec_sequence_last_error): a size query, then the copy.
template <class Read>
std::string message(Read read) {
    size_t needed = 0;
    read(nullptr, 0, &needed);
    std::string msg(needed, '\0');
    if (needed > 0 && read(msg.data(), msg.size(), &needed) == SUBSPEC_STATUS_OK) msg.resize(needed - 1);
    return msg;
}

/// The calling thread's last error message.
inline std::string last_error() {
    return message([](char *buf, size_t cap, size_t *needed) { return subspec_last_error(nullptr, buf, cap, needed); });
}

/// The message of the last failed call on `seq`, or of its part of a batch.
inline std::string sequence_error(const subspec_sequence *seq) {
    return message(
        [seq](char *buf, size_t cap, size_t *needed) { return subspec_sequence_last_error(seq, buf, cap, needed); });
}

inline void check(subspec_status st) {
    if (st != SUBSPEC_STATUS_OK) throw Error(st, last_error());
}
}  // namespace detail

/// The library version, e.g. "0.2.0".
inline std::string version() { return subspec_version(); }

/// Load parameters (the library's defaults, from SUBSPEC_LOAD_PARAMS_INIT), with
/// chainable setters.
class LoadParams {
public:
    explicit LoadParams(std::string model_path) : path_(std::move(model_path)) {
        detail::check(SUBSPEC_LOAD_PARAMS_INIT(&p_));
    }
    LoadParams &device(int32_t d) { p_.device = d; return *this; }
    LoadParams &memory_budget(uint64_t bytes) { p_.memory_budget = bytes; return *this; }
    LoadParams &context_length(uint32_t n) { p_.context_length = n; return *this; }
    LoadParams &max_tree_tokens(uint32_t n) { p_.max_tree_tokens = n; return *this; }
    /// Sequences alive at once: each gets a planned KV cache; one more is OUT_OF_MEMORY.
    LoadParams &max_sequences(uint32_t n) { p_.max_sequences = n; return *this; }
    LoadParams &threads(uint32_t n) { p_.threads = n; return *this; }
    LoadParams &draft(bool build) { p_.build_draft = build; return *this; }
    LoadParams &draft_quant(uint32_t bits, uint32_t group, uint32_t method = SUBSPEC_QUANT_HQQ) {
        p_.draft_bits = bits;
        p_.draft_group = group;
        p_.draft_method = method;
        return *this;
    }
    /// The draft's own quantized lm_head whose logits are the draft's (default false; on
    /// the CPU the draft has a 2-bit ranking head either way: see `quantize_lm_head` in
    /// include/subspec.h).
    LoadParams &quantize_lm_head(bool q) { p_.quantize_lm_head = q; return *this; }
    /// The draft proposes only token ids below `n` (0, the default: all of them).
    LoadParams &draft_vocab(uint32_t n) { p_.draft_vocab = n; return *this; }
    /// A ranking head: the draft's own quantized lm_head only ranks the vocabulary and
    /// `k` tokens it ranks first per draft row get the target head's logits
    /// (SUBSPEC_SHORTLIST_NONE: none; 0, the default: the engine's choice).
    LoadParams &draft_shortlist(uint32_t k) { p_.draft_shortlist = k; return *this; }
    /// Bits of the draft's own lm_head (0, the default: 2 for a ranking head, otherwise
    /// draft_bits).
    LoadParams &draft_head_bits(uint32_t b) { p_.draft_head_bits = b; return *this; }
    /// The KV cache's element type: SUBSPEC_KV_DEFAULT (f16 on the CPU, f32 on CUDA),
    /// SUBSPEC_KV_F32, SUBSPEC_KV_F16 or SUBSPEC_KV_BF16; the planner counts its bytes.
    LoadParams &kv_dtype(uint32_t t) { p_.kv_dtype = t; return *this; }
    /// Substitutes for the resident layers too (default true); false: offloaded ones only.
    LoadParams &substitute_all_layers(bool a) { p_.substitute_all_layers = a; return *this; }
    /// Exactly these decoder layers get substitutes (empty: the default choice).
    LoadParams &substitute_layers(std::vector<uint32_t> layers) {
        layers_ = std::move(layers);
        return *this;
    }
    LoadParams &require_tokenizer(bool r) { p_.require_tokenizer = r; return *this; }
    /// Called with the fraction loaded; return false to abort (throws SUBSPEC_STATUS_ABORTED).
    LoadParams &progress(std::function<bool(float)> f) { progress_ = std::move(f); return *this; }

    /// The smallest memory_budget these parameters can load with (headers only).
    uint64_t minimum_budget() const {
        subspec_load_params p = raw();
        uint64_t min = 0;
        detail::check(subspec_minimum_budget(&p, &min));
        return min;
    }

    /// The C struct, its pointers into this object (valid while it lives, unchanged).
    subspec_load_params raw() const {
        subspec_load_params p = p_;
        p.model_path = path_.c_str();
        p.substitute_layers = layers_.empty() ? nullptr : layers_.data();
        p.n_substitute_layers = layers_.size();
        return p;
    }

private:
    friend class Engine;
    std::string path_;
    std::vector<uint32_t> layers_;
    subspec_load_params p_{};
    std::function<bool(float)> progress_;
};

/// Step parameters (the library's defaults, from SUBSPEC_STEP_PARAMS_INIT: greedy,
/// speculative).
class StepParams {
public:
    StepParams() { detail::check(SUBSPEC_STEP_PARAMS_INIT(&p_)); }
    explicit StepParams(const subspec_step_params &p) : p_(p) {}
    StepParams &temperature(float t) { p_.temperature = t; return *this; }
    StepParams &top_k(uint32_t k) { p_.top_k = k; return *this; }
    StepParams &top_p(float p) { p_.top_p = p; return *this; }
    StepParams &seed(uint64_t s) { p_.seed = s; return *this; }
    StepParams &speculate(bool s) { p_.speculate = s; return *this; }
    StepParams &tree(uint32_t width, uint32_t depth, uint32_t max_tokens) {
        p_.tree_width = width;
        p_.tree_depth = depth;
        p_.tree_max_tokens = max_tokens;
        return *this;
    }
    StepParams &draft_temperature(float t) { p_.draft_temperature = t; return *this; }
    /// Stop growing the tree early when another draft step does not pay (depth: the most).
    StepParams &adaptive_depth(bool a) { p_.adaptive_depth = a; return *this; }
    /// Each step's depth (0: plain) chosen by measured cost and the acceptance so far.
    StepParams &auto_depth(bool a) { p_.auto_depth = a; return *this; }
    const subspec_step_params &raw() const noexcept { return p_; }

private:
    subspec_step_params p_{};
};

/// One conversation with its own KV cache. Move-only.
class Sequence {
public:
    /// One step: appends `input` (may be empty), returns the new tokens (at least one, at
    /// most `max_tokens`). On error throws and the sequence is unchanged.
    std::vector<int32_t> step(const std::vector<int32_t> &input, const StepParams &params = StepParams(),
                              size_t max_tokens = 1024) {
        std::vector<int32_t> out(max_tokens);
        size_t n = 0;
        detail::check(subspec_step(h_.get(), &params.raw(), input.data(), input.size(), out.data(),
                                   out.size(), &n));
        out.resize(n);
        return out;
    }

    /// Steps from `prompt` until an EOS token or `max_new` tokens; returns the new tokens.
    std::vector<int32_t> generate(const std::vector<int32_t> &prompt, const StepParams &params,
                                  size_t max_new) {
        std::vector<int32_t> out, input = prompt;
        while (out.size() < max_new) {
            std::vector<int32_t> got = step(input, params, max_new - out.size());
            input.clear();
            bool stop = false;
            for (int32_t t : got)
                for (int32_t e : eos_) stop = stop || t == e;
            out.insert(out.end(), got.begin(), got.end());
            if (stop) break;
        }
        return out;
    }

    // ---- host-owned sampling: begin, (logits, your sampler, push)* while push says
    // has_next, end. Lossless for any sampler: each position's logits are the target's own.

    /// Opens a host-sampled iteration: appends `input`, drafts and verifies a tree with
    /// `params` (its sampling fields are ignored). On error throws; nothing changed.
    void iter_begin(const std::vector<int32_t> &input, const StepParams &params = StepParams()) {
        detail::check(subspec_iter_begin(h_.get(), &params.raw(), input.data(), input.size()));
    }
    /// The target's logits at the current position: (pointer, n_vocab), owned by the
    /// sequence, valid until the next iter_* call.
    std::pair<const float *, size_t> iter_logits() {
        const float *l = nullptr;
        size_t n = 0;
        detail::check(subspec_iter_logits(h_.get(), &l, &n));
        return {l, n};
    }
    /// Pushes the host's token; true: the next position's logits are known (sample again).
    bool iter_push(int32_t token) {
        bool has_next = false;
        detail::check(subspec_iter_push(h_.get(), token, &has_next));
        return has_next;
    }
    /// The `n` most likely (id, log-probability) pairs at the current position.
    std::vector<std::pair<int32_t, float>> iter_top_logprobs(size_t n) {
        std::vector<int32_t> ids(n);
        std::vector<float> lps(n);
        size_t got = 0;
        detail::check(subspec_iter_top_logprobs(h_.get(), n, ids.data(), lps.data(), &got));
        std::vector<std::pair<int32_t, float>> out;
        for (size_t i = 0; i < got; i++) out.emplace_back(ids[i], lps[i]);
        return out;
    }
    /// Commits the iteration; returns the number of tokens pushed.
    size_t iter_end() {
        size_t n = 0;
        detail::check(subspec_iter_end(h_.get(), &n));
        return n;
    }
    /// Abandons the iteration: the sequence as before iter_begin.
    void iter_cancel() { detail::check(subspec_iter_cancel(h_.get())); }
    /// One whole host-sampled iteration: `sample(logits, n_vocab)` picks each token; stops
    /// when the tree has no next logits or after `max_tokens`. Returns the tokens pushed.
    std::vector<int32_t> iter_sample(const std::vector<int32_t> &input, const StepParams &params,
                                     const std::function<int32_t(const float *, size_t)> &sample,
                                     size_t max_tokens = 1024) {
        iter_begin(input, params);
        std::vector<int32_t> out;
        try {
            bool more = true;
            while (more && out.size() < max_tokens) {
                auto [l, n] = iter_logits();
                int32_t t = sample(l, n);
                more = iter_push(t);
                out.push_back(t);
            }
        } catch (...) {
            iter_cancel();
            throw;
        }
        iter_end();
        return out;
    }
    /// Plain exact logits: appends `input`, runs the target alone, returns the next
    /// position's logits (nothing sampled).
    std::vector<float> eval(const std::vector<int32_t> &input, size_t n_vocab) {
        std::vector<float> out(n_vocab);
        size_t n = 0;
        detail::check(subspec_sequence_eval(h_.get(), input.data(), input.size(), out.data(), out.size(), &n));
        out.resize(n);
        return out;
    }

    /// Asks the call running on this sequence (on another thread) to stop before its next
    /// decoder layer: it throws SUBSPEC_STATUS_ABORTED, the sequence unchanged. The one
    /// call safe on a sequence in use. A request made while no call runs stops the next.
    void abort() const { detail::check(subspec_sequence_abort(h_.get())); }
    /// Withdraws a request no call has taken.
    void clear_abort() const { detail::check(subspec_sequence_clear_abort(h_.get())); }

    /// Empties the sequence and its statistics.
    void reset() { detail::check(subspec_sequence_reset(h_.get())); }
    /// Keeps the first `len` tokens.
    void truncate(size_t len) { detail::check(subspec_sequence_truncate(h_.get(), len)); }
    /// Every token (prompt and generated).
    std::vector<int32_t> tokens() const {
        size_t n = 0;
        subspec_status st = subspec_sequence_tokens(h_.get(), nullptr, 0, &n);
        if (st != SUBSPEC_STATUS_BUFFER_TOO_SMALL) detail::check(st);
        std::vector<int32_t> out(n);
        detail::check(subspec_sequence_tokens(h_.get(), out.data(), out.size(), &n));
        out.resize(n);
        return out;
    }
    /// The number of tokens (prompt and generated).
    size_t length() const { return static_cast<size_t>(stats().length); }
    /// Statistics since creation or the last reset.
    subspec_sequence_stats stats() const {
        subspec_sequence_stats s{};
        s.struct_size = sizeof s;
        detail::check(subspec_sequence_get_stats(h_.get(), &s));
        return s;
    }
    subspec_sequence *raw() const noexcept { return h_.get(); }

private:
    friend class Engine;
    struct Free {
        void operator()(subspec_sequence *s) const noexcept { subspec_sequence_free(s); }
    };
    Sequence(subspec_sequence *s, std::vector<int32_t> eos) : h_(s), eos_(std::move(eos)) {}
    std::unique_ptr<subspec_sequence, Free> h_;
    std::vector<int32_t> eos_;  // the engine's EOS ids, for generate()
};

/// One sequence's part in Engine::step_batch: the sequence (not owned; must outlive the
/// call), the tokens to append first (may be empty), and its step parameters.
struct BatchItem {
    Sequence *seq = nullptr;
    std::vector<int32_t> input;
    StepParams params;
};

/// One sequence's outcome of Engine::step_batch.
struct BatchResult {
    /// The new tokens (at least one when ok(); empty on failure).
    std::vector<int32_t> tokens;
    /// SUBSPEC_STATUS_OK, or this sequence's failure (as Sequence::step would throw); a
    /// failed sequence is exactly as before the call.
    subspec_status status = SUBSPEC_STATUS_OK;
    /// Empty when ok(). On failure this sequence's message from the library
    /// (subspec_sequence_last_error).
    std::string message;
    bool ok() const noexcept { return status == SUBSPEC_STATUS_OK; }
    /// Throws this sequence's failure as subspec::Error; nothing when ok().
    void check() const {
        if (!ok()) throw Error(status, message);
    }
};

/// A loaded model. Move-only; sequences outlive it safely.
class Engine {
public:
    /// Loads a model; throws subspec::Error on failure.
    static Engine load(const LoadParams &params) {
        subspec_load_params p = params.raw();
        if (params.progress_) {
            p.progress_callback = [](float f, void *user) -> bool {
                try {
                    return (*static_cast<const std::function<bool(float)> *>(user))(f);
                } catch (...) {
                    return false;  // never unwind through the C library
                }
            };
            p.progress_user_data = const_cast<std::function<bool(float)> *>(&params.progress_);
        }
        subspec_engine *e = nullptr;
        detail::check(subspec_load(&p, &e));
        return Engine(e);
    }

    /// A new, empty sequence.
    Sequence new_sequence() const {
        std::vector<int32_t> eos = eos_ids();
        subspec_sequence *s = nullptr;
        detail::check(subspec_sequence_create(h_.get(), &s));
        return Sequence(s, std::move(eos));
    }
    subspec_model_info info() const {
        subspec_model_info i{};
        i.struct_size = sizeof i;
        detail::check(subspec_get_model_info(h_.get(), &i));
        return i;
    }
    std::vector<int32_t> eos_ids() const {
        std::vector<int32_t> ids(16);
        size_t n = 0;
        detail::check(subspec_eos_ids(h_.get(), ids.data(), ids.size(), &n));
        ids.resize(n);
        return ids;
    }
    /// The step parameters that pay best for this engine (its tree shape).
    StepParams step_params() const {
        subspec_step_params p;
        detail::check(SUBSPEC_ENGINE_STEP_PARAMS_INIT(h_.get(), &p));
        return StepParams(p);
    }
    /// Steps the items' sequences (all of this engine, each at most once) together, with one
    /// target pass for all of them: each gets the tokens its own Sequence::step calls would
    /// give (at most `max_tokens` a call; in a batch of several, a step that appends a new
    /// prompt runs plain, one token, and the next speculates, so the same tokens may come
    /// cut differently across calls). Returns
    /// one BatchResult per item, in order: a sequence that fails (bad input or parameters,
    /// context full, ...) has its status there and is unchanged, the others step. Throws
    /// subspec::Error when the call fails as a whole (e.g. a null or moved-from sequence:
    /// NULL_POINTER; a sequence twice or of another engine: INVALID_ARGUMENT;
    /// `max_tokens` 0: BUFFER_TOO_SMALL; PANIC); then no sequence changed. An empty batch
    /// returns an empty vector. Each sequence is used by this thread for the call.
    /// Each failed sequence's BatchResult carries its own message.
    std::vector<BatchResult> step_batch(const std::vector<BatchItem> &items, size_t max_tokens = 1024) const {
        const size_t n = items.size();
        if (n == 0) return {};
        if (max_tokens > std::vector<int32_t>().max_size() / n)
            throw std::length_error("subspec::Engine::step_batch: items * max_tokens too large");
        std::vector<subspec_sequence *> seqs(n);
        std::vector<const subspec_step_params *> params(n);
        std::vector<const int32_t *> inputs(n);
        std::vector<size_t> n_inputs(n);
        for (size_t i = 0; i < n; i++) {
            seqs[i] = items[i].seq ? items[i].seq->raw() : nullptr;
            params[i] = &items[i].params.raw();
            inputs[i] = items[i].input.data();
            n_inputs[i] = items[i].input.size();
        }
        // At least one element, so that max_tokens 0 is the library's BUFFER_TOO_SMALL.
        std::vector<int32_t> out(std::max<size_t>(n * max_tokens, 1));
        std::vector<size_t> n_out(n);
        std::vector<subspec_status> statuses(n, SUBSPEC_STATUS_OK);
        detail::check(subspec_step_batch(h_.get(), seqs.data(), n, params.data(), inputs.data(),
                                         n_inputs.data(), out.data(), max_tokens, n_out.data(),
                                         statuses.data()));
        std::vector<BatchResult> results(n);
        for (size_t i = 0; i < n; i++) {
            results[i].status = statuses[i];
            if (statuses[i] == SUBSPEC_STATUS_OK) {
                const int32_t *first = out.data() + i * max_tokens;
                results[i].tokens.assign(first, first + n_out[i]);
            } else {
                results[i].message = detail::sequence_error(seqs[i]);
            }
        }
        return results;
    }
    bool is_eos(int32_t token) const noexcept { return subspec_is_eos(h_.get(), token); }
    std::vector<int32_t> tokenize(const std::string &text, bool add_special = false) const {
        size_t n = 0;
        subspec_status st = subspec_tokenize(h_.get(), text.c_str(), add_special, nullptr, 0, &n);
        if (st != SUBSPEC_STATUS_BUFFER_TOO_SMALL) detail::check(st);
        std::vector<int32_t> ids(n);
        detail::check(subspec_tokenize(h_.get(), text.c_str(), add_special, ids.data(), ids.size(), &n));
        ids.resize(n);
        return ids;
    }
    std::string detokenize(const std::vector<int32_t> &ids) const {
        size_t needed = 0;
        subspec_status st = subspec_detokenize(h_.get(), ids.data(), ids.size(), nullptr, 0, &needed);
        if (st != SUBSPEC_STATUS_BUFFER_TOO_SMALL) detail::check(st);
        std::string s(needed, '\0');
        detail::check(subspec_detokenize(h_.get(), ids.data(), ids.size(), s.data(), s.size(), &needed));
        s.resize(needed - 1);
        return s;
    }
    /// The vocabulary's own string for `token` (e.g. "Ġthe"), as llama_vocab_get_text.
    std::string token_text(int32_t token) const {
        size_t needed = 0;
        subspec_status st = subspec_token_text(h_.get(), token, nullptr, 0, &needed);
        if (st != SUBSPEC_STATUS_BUFFER_TOO_SMALL) detail::check(st);
        std::string s(needed, '\0');
        detail::check(subspec_token_text(h_.get(), token, s.data(), s.size(), &needed));
        s.resize(needed - 1);
        return s;
    }
    subspec_engine *raw() const noexcept { return h_.get(); }

private:
    struct Free {
        void operator()(subspec_engine *e) const noexcept { subspec_free(e); }
    };
    explicit Engine(subspec_engine *e) : h_(e) {}
    std::unique_ptr<subspec_engine, Free> h_;
};

}  // namespace subspec
