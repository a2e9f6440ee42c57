// Package subspec is a thin Go binding over the subspec C ABI (include/subspec.h):
// lossless speculative decoding for LLMs whose weights do not fit on the device.
//
//	engine, err := subspec.Load("models/smollm2-135m-instruct", nil)
//	if err != nil { ... }
//	defer engine.Close()
//	seq, _ := engine.NewSequence()
//	defer seq.Close()
//	out, err := seq.Generate([]int32{504, 1296, 3340}, nil, 64)
//
// It links libsubspec through pkg-config (`subspec.pc`, see scripts/install.sh). The C
// structs are size-versioned: parameters start from the library's own init functions and
// outputs are passed with struct_size set, so the binding keeps working with a newer
// library. An Engine
// may be shared by many goroutines; a Sequence is used by one goroutine at a time. Closing
// an Engine while its sequences are open is safe: they keep the model alive.
package subspec

/*
#cgo pkg-config: subspec
#include <stdlib.h>
#include "subspec.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// Status is a C status code (SUBSPEC_STATUS_*).
type Status uint32

// The status codes of the C ABI.
const (
	StatusOK                Status = C.SUBSPEC_STATUS_OK
	StatusIO                Status = C.SUBSPEC_STATUS_IO
	StatusInvalidModel      Status = C.SUBSPEC_STATUS_INVALID_MODEL
	StatusUnsupported       Status = C.SUBSPEC_STATUS_UNSUPPORTED
	StatusInvalidArgument   Status = C.SUBSPEC_STATUS_INVALID_ARGUMENT
	StatusInvalidToken      Status = C.SUBSPEC_STATUS_INVALID_TOKEN
	StatusContextFull       Status = C.SUBSPEC_STATUS_CONTEXT_FULL
	StatusOutOfMemory       Status = C.SUBSPEC_STATUS_OUT_OF_MEMORY
	StatusDeviceUnavailable Status = C.SUBSPEC_STATUS_DEVICE_UNAVAILABLE
	StatusTokenizer         Status = C.SUBSPEC_STATUS_TOKENIZER
	StatusAborted           Status = C.SUBSPEC_STATUS_ABORTED
	StatusInternal          Status = C.SUBSPEC_STATUS_INTERNAL
	StatusNullPointer       Status = C.SUBSPEC_STATUS_NULL_POINTER
	StatusBufferTooSmall    Status = C.SUBSPEC_STATUS_BUFFER_TOO_SMALL
	StatusPanic             Status = C.SUBSPEC_STATUS_PANIC
	StatusInvalidState      Status = C.SUBSPEC_STATUS_INVALID_STATE
)

// String is the status's short description ("I/O error", ...).
func (s Status) String() string { return C.GoString(C.subspec_status_string(C.uint32_t(s))) }

// Error is a failed call: its status and the library's message.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("subspec: %v: %s", e.Status, e.Message) }

// Version is the library version, e.g. "0.2.0".
func Version() string { return C.GoString(C.subspec_version()) }

// call runs f on a locked OS thread, so that the thread-local last error read on failure
// is the one f left.
func call(f func() C.subspec_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.SUBSPEC_STATUS_OK {
		return nil
	}
	return &Error{Status: Status(st), Message: lastError()}
}

// message is what read copies out (subspec_last_error or subspec_sequence_last_error):
// a size query, then the copy.
func message(read func(buf *C.char, capacity C.size_t, needed *C.size_t)) string {
	var needed C.size_t
	read(nil, 0, &needed)
	buf := make([]byte, int(needed)+1)
	read((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &needed)
	return C.GoString((*C.char)(unsafe.Pointer(&buf[0])))
}

// lastError is the message of the last failed call on this thread (call it with the OS
// thread locked, as call does).
func lastError() string {
	return message(func(buf *C.char, capacity C.size_t, needed *C.size_t) {
		C.subspec_last_error(nil, buf, capacity, needed)
	})
}

// sequenceError is the message of the last failed call on a sequence, or of its part of
// a batch (any thread).
func sequenceError(h *C.subspec_sequence) string {
	return message(func(buf *C.char, capacity C.size_t, needed *C.size_t) {
		C.subspec_sequence_last_error(h, buf, capacity, needed)
	})
}

// Device selects where the model runs: DeviceCPU (the zero value) or DeviceCUDA(n).
type Device int32

// DeviceCPU is the CPU backend.
const DeviceCPU Device = 0

// DeviceCUDA is CUDA device `ordinal`.
func DeviceCUDA(ordinal int) Device { return Device(ordinal + 1) }

// LoadOptions tunes Load; the zero value (or nil) means the library's defaults.
type LoadOptions struct {
	Device        Device
	MemoryBudget  uint64 // bytes; 0 keeps everything resident
	ContextLength uint32 // 0: the model's maximum
	MaxTreeTokens uint32 // largest verified tree; 0: 128
	Threads       uint32 // 0: one per core
	NoDraft       bool   // skip building the substitute draft (plain steps only)
	DraftBits     uint32 // 0: 4
	DraftGroup    uint32 // 0: 64
	DraftRTN      bool   // round-to-nearest instead of HQQ
	// QuantizeLMHead gives the draft its own quantized lm_head whose logits are the
	// draft's (default false; on the CPU the draft has a 2-bit ranking head either way:
	// see quantize_lm_head in include/subspec.h).
	QuantizeLMHead bool
	// SubstituteOffloadedOnly gives substitutes to the offloaded layers only (the
	// paper's draft; default: every layer, resident ones too).
	SubstituteOffloadedOnly bool
	// SubstituteLayers lists exactly the decoder layers that get substitutes (nil: the
	// default choice).
	SubstituteLayers []uint32
	// MaxSequences is how many sequences may be alive at once: the planner reserves a KV
	// cache for each and NewSequence refuses one more (StatusOutOfMemory) until one is
	// closed. 0: planned for one, not limited.
	MaxSequences uint32
	// DraftVocab lets the draft propose only token ids below it (its head is the first
	// rows of the target's: cheaper draft steps, no memory, lower acceptance). 0: all.
	DraftVocab uint32
	// DraftShortlist gives the draft a ranking head: its own quantized lm_head only ranks
	// the vocabulary and this many tokens it ranks first per draft row get the target
	// head's logits. 0: the engine's choice (128 on the CPU for 2,048+ tokens unless
	// QuantizeLMHead); ShortlistNone: none.
	DraftShortlist uint32
	// DraftHeadBits is the bits of the draft's own lm_head (0: 2 for a ranking head,
	// otherwise DraftBits).
	DraftHeadBits uint32
	// KVDtype is the KV cache's element type (KVDefault: f16 on the CPU, f32 on CUDA);
	// the planner counts its bytes.
	KVDtype KVDtype
}

// KVDtype is the element type of the KV cache (subspec_load_params.kv_dtype).
type KVDtype uint32

// The KV cache types.
const (
	KVDefault KVDtype = C.SUBSPEC_KV_DEFAULT // the device's: f16 on the CPU, f32 on CUDA
	KVF32     KVDtype = C.SUBSPEC_KV_F32
	KVF16     KVDtype = C.SUBSPEC_KV_F16  // CPU only
	KVBF16    KVDtype = C.SUBSPEC_KV_BF16 // CPU only
)

// ShortlistNone is LoadOptions.DraftShortlist for no ranking head.
const ShortlistNone uint32 = C.SUBSPEC_SHORTLIST_NONE

// Engine is a loaded model.
type Engine struct {
	h *C.subspec_engine
}

// params fills C load parameters (from the library's defaults); call free when done.
func params(path string, opts *LoadOptions) (p C.subspec_load_params, free func(), err error) {
	if opts == nil {
		opts = &LoadOptions{}
	}
	if err = call(func() C.subspec_status { return C.subspec_load_params_init(&p, C.sizeof_subspec_load_params) }); err != nil {
		return p, func() {}, err
	}
	cpath := C.CString(path)
	p.model_path = cpath
	p.max_tree_tokens = C.uint32_t(opts.MaxTreeTokens)
	p.device = C.int32_t(opts.Device) - 1
	p.memory_budget = C.uint64_t(opts.MemoryBudget)
	p.context_length = C.uint32_t(opts.ContextLength)
	p.threads = C.uint32_t(opts.Threads)
	p.build_draft = C.bool(!opts.NoDraft)
	if opts.DraftBits != 0 {
		p.draft_bits = C.uint32_t(opts.DraftBits)
	}
	if opts.DraftGroup != 0 {
		p.draft_group = C.uint32_t(opts.DraftGroup)
	}
	if opts.DraftRTN {
		p.draft_method = C.SUBSPEC_QUANT_RTN
	}
	p.quantize_lm_head = C.bool(opts.QuantizeLMHead)
	p.substitute_all_layers = C.bool(!opts.SubstituteOffloadedOnly)
	p.max_sequences = C.uint32_t(opts.MaxSequences)
	p.draft_vocab = C.uint32_t(opts.DraftVocab)
	p.draft_shortlist = C.uint32_t(opts.DraftShortlist)
	p.draft_head_bits = C.uint32_t(opts.DraftHeadBits)
	p.kv_dtype = C.uint32_t(opts.KVDtype)
	// The layer list in C memory: cgo forbids passing C a struct holding a Go pointer.
	var layers *C.uint32_t
	if n := len(opts.SubstituteLayers); n > 0 {
		layers = (*C.uint32_t)(C.malloc(C.size_t(n) * C.sizeof_uint32_t))
		copy(unsafe.Slice(layers, n), unsafe.Slice((*C.uint32_t)(unsafe.Pointer(&opts.SubstituteLayers[0])), n))
		p.substitute_layers = layers
		p.n_substitute_layers = C.size_t(n)
	}
	return p, func() {
		C.free(unsafe.Pointer(cpath))
		C.free(unsafe.Pointer(layers))
	}, nil
}

// MinimumBudget is the smallest MemoryBudget with which path loads under opts (reads only
// config.json and the safetensors headers).
func MinimumBudget(path string, opts *LoadOptions) (uint64, error) {
	p, free, err := params(path, opts)
	defer free()
	if err != nil {
		return 0, err
	}
	var min C.uint64_t
	if err := call(func() C.subspec_status { return C.subspec_minimum_budget(&p, &min) }); err != nil {
		return 0, err
	}
	return uint64(min), nil
}

// Load loads the model directory at path.
func Load(path string, opts *LoadOptions) (*Engine, error) {
	p, free, err := params(path, opts)
	defer free()
	if err != nil {
		return nil, err
	}
	var h *C.subspec_engine
	if err := call(func() C.subspec_status { return C.subspec_load(&p, &h) }); err != nil {
		return nil, err
	}
	e := &Engine{h: h}
	runtime.SetFinalizer(e, (*Engine).Close)
	return e, nil
}

// Close releases the engine (idempotent). Open sequences keep the model alive.
func (e *Engine) Close() error {
	if e.h != nil {
		C.subspec_free(e.h)
		e.h = nil
		runtime.SetFinalizer(e, nil)
	}
	return nil
}

// ModelInfo describes the model, for checking that a tokenizer matches.
type ModelInfo struct {
	Architecture       string
	VocabSize          int
	Layers             int
	Hidden             int
	MaxPosition        int
	ContextLength      int
	MaxTreeTokens      int
	OffloadedLayers    int
	SubstituteLayers   int    // decoder layers the draft replaces (0 without a draft)
	DraftBytes         uint64 // the draft's substitutes and own lm_head
	DraftLMHeadBytes   uint64 // of which its own quantized lm_head (0: the target's)
	BOS                int32  // -1: none
	HasDraft           bool
	HasTokenizer       bool
	TokenizerVocabSize int
	Threads            int
}

// Info returns the model's metadata.
func (e *Engine) Info() (ModelInfo, error) {
	var i C.subspec_model_info
	i.struct_size = C.sizeof_subspec_model_info
	err := call(func() C.subspec_status { return C.subspec_get_model_info(e.h, &i) })
	runtime.KeepAlive(e)
	if err != nil {
		return ModelInfo{}, err
	}
	return ModelInfo{
		Architecture: C.GoString(i.architecture), VocabSize: int(i.vocab_size),
		Layers: int(i.n_layers), Hidden: int(i.hidden_size), MaxPosition: int(i.max_position),
		ContextLength: int(i.context_length), MaxTreeTokens: int(i.max_tree_tokens),
		OffloadedLayers: int(i.n_offloaded_layers), SubstituteLayers: int(i.n_substitute_layers),
		DraftBytes: uint64(i.draft_bytes), DraftLMHeadBytes: uint64(i.draft_lm_head_bytes),
		BOS: int32(i.bos_id), HasDraft: bool(i.has_draft),
		HasTokenizer: bool(i.has_tokenizer), TokenizerVocabSize: int(i.tokenizer_vocab_size),
		Threads: int(i.threads),
	}, nil
}

// IsEOS reports whether token ends generation.
func (e *Engine) IsEOS(token int32) bool {
	r := bool(C.subspec_is_eos(e.h, C.int32_t(token)))
	runtime.KeepAlive(e)
	return r
}

// EOSIDs returns the end-of-sequence ids.
func (e *Engine) EOSIDs() ([]int32, error) {
	ids := make([]int32, 16)
	var n C.size_t
	err := call(func() C.subspec_status {
		return C.subspec_eos_ids(e.h, (*C.int32_t)(&ids[0]), C.size_t(len(ids)), &n)
	})
	runtime.KeepAlive(e)
	if err != nil {
		return nil, err
	}
	return ids[:n], nil
}

// Tokenize encodes text (with the model's special tokens such as BOS when addSpecial).
func (e *Engine) Tokenize(text string, addSpecial bool) ([]int32, error) {
	ct := C.CString(text)
	defer C.free(unsafe.Pointer(ct))
	ids := make([]int32, len(text)+8)
	var n C.size_t
	err := call(func() C.subspec_status {
		return C.subspec_tokenize(e.h, ct, C.bool(addSpecial), (*C.int32_t)(&ids[0]), C.size_t(len(ids)), &n)
	})
	runtime.KeepAlive(e)
	if err != nil {
		return nil, err
	}
	return ids[:n], nil
}

// Detokenize decodes ids to text.
func (e *Engine) Detokenize(ids []int32) (string, error) {
	var needed C.size_t
	var ptr *C.int32_t
	if len(ids) > 0 {
		ptr = (*C.int32_t)(&ids[0])
	}
	st := call(func() C.subspec_status { return C.subspec_detokenize(e.h, ptr, C.size_t(len(ids)), nil, 0, &needed) })
	if err, ok := st.(*Error); !ok || err.Status != StatusBufferTooSmall {
		runtime.KeepAlive(e)
		return "", st
	}
	buf := make([]byte, int(needed))
	err := call(func() C.subspec_status {
		return C.subspec_detokenize(e.h, ptr, C.size_t(len(ids)), (*C.char)(unsafe.Pointer(&buf[0])), needed, &needed)
	})
	runtime.KeepAlive(e)
	if err != nil {
		return "", err
	}
	return string(buf[:needed-1]), nil
}

// Sequence is one conversation with its own KV cache.
type Sequence struct {
	h   *C.subspec_sequence
	eos []int32
}

// NewSequence creates an empty sequence.
func (e *Engine) NewSequence() (*Sequence, error) {
	eos, err := e.EOSIDs()
	if err != nil {
		return nil, err
	}
	var h *C.subspec_sequence
	err = call(func() C.subspec_status { return C.subspec_sequence_create(e.h, &h) })
	runtime.KeepAlive(e)
	if err != nil {
		return nil, err
	}
	s := &Sequence{h: h, eos: eos}
	runtime.SetFinalizer(s, (*Sequence).Close)
	return s, nil
}

// Close frees the sequence (idempotent).
func (s *Sequence) Close() error {
	if s.h != nil {
		C.subspec_sequence_free(s.h)
		s.h = nil
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

// StepParams chooses how Step picks tokens; start from DefaultStepParams or
// Engine.StepParams.
type StepParams struct {
	Temperature      float32 // 0: greedy
	TopK             uint32  // 0: all
	TopP             float32 // 1: all
	Seed             uint64
	Speculate        bool
	TreeWidth        uint32
	TreeDepth        uint32 // the most, with AdaptiveDepth
	TreeMaxTokens    uint32
	DraftTemperature float32
	AdaptiveDepth    bool // stop growing the tree early when another draft step does not pay
	AutoDepth        bool // each step's depth (0: plain) by measured cost and acceptance
}

func stepParams(p *C.subspec_step_params) StepParams {
	return StepParams{
		Temperature: float32(p.temperature), TopK: uint32(p.top_k), TopP: float32(p.top_p),
		Seed: uint64(p.seed), Speculate: bool(p.speculate), TreeWidth: uint32(p.tree_width),
		TreeDepth: uint32(p.tree_depth), TreeMaxTokens: uint32(p.tree_max_tokens),
		DraftTemperature: float32(p.draft_temperature), AdaptiveDepth: bool(p.adaptive_depth),
		AutoDepth: bool(p.auto_depth),
	}
}

// DefaultStepParams is greedy speculative decoding with the default tree.
func DefaultStepParams() StepParams {
	var p C.subspec_step_params
	if st := C.subspec_step_params_init(&p, C.sizeof_subspec_step_params); st != C.SUBSPEC_STATUS_OK {
		panic("subspec_step_params_init: " + Status(st).String())
	}
	return stepParams(&p)
}

// StepParams are the step parameters that pay best for the engine: greedy, speculative,
// with the tree shape suited to its placement.
func (e *Engine) StepParams() (StepParams, error) {
	var p C.subspec_step_params
	err := call(func() C.subspec_status {
		return C.subspec_engine_step_params_init(e.h, &p, C.sizeof_subspec_step_params)
	})
	runtime.KeepAlive(e)
	if err != nil {
		return StepParams{}, err
	}
	return stepParams(&p), nil
}

func (p *StepParams) c() (C.subspec_step_params, error) {
	var c C.subspec_step_params
	if err := call(func() C.subspec_status { return C.subspec_step_params_init(&c, C.sizeof_subspec_step_params) }); err != nil {
		return c, err
	}
	c.temperature, c.top_k, c.top_p = C.float(p.Temperature), C.uint32_t(p.TopK), C.float(p.TopP)
	c.seed, c.speculate = C.uint64_t(p.Seed), C.bool(p.Speculate)
	c.tree_width, c.tree_depth = C.uint32_t(p.TreeWidth), C.uint32_t(p.TreeDepth)
	c.tree_max_tokens, c.draft_temperature = C.uint32_t(p.TreeMaxTokens), C.float(p.DraftTemperature)
	c.adaptive_depth, c.auto_depth = C.bool(p.AdaptiveDepth), C.bool(p.AutoDepth)
	return c, nil
}

// Step appends input (may be empty) and returns the next tokens: one, or every token of
// one speculative iteration, at most maxTokens. p nil means DefaultStepParams. On error
// the sequence is unchanged.
func (s *Sequence) Step(input []int32, p *StepParams, maxTokens int) ([]int32, error) {
	if p == nil {
		d := DefaultStepParams()
		p = &d
	}
	if maxTokens < 1 {
		maxTokens = 1
	}
	cp, err := p.c()
	if err != nil {
		return nil, err
	}
	out := make([]int32, maxTokens)
	var in *C.int32_t
	if len(input) > 0 {
		in = (*C.int32_t)(&input[0])
	}
	var n C.size_t
	err = call(func() C.subspec_status {
		return C.subspec_step(s.h, &cp, in, C.size_t(len(input)), (*C.int32_t)(&out[0]), C.size_t(len(out)), &n)
	})
	runtime.KeepAlive(s)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// cArray is n elements of T (at least one, so that the pointer is never NULL) in C memory,
// uninitialized, and the function that frees them. cgo forbids passing C a Go pointer to
// memory that holds Go pointers, so the batch's arrays of pointers live there.
func cArray[T any](n int) ([]T, func()) {
	if n < 1 {
		n = 1
	}
	var zero T
	p := C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(zero)))
	return unsafe.Slice((*T)(p), n), func() { C.free(p) }
}

// StepBatch steps several sequences of e together, as many Step calls would but with one
// target pass for all of them (an offloaded model streams once per batch, not once per
// sequence): sequence i appends inputs[i] (may be empty; inputs nil: no input for any) and
// steps with params[i] (nil, or params nil: DefaultStepParams), at most maxTokens tokens.
// Speculative and plain steps, samplings and tree shapes may be mixed, and sequences may
// join or leave between calls (continuous batching). Every sequence gets exactly the
// tokens its own Step calls would give, though not always as many per call: in a batch of
// several, a step with input (a prompt, a turn) is a plain one, and the next speculates.
//
// tokens[i] are sequence i's new tokens and errs[i] nil, or tokens[i] is nil and errs[i]
// its failure: an *Error with the status Step would give (StatusInvalidToken,
// StatusContextFull, ...); that sequence is unchanged, its input not appended, and the
// others step. Each failed sequence's message is its own ("seqs[i]: " and the library's).
//
// err is a failure of the call as a whole, and then no sequence changed: an *Error with
// StatusInvalidArgument when inputs or params is neither nil nor as long as seqs (or
// len(seqs) x maxTokens is over math.MaxInt32), or the
// library's status (StatusNullPointer: a nil or closed sequence, or a closed engine;
// StatusInvalidArgument: a sequence of another engine, or one sequence twice).
func (e *Engine) StepBatch(seqs []*Sequence, inputs [][]int32, params []*StepParams, maxTokens int) (tokens [][]int32, errs []error, err error) {
	n := len(seqs)
	if inputs != nil && len(inputs) != n {
		return nil, nil, &Error{Status: StatusInvalidArgument,
			Message: fmt.Sprintf("StepBatch: %d sequences but %d inputs", n, len(inputs))}
	}
	if params != nil && len(params) != n {
		return nil, nil, &Error{Status: StatusInvalidArgument,
			Message: fmt.Sprintf("StepBatch: %d sequences but %d params", n, len(params))}
	}
	if maxTokens < 1 {
		maxTokens = 1
	}
	if n > 0 && maxTokens > math.MaxInt32/n {
		return nil, nil, &Error{Status: StatusInvalidArgument,
			Message: fmt.Sprintf("StepBatch: %d sequences x %d tokens is too large", n, maxTokens)}
	}
	handles, freeHandles := cArray[*C.subspec_sequence](n)
	defer freeHandles()
	cps, freeCps := cArray[C.subspec_step_params](n)
	defer freeCps()
	pps, freePps := cArray[*C.subspec_step_params](n)
	defer freePps()
	total := 0
	for _, in := range inputs {
		total += len(in)
	}
	ids, freeIds := cArray[C.int32_t](total)
	defer freeIds()
	ins, freeIns := cArray[*C.int32_t](n)
	defer freeIns()
	nIns, freeNIns := cArray[C.size_t](n)
	defer freeNIns()
	out, freeOut := cArray[C.int32_t](n * maxTokens)
	defer freeOut()
	nOut, freeNOut := cArray[C.size_t](n)
	defer freeNOut()
	statuses, freeStatuses := cArray[C.subspec_status](n)
	defer freeStatuses()

	var def *StepParams
	at := 0
	for i, s := range seqs {
		handles[i] = nil // a nil or closed sequence: the library's NULL_POINTER for the call
		if s != nil {
			handles[i] = s.h
		}
		var p *StepParams
		if params != nil {
			p = params[i]
		}
		if p == nil {
			if def == nil {
				d := DefaultStepParams()
				def = &d
			}
			p = def
		}
		if cps[i], err = p.c(); err != nil {
			return nil, nil, err
		}
		pps[i] = &cps[i]
		ins[i], nIns[i] = nil, 0
		if inputs != nil && len(inputs[i]) > 0 {
			in := inputs[i]
			for j, t := range in {
				ids[at+j] = C.int32_t(t)
			}
			ins[i], nIns[i] = &ids[at], C.size_t(len(in))
			at += len(in)
		}
	}
	err = call(func() C.subspec_status {
		return C.subspec_step_batch(e.h, &handles[0], C.size_t(n), &pps[0], &ins[0], &nIns[0],
			&out[0], C.size_t(maxTokens), &nOut[0], &statuses[0])
	})
	if err != nil {
		runtime.KeepAlive(e)
		runtime.KeepAlive(seqs)
		return nil, nil, err
	}
	tokens, errs = make([][]int32, n), make([]error, n)
	defer runtime.KeepAlive(e)
	defer runtime.KeepAlive(seqs)
	for i := 0; i < n; i++ {
		if st := Status(statuses[i]); st != StatusOK {
			// Each failed sequence keeps its own message.
			msg := fmt.Sprintf("seqs[%d]: %s", i, sequenceError(handles[i]))
			errs[i] = &Error{Status: st, Message: msg}
			continue
		}
		got := out[i*maxTokens : i*maxTokens+int(nOut[i])]
		tokens[i] = make([]int32, len(got))
		for j, t := range got {
			tokens[i][j] = int32(t)
		}
	}
	return tokens, errs, nil
}

// Generate steps from prompt until an EOS token or maxNew tokens; returns the new tokens.
func (s *Sequence) Generate(prompt []int32, p *StepParams, maxNew int) ([]int32, error) {
	var out []int32
	input := prompt
	for len(out) < maxNew {
		got, err := s.Step(input, p, maxNew-len(out))
		if err != nil {
			return out, err
		}
		input = nil
		out = append(out, got...)
		if s.hasEOS(got) {
			break
		}
	}
	return out, nil
}

// StepContext is Step that ctx can stop: when ctx is cancelled or its deadline passes
// during the call, the step stops before its next decoder layer (a streamed target pass
// within one layer's transfer, a draft between its steps) and returns an error that
// errors.Is matches to ctx.Err(); the sequence is unchanged and can be stepped again.
func (s *Sequence) StepContext(ctx context.Context, input []int32, p *StepParams, maxTokens int) ([]int32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
			C.subspec_sequence_abort(s.h)
		case <-done:
		}
	}()
	out, err := s.Step(input, p, maxTokens)
	close(done)
	<-stopped
	// A cancellation that came just after the step returned must not stop the next one.
	C.subspec_sequence_clear_abort(s.h)
	runtime.KeepAlive(s)
	var se *Error
	if errors.As(err, &se) && se.Status == StatusAborted && ctx.Err() != nil {
		return nil, &ContextError{Context: ctx.Err(), Step: se}
	}
	return out, err
}

// ContextError is a step stopped by its context: errors.Is(err, context.Canceled) (or
// context.DeadlineExceeded) holds, and Step is the library's ABORTED error.
type ContextError struct {
	Context error
	Step    *Error
}

func (e *ContextError) Error() string { return fmt.Sprintf("%v: %v", e.Context, e.Step) }

// Unwrap gives the context's error.
func (e *ContextError) Unwrap() error { return e.Context }

// GenerateContext is Generate that ctx can stop (see StepContext): it returns the tokens
// generated before the cancellation, which the sequence keeps, and the context error.
func (s *Sequence) GenerateContext(ctx context.Context, prompt []int32, p *StepParams, maxNew int) ([]int32, error) {
	var out []int32
	err := s.stream(ctx, prompt, p, maxNew, func(t int32) { out = append(out, t) })
	return out, err
}

// Stream generates like GenerateContext on its own goroutine and sends each token on the
// returned channel as its step produces it; the channel is closed at the end (an EOS
// token, maxNew tokens, an error or ctx's cancellation), after which wait returns the
// error (nil when generation ended normally). Read the channel to its end; do not use
// the sequence until then.
func (s *Sequence) Stream(ctx context.Context, prompt []int32, p *StepParams, maxNew int) (tokens <-chan int32, wait func() error) {
	ch := make(chan int32, 64)
	var err error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer close(ch)
		err = s.stream(ctx, prompt, p, maxNew, func(t int32) { ch <- t })
	}()
	return ch, func() error { <-finished; return err }
}

func (s *Sequence) stream(ctx context.Context, prompt []int32, p *StepParams, maxNew int, emit func(int32)) error {
	input := prompt
	for n := 0; n < maxNew; {
		got, err := s.StepContext(ctx, input, p, maxNew-n)
		if err != nil {
			return err
		}
		input = nil
		for _, t := range got {
			emit(t)
		}
		n += len(got)
		if s.hasEOS(got) {
			break
		}
	}
	return nil
}

func (s *Sequence) hasEOS(ids []int32) bool {
	for _, t := range ids {
		for _, e := range s.eos {
			if t == e {
				return true
			}
		}
	}
	return false
}

// Host-owned sampling: IterBegin, then (IterLogits, your sampler, IterPush) while IterPush
// reports a next position, then IterEnd. Lossless for any sampler: every position's
// logits are the target's own.

// IterBegin opens a host-sampled iteration: appends input, drafts and verifies a tree with
// p (its sampling fields are ignored; nil means DefaultStepParams). On error nothing
// changed.
func (s *Sequence) IterBegin(input []int32, p *StepParams) error {
	if p == nil {
		d := DefaultStepParams()
		p = &d
	}
	cp, err := p.c()
	if err != nil {
		return err
	}
	var in *C.int32_t
	if len(input) > 0 {
		in = (*C.int32_t)(&input[0])
	}
	err = call(func() C.subspec_status { return C.subspec_iter_begin(s.h, &cp, in, C.size_t(len(input))) })
	runtime.KeepAlive(s)
	return err
}

// IterLogits returns a copy of the target's exact logits at the current position.
func (s *Sequence) IterLogits() ([]float32, error) {
	var p *C.float
	var n C.size_t
	err := call(func() C.subspec_status { return C.subspec_iter_logits(s.h, &p, &n) })
	if err != nil {
		return nil, err
	}
	out := make([]float32, int(n))
	copy(out, unsafe.Slice((*float32)(unsafe.Pointer(p)), int(n)))
	runtime.KeepAlive(s)
	return out, nil
}

// IterPush pushes the host's token; true: the next position's logits are known.
func (s *Sequence) IterPush(token int32) (bool, error) {
	var next C.bool
	err := call(func() C.subspec_status { return C.subspec_iter_push(s.h, C.int32_t(token), &next) })
	runtime.KeepAlive(s)
	return bool(next), err
}

// TokenLogprob is one token and its log-probability.
type TokenLogprob struct {
	ID      int32
	Logprob float32
}

// IterTopLogprobs returns the n most likely tokens at the current position, descending.
func (s *Sequence) IterTopLogprobs(n int) ([]TokenLogprob, error) {
	ids := make([]int32, n+1)
	lps := make([]float32, n+1)
	var got C.size_t
	err := call(func() C.subspec_status {
		return C.subspec_iter_top_logprobs(s.h, C.size_t(n), (*C.int32_t)(&ids[0]), (*C.float)(&lps[0]), &got)
	})
	runtime.KeepAlive(s)
	if err != nil {
		return nil, err
	}
	out := make([]TokenLogprob, int(got))
	for i := range out {
		out[i] = TokenLogprob{ids[i], lps[i]}
	}
	return out, nil
}

// IterEnd commits the iteration; returns the number of tokens pushed.
func (s *Sequence) IterEnd() (int, error) {
	var n C.size_t
	err := call(func() C.subspec_status { return C.subspec_iter_end(s.h, &n) })
	runtime.KeepAlive(s)
	return int(n), err
}

// IterCancel abandons the iteration: the sequence as before IterBegin.
func (s *Sequence) IterCancel() error {
	err := call(func() C.subspec_status { return C.subspec_iter_cancel(s.h) })
	runtime.KeepAlive(s)
	return err
}

// IterSample runs one whole host-sampled iteration, sample picking each token, at most
// maxTokens; returns the tokens pushed. On error the iteration is cancelled.
func (s *Sequence) IterSample(input []int32, p *StepParams, sample func([]float32) int32, maxTokens int) ([]int32, error) {
	if err := s.IterBegin(input, p); err != nil {
		return nil, err
	}
	var out []int32
	for more := true; more && len(out) < maxTokens; {
		l, err := s.IterLogits()
		if err == nil {
			t := sample(l)
			more, err = s.IterPush(t)
			out = append(out, t)
		}
		if err != nil {
			_ = s.IterCancel()
			return nil, err
		}
	}
	_, err := s.IterEnd()
	return out, err
}

// Eval appends input, runs the target alone and returns the next position's logits
// (nVocab of them); nothing is sampled.
func (s *Sequence) Eval(input []int32, nVocab int) ([]float32, error) {
	out := make([]float32, nVocab+1)
	var in *C.int32_t
	if len(input) > 0 {
		in = (*C.int32_t)(&input[0])
	}
	var n C.size_t
	err := call(func() C.subspec_status {
		return C.subspec_sequence_eval(s.h, in, C.size_t(len(input)), (*C.float)(&out[0]), C.size_t(nVocab), &n)
	})
	runtime.KeepAlive(s)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// Reset empties the sequence and its statistics.
func (s *Sequence) Reset() error {
	err := call(func() C.subspec_status { return C.subspec_sequence_reset(s.h) })
	runtime.KeepAlive(s)
	return err
}

// Truncate keeps the first n tokens.
func (s *Sequence) Truncate(n int) error {
	err := call(func() C.subspec_status { return C.subspec_sequence_truncate(s.h, C.size_t(n)) })
	runtime.KeepAlive(s)
	return err
}

// Stats are a sequence's statistics since creation or the last reset.
type Stats struct {
	Length, Iterations, Generated, Accepted, DraftSteps uint64
	Tau, DraftSeconds, VerifySeconds                    float64
	// OverlappedSteps are the draft steps run while a target pass waited for a streamed
	// layer; ReusedTrees the steps whose tree started from the part drafted meanwhile.
	OverlappedSteps, ReusedTrees uint64
}

// Stats returns the sequence's statistics.
func (s *Sequence) Stats() (Stats, error) {
	var st C.subspec_sequence_stats
	st.struct_size = C.sizeof_subspec_sequence_stats
	err := call(func() C.subspec_status { return C.subspec_sequence_get_stats(s.h, &st) })
	runtime.KeepAlive(s)
	if err != nil {
		return Stats{}, err
	}
	return Stats{
		Length: uint64(st.length), Iterations: uint64(st.iterations), Generated: uint64(st.generated),
		Accepted: uint64(st.accepted), DraftSteps: uint64(st.draft_steps), Tau: float64(st.tau),
		DraftSeconds: float64(st.draft_seconds), VerifySeconds: float64(st.verify_seconds),
		OverlappedSteps: uint64(st.overlapped_steps), ReusedTrees: uint64(st.reused_trees),
	}, nil
}
