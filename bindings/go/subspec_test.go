package subspec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixtures is where `cargo test --test ffi` wrote the expected outputs (and the C suite
// its own): SUBSPEC_FIXTURES, or target/tmp/bindings of this checkout.
func fixtures(t *testing.T) string {
	if d := os.Getenv("SUBSPEC_FIXTURES"); d != "" {
		return d
	}
	d, _ := filepath.Abs("../../target/tmp/bindings")
	return d
}

func parseIDs(s string) []int32 {
	var ids []int32
	for _, f := range strings.Fields(s) {
		n, _ := strconv.Atoi(f)
		ids = append(ids, int32(n))
	}
	return ids
}

// expected reads "<model>.expected": key -> value.
func expected(t *testing.T, model string) map[string]string {
	b, err := os.ReadFile(filepath.Join(fixtures(t), model+".expected"))
	if err != nil {
		t.Fatalf("%v: run `cargo test --release --test ffi` first", err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		m[k] = v
	}
	return m
}

func equal(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sampled() *StepParams {
	p := DefaultStepParams()
	p.Temperature, p.TopK, p.TopP, p.Seed = 0.8, 40, 0.95, 7
	return &p
}

func TestVersion(t *testing.T) {
	if v := Version(); !strings.HasPrefix(v, "0.") {
		t.Fatalf("version %q", v)
	}
}

func TestErrors(t *testing.T) {
	_, err := Load("/nonexistent/model", nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != StatusIO || !strings.Contains(e.Message, "/nonexistent/model") {
		t.Fatalf("bad path: %v", err)
	}
	tiny := filepath.Join(fixtures(t), "tiny")
	_, err = Load(tiny, &LoadOptions{Device: DeviceCUDA(0)})
	if !errors.As(err, &e) || e.Status != StatusDeviceUnavailable {
		t.Fatalf("cuda: %v", err)
	}
	if _, err = Load(tiny, &LoadOptions{MemoryBudget: 1}); !errors.As(err, &e) || e.Status != StatusOutOfMemory ||
		!strings.Contains(e.Message, "at least") {
		t.Fatalf("budget too small: %v", err)
	}
	min, err := MinimumBudget(tiny, &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	small, err := Load(tiny, &LoadOptions{ContextLength: 256, MemoryBudget: min})
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := small.Info(); info.OffloadedLayers < 1 {
		t.Fatalf("nothing offloaded at the minimum budget: %+v", info)
	}
	want := expected(t, "tiny")
	if out, _ := generate(t, small, parseIDs(want["prompt"]), nil); !equal(out, parseIDs(want["greedy"])) {
		t.Fatalf("offloaded: %v", out)
	}
	small.Close()
	eng, err := Load(tiny, &LoadOptions{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	seq, _ := eng.NewSequence()
	defer seq.Close()
	if _, err := seq.Step([]int32{1000}, nil, 8); !errors.As(err, &e) || e.Status != StatusInvalidToken {
		t.Fatalf("invalid token: %v", err)
	}
	if _, err := seq.Step(nil, nil, 8); !errors.As(err, &e) || e.Status != StatusInvalidArgument {
		t.Fatalf("empty sequence: %v", err)
	}
	if _, err := eng.Tokenize("hello", false); !errors.As(err, &e) || e.Status != StatusTokenizer {
		t.Fatalf("no tokenizer: %v", err)
	}
}

func generate(t *testing.T, eng *Engine, prompt []int32, p *StepParams) ([]int32, Stats) {
	seq, err := eng.NewSequence()
	if err != nil {
		t.Fatal(err)
	}
	defer seq.Close()
	out, err := seq.Generate(prompt, p, 32)
	if err != nil {
		t.Fatal(err)
	}
	st, err := seq.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return out, st
}

func checkModel(t *testing.T, name, path string) {
	want := expected(t, name)
	if path == "" {
		path = want["model"]
	}
	eng, err := Load(path, &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	prompt := parseIDs(want["prompt"])
	out, st := generate(t, eng, prompt, nil)
	if !equal(out, parseIDs(want["greedy"])) {
		t.Fatalf("%s greedy: %v, want %s", name, out, want["greedy"])
	}
	if st.Tau < 1 || st.Generated != uint64(len(out)) {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%s: %d tokens, tau %.2f", name, len(out), st.Tau)
	if out, _ := generate(t, eng, prompt, sampled()); !equal(out, parseIDs(want["sampled"])) {
		t.Fatalf("%s sampled: %v, want %s", name, out, want["sampled"])
	}
	// Different sequences from different goroutines at once.
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, _ := generate(t, eng, prompt, nil); !equal(out, parseIDs(want["greedy"])) {
				t.Errorf("%s concurrent greedy: %v", name, out)
			}
		}()
	}
	wg.Wait()
	// The engine closes first; the sequence keeps working.
	seq, _ := eng.NewSequence()
	eng.Close()
	if _, err := seq.Step(prompt, nil, 4); err != nil {
		t.Fatal(err)
	}
	seq.Close()
}

func TestTinyMatchesRust(t *testing.T) {
	checkModel(t, "tiny", filepath.Join(fixtures(t), "tiny"))
}

// SmolLM2: the same output as the Rust engine and as the C suite (c-smollm2.out).
func TestSmolLM2MatchesC(t *testing.T) {
	want := expected(t, "smollm2")
	if _, err := os.Stat(want["model"]); err != nil {
		t.Skip("SmolLM2 not fetched")
	}
	checkModel(t, "smollm2", "")
	c, err := os.ReadFile(filepath.Join(fixtures(t), "c-smollm2.out"))
	if err != nil {
		t.Fatalf("%v: run the C suite first", err)
	}
	if strings.TrimSpace(string(c)) != want["greedy"] {
		t.Fatalf("C output %q differs from Rust %q", c, want["greedy"])
	}
	eng, err := Load(want["model"], &LoadOptions{NoDraft: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	ids, err := eng.Tokenize("The three primary colours are", false)
	if err != nil || !equal(ids, parseIDs(want["prompt"])) {
		t.Fatalf("tokenize: %v %v", ids, err)
	}
	text, err := eng.Detokenize(ids)
	if err != nil || text != "The three primary colours are" {
		t.Fatalf("detokenize: %q %v", text, err)
	}
}

func TestStatusStrings(t *testing.T) {
	seen := map[string]Status{}
	for s := StatusOK; s <= StatusInvalidState; s++ {
		str := s.String()
		if str == "unknown status" {
			t.Fatalf("status %d has no string", s)
		}
		if o, dup := seen[str]; dup {
			t.Fatalf("statuses %d and %d share %q", o, s, str)
		}
		seen[str] = s
	}
	if (StatusInvalidState+1).String() != "unknown status" || StatusIO.String() != "I/O error" {
		t.Fatal("status strings")
	}
}

// The draft options: an own quantized lm_head costs memory and is reported, the layer
// choice is honoured, adaptive depth is accepted; the output stays the Rust engine's.
func TestDraftOptions(t *testing.T) {
	tiny := filepath.Join(fixtures(t), "tiny")
	want := expected(t, "tiny")
	prompt, greedy := parseIDs(want["prompt"]), parseIDs(want["greedy"])
	shared, err := MinimumBudget(tiny, &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	own, err := MinimumBudget(tiny, &LoadOptions{ContextLength: 256, QuantizeLMHead: true})
	if err != nil || own <= shared {
		t.Fatalf("quantized lm_head: minimum %d vs %d (%v)", own, shared, err)
	}
	for _, opts := range []LoadOptions{
		{ContextLength: 256, QuantizeLMHead: true},
		{ContextLength: 256, SubstituteOffloadedOnly: true},
		{ContextLength: 256, SubstituteLayers: []uint32{1}},
	} {
		if opts.SubstituteOffloadedOnly {
			if opts.MemoryBudget, err = MinimumBudget(tiny, &opts); err != nil {
				t.Fatal(err)
			}
		}
		eng, err := Load(tiny, &opts)
		if err != nil {
			t.Fatalf("%+v: %v", opts, err)
		}
		info, _ := eng.Info()
		switch {
		case opts.QuantizeLMHead && (info.DraftLMHeadBytes == 0 || info.DraftBytes <= info.DraftLMHeadBytes):
			t.Fatalf("quantized lm_head not reported: %+v", info)
		case opts.SubstituteOffloadedOnly && (info.OffloadedLayers < 1 || info.SubstituteLayers != info.OffloadedLayers):
			t.Fatalf("offloaded only: %+v", info)
		case opts.SubstituteLayers != nil && info.SubstituteLayers != 1:
			t.Fatalf("one layer: %+v", info)
		}
		p, err := eng.StepParams()
		if err != nil || !p.Speculate {
			t.Fatalf("engine step params: %+v %v", p, err)
		}
		p.AdaptiveDepth = true
		if out, _ := generate(t, eng, prompt, &p); !equal(out, greedy) {
			t.Fatalf("%+v adaptive: %v, want %v", opts, out, greedy)
		}
		eng.Close()
	}
	// A draft over the first half of the vocabulary: still lossless, no memory; past the
	// vocabulary: refused by name.
	full, err := Load(tiny, &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := full.Info()
	full.Close()
	half, err := Load(tiny, &LoadOptions{ContextLength: 256, DraftVocab: uint32(fi.VocabSize / 2)})
	if err != nil {
		t.Fatal(err)
	}
	if hi, _ := half.Info(); hi.DraftLMHeadBytes != 0 {
		t.Fatalf("a view of the target's head: %+v", hi)
	}
	if out, _ := generate(t, half, prompt, nil); !equal(out, greedy) {
		t.Fatalf("half-vocabulary draft: %v, want %v", out, greedy)
	}
	half.Close()
	var ve *Error
	_, err = Load(tiny, &LoadOptions{ContextLength: 256, DraftVocab: uint32(fi.VocabSize + 1)})
	if !errors.As(err, &ve) || ve.Status != StatusInvalidArgument || !strings.Contains(ve.Message, "draft_vocab") {
		t.Fatalf("draft vocabulary past the model: %v", err)
	}
	// A ranking head of 32 tokens: its own bytes, lossless; none (with QuantizeLMHead:
	// the 4-bit head as before); more than the vocabulary: refused.
	ranked, err := Load(tiny, &LoadOptions{ContextLength: 256, DraftShortlist: 32})
	if err != nil {
		t.Fatal(err)
	}
	if ri, _ := ranked.Info(); ri.DraftLMHeadBytes == 0 {
		t.Fatalf("a ranking head has bytes: %+v", ri)
	}
	if out, _ := generate(t, ranked, prompt, nil); !equal(out, greedy) {
		t.Fatalf("ranking-head draft: %v, want %v", out, greedy)
	}
	ranked.Close()
	rawHead, err := Load(tiny, &LoadOptions{ContextLength: 256, QuantizeLMHead: true, DraftShortlist: ShortlistNone})
	if err != nil {
		t.Fatal(err)
	}
	rawHead.Close()
	_, err = Load(tiny, &LoadOptions{ContextLength: 256, DraftShortlist: uint32(fi.VocabSize + 1)})
	if !errors.As(err, &ve) || ve.Status != StatusInvalidArgument || !strings.Contains(ve.Message, "shortlist") {
		t.Fatalf("shortlist past the vocabulary: %v", err)
	}
	// The KV cache's type: f32 plans more than the default f16 cache; with each type
	// speculative decoding equals plain decoding; an unknown type is refused by name.
	kv32 := LoadOptions{ContextLength: 256, KVDtype: KVF32}
	if min32, err := MinimumBudget(tiny, &kv32); err != nil || min32 <= shared {
		t.Fatalf("an f32 KV cache: minimum %d vs the default's %d (%v)", min32, shared, err)
	}
	for _, kv := range []KVDtype{KVF32, KVBF16} {
		e, err := Load(tiny, &LoadOptions{ContextLength: 256, KVDtype: kv})
		if err != nil {
			t.Fatal(err)
		}
		plain := DefaultStepParams()
		plain.Speculate = false
		spec, _ := generate(t, e, prompt, nil)
		if out, _ := generate(t, e, prompt, &plain); len(out) == 0 || !equal(out, spec) {
			t.Fatalf("KV type %d: speculative %v, plain %v", kv, spec, out)
		}
		e.Close()
	}
	_, err = Load(tiny, &LoadOptions{ContextLength: 256, KVDtype: 7})
	if !errors.As(err, &ve) || ve.Status != StatusInvalidArgument || !strings.Contains(ve.Message, "kv_dtype 7") {
		t.Fatalf("an unknown KV type: %v", err)
	}
	// Planned for two sequences: a third is refused until one is closed.
	two := LoadOptions{ContextLength: 256, MaxSequences: 2}
	if min2, err := MinimumBudget(tiny, &two); err != nil || min2 <= shared {
		t.Fatalf("two sequences: minimum %d vs one's %d (%v)", min2, shared, err)
	}
	eng, err := Load(tiny, &two)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := eng.NewSequence()
	b, _ := eng.NewSequence()
	var e *Error
	if _, err := eng.NewSequence(); !errors.As(err, &e) || e.Status != StatusOutOfMemory ||
		!strings.Contains(e.Message, "planned for 2 sequences") {
		t.Fatalf("third sequence: %v", err)
	}
	a.Close()
	if c, err := eng.NewSequence(); err != nil {
		t.Fatalf("after a close: %v", err)
	} else {
		c.Close()
	}
	b.Close()
	eng.Close()
	if _, err := Load(tiny, &LoadOptions{SubstituteLayers: []uint32{0, 0}}); !errors.As(err, &e) ||
		e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "twice") {
		t.Fatalf("repeated layer: %v", err)
	}
}

// A stateful host sampler (greedy after a repetition penalty on what it has picked) walks
// verified trees exactly as it decodes plainly; state errors leave the sequence unchanged.
func TestHostSampling(t *testing.T) {
	eng, err := Load(filepath.Join(fixtures(t), "tiny"), &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	info, err := eng.Info()
	if err != nil {
		t.Fatal(err)
	}
	vocab := info.VocabSize
	sampler := func() func([]float32) int32 {
		var seen []int32
		return func(l []float32) int32 {
			best, vb := int32(0), float32(0)
			for i, x := range l {
				for _, s := range seen {
					if s == int32(i) {
						if x > 0 {
							x /= 1.5
						} else {
							x *= 1.5
						}
						break
					}
				}
				if i == 0 || x > vb {
					best, vb = int32(i), x
				}
			}
			seen = append(seen, best)
			return best
		}
	}
	prompt := parseIDs(expected(t, "tiny")["prompt"])
	a, _ := eng.NewSequence()
	pick := sampler()
	var plain []int32
	input := prompt
	for len(plain) < 32 {
		l, err := a.Eval(input, vocab)
		if err != nil {
			t.Fatal(err)
		}
		plain = append(plain, pick(l))
		input = plain[len(plain)-1:]
	}
	p, err := eng.StepParams()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := eng.NewSequence()
	pick = sampler()
	var spec []int32
	input = prompt
	for len(spec) < 32 {
		got, err := b.IterSample(input, &p, pick, 32-len(spec))
		if err != nil {
			t.Fatal(err)
		}
		spec = append(spec, got...)
		input = nil
	}
	if !equal(spec, plain) {
		t.Fatalf("host walk %v, plain %v", spec, plain)
	}
	before, _ := b.Stats()
	if _, err := b.IterEnd(); err == nil || err.(*Error).Status != StatusInvalidState {
		t.Fatalf("end with none open: %v", err)
	}
	if err := b.IterBegin(nil, &p); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Step(nil, &p, 4); err == nil || err.(*Error).Status != StatusInvalidState {
		t.Fatalf("step while open: %v", err)
	}
	top, err := b.IterTopLogprobs(3)
	if err != nil || len(top) != 3 || top[0].Logprob < top[1].Logprob || top[1].Logprob < top[2].Logprob {
		t.Fatalf("top logprobs %v %v", top, err)
	}
	if err := b.IterCancel(); err != nil {
		t.Fatal(err)
	}
	if after, _ := b.Stats(); after.Length != before.Length || before.Generated != 32 {
		t.Fatalf("cancel: %d tokens, want %d (generated %d)", after.Length, before.Length, before.Generated)
	}
}

// A context cancels a generation mid-step (through the library's abort, between decoder
// layers); the sequence keeps what was generated before and goes on to exactly the
// tokens an uninterrupted generation gives.
func TestContextCancellation(t *testing.T) {
	want := expected(t, "smollm2")
	if _, err := os.Stat(want["model"]); err != nil {
		t.Skip("SmolLM2 not fetched")
	}
	eng, err := Load(want["model"], &LoadOptions{ContextLength: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	prompt := parseIDs(want["prompt"])
	p, _ := eng.StepParams()

	// A long prompt's prefill, cancelled 20 ms in: stopped mid-step, nothing changed.
	seq, _ := eng.NewSequence()
	defer seq.Close()
	long := make([]int32, 0, 600)
	for len(long) < 600 {
		long = append(long, prompt...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = seq.StepContext(ctx, long, &p, 8)
	var ce *ContextError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ce) || ce.Step.Status != StatusAborted {
		t.Fatalf("a step past its deadline: %v", err)
	}
	if st, _ := seq.Stats(); st.Length != 0 {
		t.Fatalf("the aborted step left %d tokens", st.Length)
	}
	t.Logf("aborted %v after the call began: %v", time.Since(t0), err)
	// An expired context fails before the call; the sequence works afterwards.
	if _, err := seq.StepContext(ctx, prompt, &p, 8); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an expired context: %v", err)
	}

	// The reference, uninterrupted.
	ref, _ := eng.NewSequence()
	defer ref.Close()
	full, err := ref.Generate(prompt, &p, 48)
	if err != nil {
		t.Fatal(err)
	}
	// Streamed, cancelled after the first tokens arrive.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	tokens, wait := seq.Stream(ctx2, prompt, &p, 48)
	var got []int32
	for tok := range tokens {
		got = append(got, tok)
		if len(got) == 1 {
			cancel2()
		}
	}
	if err := wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled stream: %v (%d tokens)", err, len(got))
	}
	if len(got) >= len(full) || !equal(got, full[:len(got)]) {
		t.Fatalf("before the cancellation: %v, want a proper prefix of %v", got, full)
	}
	// Reuse: the sequence holds the prompt and what was streamed; it continues exactly.
	if st, _ := seq.Stats(); st.Length != uint64(len(prompt)+len(got)) {
		t.Fatalf("after the cancellation the sequence has %d tokens, want %d", st.Length, len(prompt)+len(got))
	}
	rest, err := seq.GenerateContext(context.Background(), nil, &p, len(full)-len(got))
	if err != nil {
		t.Fatal(err)
	}
	if !equal(append(got, rest...), full) {
		t.Fatalf("resumed: %v, want %v", append(got, rest...), full)
	}
}

// stepUntil steps seq alone, maxTokens at a time, until it has at least n new tokens.
func stepUntil(t *testing.T, seq *Sequence, prompt []int32, p *StepParams, n, maxTokens int) []int32 {
	var out []int32
	input := prompt
	for len(out) < n {
		got, err := seq.Step(input, p, maxTokens)
		if err != nil {
			t.Fatal(err)
		}
		input = nil
		out = append(out, got...)
	}
	return out
}

// checkBatch: three sequences with their own prompts and params (greedy speculative,
// seeded sampling, plain), stepped together until each has n tokens (each leaves the
// batch when done), get exactly the tokens that their own Step calls give. (How many
// come per call may differ: in a batch of several, a step with new input is a plain one.)
func checkBatch(t *testing.T, path string, prompt []int32) {
	eng, err := Load(path, &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	greedy, err := eng.StepParams()
	if err != nil || !greedy.Speculate {
		t.Fatalf("engine step params: %+v %v", greedy, err)
	}
	plain := DefaultStepParams()
	plain.Speculate = false
	rev := make([]int32, len(prompt))
	for i, id := range prompt {
		rev[len(prompt)-1-i] = id
	}
	prompts := [][]int32{prompt, rev, append(append([]int32{}, prompt[1:]...), prompt...)}
	params := []*StepParams{&greedy, sampled(), &plain}
	const n, maxTokens = 24, 6
	want := make([][]int32, 3)
	for i := range prompts {
		seq, err := eng.NewSequence()
		if err != nil {
			t.Fatal(err)
		}
		want[i] = stepUntil(t, seq, prompts[i], params[i], n, maxTokens)[:n]
		seq.Close()
	}
	seqs := make([]*Sequence, 3)
	for i := range seqs {
		if seqs[i], err = eng.NewSequence(); err != nil {
			t.Fatal(err)
		}
		defer seqs[i].Close()
	}
	got := make([][]int32, 3)
	gotChunks := make([][]int, 3)
	calls := 0
	for {
		var bs []*Sequence
		var bin [][]int32
		var bp []*StepParams
		var idx []int
		for i := range seqs {
			if len(got[i]) >= n {
				continue
			}
			in := []int32{}
			if got[i] == nil {
				in = prompts[i]
			}
			bs, bin, bp, idx = append(bs, seqs[i]), append(bin, in), append(bp, params[i]), append(idx, i)
		}
		if len(bs) == 0 {
			break
		}
		toks, errs, err := eng.StepBatch(bs, bin, bp, maxTokens)
		if err != nil {
			t.Fatalf("batch %d: %v", calls, err)
		}
		calls++
		for j, i := range idx {
			if errs[j] != nil {
				t.Fatalf("batch %d, sequence %d: %v", calls, i, errs[j])
			}
			if len(toks[j]) < 1 || len(toks[j]) > maxTokens {
				t.Fatalf("batch %d, sequence %d: %d tokens", calls, i, len(toks[j]))
			}
			got[i] = append(got[i], toks[j]...)
			gotChunks[i] = append(gotChunks[i], len(toks[j]))
		}
	}
	for i := range seqs {
		if !equal(got[i][:n], want[i]) {
			t.Fatalf("sequence %d batched: %v (per call %v), alone: %v", i, got[i], gotChunks[i], want[i])
		}
		if st, _ := seqs[i].Stats(); st.Length != uint64(len(prompts[i])+len(got[i])) {
			t.Fatalf("sequence %d holds %d tokens, want %d", i, st.Length, len(prompts[i])+len(got[i]))
		}
	}
	t.Logf("%s: 3 sequences x %d tokens in %d batched calls (tokens per call %v)", filepath.Base(path), n, calls, gotChunks)
}

func TestStepBatchMatchesStep(t *testing.T) {
	checkBatch(t, filepath.Join(fixtures(t), "tiny"), parseIDs(expected(t, "tiny")["prompt"]))
	want := expected(t, "smollm2")
	if _, err := os.Stat(want["model"]); err != nil {
		t.Log("SmolLM2 not fetched: the tiny model only")
		return
	}
	checkBatch(t, want["model"], parseIDs(want["prompt"]))
}

// One sequence's bad input fails it alone (INVALID_TOKEN, unchanged); the others step.
// Wrong lengths, a nil, closed or repeated sequence fail the whole call, nothing changed.
func TestStepBatchErrors(t *testing.T) {
	eng, err := Load(filepath.Join(fixtures(t), "tiny"), &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	info, err := eng.Info()
	if err != nil {
		t.Fatal(err)
	}
	prompt := parseIDs(expected(t, "tiny")["prompt"])
	ref, _ := eng.NewSequence()
	defer ref.Close()
	refOut := stepUntil(t, ref, prompt, nil, 8, 4)
	prefix := func(a []int32) bool { return len(a) > 0 && len(a) <= len(refOut) && equal(a, refOut[:len(a)]) }
	seqs := make([]*Sequence, 3)
	for i := range seqs {
		seqs[i], _ = eng.NewSequence()
		defer seqs[i].Close()
	}
	lengths := func() []uint64 {
		var l []uint64
		for _, s := range seqs {
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			l = append(l, st.Length)
		}
		return l
	}
	for _, bad := range []int32{-1, int32(info.VocabSize)} {
		before := lengths()
		inputs := [][]int32{prompt, {prompt[0], bad}, prompt}
		if before[0] > 0 {
			inputs[0], inputs[2] = nil, nil
		}
		toks, errs, err := eng.StepBatch(seqs, inputs, nil, 4)
		if err != nil {
			t.Fatalf("token %d: the call failed: %v", bad, err)
		}
		var e *Error
		if !errors.As(errs[1], &e) || e.Status != StatusInvalidToken || toks[1] != nil {
			t.Fatalf("token %d: %v %v", bad, toks[1], errs[1])
		}
		if !strings.Contains(e.Message, "seqs[1]") {
			t.Fatalf("token %d: message %q", bad, e.Message)
		}
		after := lengths()
		if after[1] != before[1] {
			t.Fatalf("token %d: the failed sequence went from %d to %d tokens", bad, before[1], after[1])
		}
		for _, i := range []int{0, 2} {
			if errs[i] != nil || len(toks[i]) == 0 || after[i] != before[i]+uint64(len(inputs[i])+len(toks[i])) {
				t.Fatalf("token %d: sequence %d: %v %v (%d -> %d tokens)", bad, i, toks[i], errs[i], before[i], after[i])
			}
		}
		if before[0] == 0 && (!prefix(toks[0]) || !prefix(toks[2])) {
			t.Fatalf("token %d: %v and %v, alone %v", bad, toks[0], toks[2], refOut)
		}
	}
	// The failed sequence steps afterwards.
	if toks, errs, err := eng.StepBatch(seqs[1:2], [][]int32{prompt}, nil, 4); err != nil || errs[0] != nil || !prefix(toks[0]) {
		t.Fatalf("after its failures: %v %v %v, want %v", toks, errs, err, refOut)
	}

	// Two failures: each sequence's own message.
	before := lengths()
	toks, errs, err := eng.StepBatch(seqs, [][]int32{{-1}, {int32(info.VocabSize)}, nil}, nil, 4)
	var e0, e1 *Error
	if err != nil || !errors.As(errs[0], &e0) || !errors.As(errs[1], &e1) || errs[2] != nil ||
		e0.Status != StatusInvalidToken || e1.Status != StatusInvalidToken || toks[0] != nil || toks[1] != nil ||
		!strings.HasPrefix(e0.Message, "seqs[0]: ") || !strings.Contains(e0.Message, "-1") ||
		!strings.HasPrefix(e1.Message, "seqs[1]: ") || !strings.Contains(e1.Message, fmt.Sprint(info.VocabSize)) {
		t.Fatalf("two bad inputs: %v %v %v", toks, errs, err)
	}
	if after := lengths(); after[0] != before[0] || after[1] != before[1] || after[2] != before[2]+uint64(len(toks[2])) {
		t.Fatalf("two bad inputs: lengths %v, were %v", after, before)
	}
	t.Logf("two bad inputs: %v; %v", errs[0], errs[1])

	before = lengths()
	whole := func(what string, status Status, seqs []*Sequence, inputs [][]int32, params []*StepParams) {
		t.Helper()
		toks, errs, err := eng.StepBatch(seqs, inputs, params, 4)
		var e *Error
		if !errors.As(err, &e) || e.Status != status || toks != nil || errs != nil {
			t.Fatalf("%s: %v %v %v, want status %v", what, toks, errs, err, status)
		}
		if after := lengths(); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("%s: lengths %v, were %v", what, after, before)
		}
		t.Logf("%s: %v", what, err)
	}
	if toks, errs, err := eng.StepBatch(nil, nil, nil, 4); err != nil || len(toks) != 0 || len(errs) != 0 {
		t.Fatalf("no sequences: %v %v %v", toks, errs, err)
	}
	var big *Error
	if _, _, err := eng.StepBatch(seqs, nil, nil, 1<<30); !errors.As(err, &big) || big.Status != StatusInvalidArgument {
		t.Fatalf("3 x 2^30 tokens: %v", err)
	}
	p := DefaultStepParams()
	whole("two inputs for three sequences", StatusInvalidArgument, seqs, [][]int32{nil, nil}, nil)
	whole("four params for three sequences", StatusInvalidArgument, seqs, nil, []*StepParams{&p, &p, &p, &p})
	whole("a nil sequence", StatusNullPointer, []*Sequence{seqs[0], nil}, nil, nil)
	whole("a sequence twice", StatusInvalidArgument, []*Sequence{seqs[0], seqs[2], seqs[0]}, nil, nil)
	closed, _ := eng.NewSequence()
	closed.Close()
	whole("a closed sequence", StatusNullPointer, []*Sequence{seqs[0], closed}, nil, nil)
	other, err := Load(filepath.Join(fixtures(t), "tiny"), &LoadOptions{ContextLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	foreign, _ := other.NewSequence()
	defer foreign.Close()
	whole("another engine's sequence", StatusInvalidArgument, []*Sequence{seqs[0], foreign}, nil, nil)
}
