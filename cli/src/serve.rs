//! `subspec serve`: an OpenAI- and llama.cpp-server-compatible HTTP server.
//!
//! The HTTP side runs on a tokio runtime (axum); every generation runs on its own OS
//! thread with one of the server's `--parallel` slots, and sends its text back over a
//! channel, so the async runtime never blocks on the model. A slot is a `Sequence` of the
//! shared `Engine`, made at start and kept: a request takes the free slot whose tokens
//! share the longest prefix with its prompt and runs only the rest (the prefix's KV is
//! what a fresh prefill computes, bit for bit), and no KV cache is allocated per request.
//! Further requests wait in a bounded queue (`--queue`), and a request that finds the
//! queue full gets 503 with `Retry-After`. A client that goes away drops the channel's
//! receiver; its step stops before the next decoder layer, freeing its slot. Running
//! generations step together (`batcher.rs`): one target pass verifies all their trees,
//! so an offloaded model streams once per step for all of them, with unchanged output.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde_json::{json, Map, Value};
use subspec::{ChatMessage, Engine, Error, ErrorKind, SamplingParams, StepOptions, TextStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::batcher::Batcher;
use crate::{ModelArgs, SpecArgs};

/// Arguments of `subspec serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests that may wait for a free slot; one more gets 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Name the model is served under (default: the model path's file name).
    #[arg(long)]
    model_name: Option<String>,
}

/// Counters behind `/metrics`.
#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV a slot already held from an earlier request.
    cached_prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    /// Target passes (speculative iterations or plain steps) over all generations.
    target_passes: AtomicU64,
    /// Microseconds spent generating, summed over generations.
    generate_us: AtomicU64,
}

struct AppState {
    engine: Engine,
    model_name: String,
    step: StepOptions,
    slots: Arc<Semaphore>,
    /// The slots no generation holds; a semaphore permit guarantees one is here.
    idle: Mutex<Vec<subspec::Sequence>>,
    parallel: usize,
    queue_cap: usize,
    /// Requests admitted and not yet finished (running plus waiting).
    admitted: AtomicUsize,
    running: AtomicUsize,
    metrics: Metrics,
    /// Steps the running generations together (one target pass for all of them).
    batcher: Batcher,
}

/// An OpenAI-style error response.
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    kind: &'static str,
}

impl ApiError {
    fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            kind: "invalid_request_error",
        }
    }

    fn internal(e: &Error) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
            param: None,
            kind: "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": null,
        }});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a request body as a JSON object.
fn parse_body(body: &Bytes) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad(
            "body",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad("body", format!("invalid JSON: {e}"))),
    }
}

fn opt_f32(m: &Map<String, Value>, k: &str, lo: f64, hi: f64) -> ApiResult<Option<f32>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if (lo..=hi).contains(&v) {
                Ok(Some(v as f32))
            } else {
                Err(ApiError::bad(
                    k,
                    format!("{k} must be between {lo} and {hi}, got {v}"),
                ))
            }
        }
        Some(_) => Err(ApiError::bad(k, format!("{k} must be a number"))),
    }
}

fn opt_int(m: &Map<String, Value>, k: &str, lo: i64, hi: i64) -> ApiResult<Option<i64>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            Some(v) => Err(ApiError::bad(
                k,
                format!("{k} must be between {lo} and {hi}, got {v}"),
            )),
            None => Err(ApiError::bad(k, format!("{k} must be an integer, got {n}"))),
        },
        Some(_) => Err(ApiError::bad(k, format!("{k} must be an integer"))),
    }
}

fn opt_bool(m: &Map<String, Value>, k: &str) -> ApiResult<bool> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad(k, format!("{k} must be a boolean"))),
    }
}

/// `stop`: a string or an array of up to 4 non-empty strings.
fn stops(m: &Map<String, Value>, k: &str) -> ApiResult<Vec<String>> {
    let v: Vec<String> = match m.get(k) {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad(k, format!("{k} must hold strings")))
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                k,
                format!("{k} must be a string or an array of strings"),
            ))
        }
    };
    if v.len() > 16 || v.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            k,
            format!("{k}: at most 16 non-empty strings"),
        ));
    }
    Ok(v)
}

/// One generation request, validated.
struct GenRequest {
    prompt: Vec<u32>,
    max_tokens: usize,
    stop: Vec<String>,
    step: StepOptions,
    stream: bool,
}

impl AppState {
    fn check_model(&self, m: &Map<String, Value>) -> ApiResult<()> {
        match m.get("model") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) if *s == self.model_name => Ok(()),
            Some(Value::String(s)) => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "model {s:?} does not exist; this server serves {:?}",
                    self.model_name
                ),
                param: Some("model".into()),
                kind: "invalid_request_error",
            }),
            Some(_) => Err(ApiError::bad("model", "model must be a string")),
        }
    }

    /// The sampling, length and stop settings common to every generating endpoint;
    /// `max_key` names the length field (`max_tokens` or llama.cpp's `n_predict`).
    fn gen_request(
        &self,
        m: &Map<String, Value>,
        prompt: Vec<u32>,
        prompt_key: &str,
        max_key: &str,
    ) -> ApiResult<GenRequest> {
        let ctx = self.engine.max_context();
        if prompt.is_empty() {
            return Err(ApiError::bad(prompt_key, format!("{prompt_key} is empty")));
        }
        if prompt.len() >= ctx {
            return Err(ApiError::bad(
                prompt_key,
                format!("{prompt_key} is {} tokens; the context holds {ctx}, with room for at least one new token", prompt.len()),
            ));
        }
        let room = ctx - prompt.len();
        let max_tokens = match opt_int(m, max_key, 1, ctx as i64)? {
            Some(v) => v as usize,
            None => room.min(if max_key == "n_predict" { room } else { 16 }),
        };
        if max_tokens > room {
            return Err(ApiError::bad(max_key, format!(
                "{max_key} {max_tokens} plus the prompt's {} tokens exceeds the context of {ctx}", prompt.len()
            )));
        }
        if let Some(n) = opt_int(m, "n", i64::MIN, i64::MAX)? {
            if n != 1 {
                return Err(ApiError::bad(
                    "n",
                    format!("only n = 1 is supported, got {n}"),
                ));
            }
        }
        for k in [
            "logprobs",
            "echo",
            "tools",
            "functions",
            "logit_bias",
            "suffix",
        ] {
            match m.get(k) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Object(o)) if o.is_empty() => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(_) => return Err(ApiError::bad(k, format!("{k} is not supported"))),
            }
        }
        let temperature = opt_f32(m, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
        let top_p = opt_f32(m, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
        if top_p <= 0.0 {
            return Err(ApiError::bad("top_p", "top_p must be greater than 0"));
        }
        let top_k =
            opt_int(m, "top_k", 0, self.engine.config().vocab as i64)?.unwrap_or(0) as usize;
        let seed = match m.get("seed") {
            None | Some(Value::Null) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u,
                (None, Some(i)) => i as u64,
                _ => return Err(ApiError::bad("seed", "seed must be an integer")),
            },
            Some(_) => return Err(ApiError::bad("seed", "seed must be an integer")),
        };
        let sampling = SamplingParams::new(temperature, top_k, top_p, seed);
        sampling
            .validate()
            .map_err(|e| ApiError::bad("temperature", e.to_string()))?;
        let mut step = self.step;
        step.sampling = sampling;
        Ok(GenRequest {
            prompt,
            max_tokens,
            stop: stops(m, "stop")?,
            step,
            stream: opt_bool(m, "stream")?,
        })
    }

    fn encode(&self, text: &str, special: bool, param: &str) -> ApiResult<Vec<u32>> {
        let tok = self
            .engine
            .tokenizer()
            .map_err(|e| ApiError::internal(&e))?;
        tok.encode(text, special)
            .map_err(|e| ApiError::bad(param, e.to_string()))
    }
}

impl AppState {
    /// Takes the idle slot whose tokens share the longest prefix with `prompt` (the
    /// caller holds a permit, so one is idle; a new sequence stands in if one was lost).
    fn take_slot(&self, prompt: &[u32]) -> Result<subspec::Sequence, Error> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match (0..idle.len()).max_by_key(|&i| common_prefix(idle[i].tokens(), prompt)) {
            Some(best) => Ok(idle.swap_remove(best)),
            None => self.engine.new_sequence(),
        }
    }
}

/// What a generation thread sends back.
enum Chunk {
    Text(String),
    Done(Finish),
    Failed(String),
}

/// How a generation ended.
struct Finish {
    reason: &'static str,
    prompt_tokens: usize,
    /// Prompt tokens whose KV the slot held already (not run again).
    cached_tokens: usize,
    completion_tokens: usize,
}

/// Decrements the admitted count when a request leaves, however it leaves.
struct Admission(Arc<AppState>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Admits a request (or refuses it with 503 when the queue is full), waits for a slot
/// and starts its generation thread; the returned channel yields its text.
async fn start(state: &Arc<AppState>, req: GenRequest) -> ApiResult<mpsc::Receiver<Chunk>> {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let limit = state.parallel + state.queue_cap;
    if state.admitted.fetch_add(1, Ordering::SeqCst) >= limit {
        state.admitted.fetch_sub(1, Ordering::SeqCst);
        state.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "the server is busy: {} running and {} queued",
                state.parallel, state.queue_cap
            ),
            param: None,
            kind: "server_busy",
        });
    }
    let admission = Admission(state.clone());
    let permit = state
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal(&Error::internal("the slot semaphore closed")))?;
    let (tx, rx) = mpsc::channel(256);
    let st = state.clone();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("subspec-gen".into())
        .spawn(move || {
            st.running.fetch_add(1, Ordering::SeqCst);
            let r = st.take_slot(&req.prompt).and_then(|seq| {
                let mut slot = Some(seq);
                let r = generate(&st, &req, &tx, &rt, &mut slot);
                match slot {
                    Some(seq) => st.idle.lock().unwrap_or_else(|e| e.into_inner()).push(seq),
                    None => {
                        // A step panicked with the sequence lent to it: the slot is lost.
                        st.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                r
            });
            if let Err(e) = r {
                st.metrics.errors.fetch_add(1, Ordering::Relaxed);
                let _ = tx.blocking_send(Chunk::Failed(e.to_string()));
            }
            st.running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            drop(admission);
        })
        .map_err(|e| {
            ApiError::internal(&Error::internal(format!(
                "spawning a generation thread: {e}"
            )))
        })?;
    Ok(rx)
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Runs one generation on this thread, sending text as it is decided (text that could
/// still be the start of a stop string is held back). A client that goes away stops the
/// step in progress before its next decoder layer (`rt` watches the channel).
fn generate(
    st: &AppState,
    req: &GenRequest,
    tx: &mpsc::Sender<Chunk>,
    rt: &tokio::runtime::Handle,
    slot: &mut Option<subspec::Sequence>,
) -> Result<(), Error> {
    let seq = held(slot)?;
    // Keep the slot's KV for the prefix this prompt shares with its tokens; at least the
    // prompt's last token runs again, for the logits of the first new one.
    let keep = common_prefix(seq.tokens(), &req.prompt).min(req.prompt.len() - 1);
    seq.truncate(keep);
    let cached = seq.cached();
    seq.append(&req.prompt[keep..])?;
    // The watcher may fire at any moment, also after the generation ended; it aborts
    // through `armed`, which is emptied before the flag is cleared for the slot's next
    // request.
    let armed = Arc::new(Mutex::new(Some(seq.abort_handle())));
    let (trigger, watched) = (armed.clone(), tx.clone());
    let watcher = rt.spawn(async move {
        watched.closed().await;
        if let Some(h) = trigger.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            h.abort();
        }
    });
    let r = generate_on(st, req, cached, tx, slot);
    watcher.abort();
    armed.lock().unwrap_or_else(|e| e.into_inner()).take();
    held(slot)?.abort_handle().clear();
    r
}

/// The sequence of a generation's slot (lent to a batched step only during the step).
fn held(slot: &mut Option<subspec::Sequence>) -> Result<&mut subspec::Sequence, Error> {
    slot.as_mut()
        .ok_or_else(|| Error::internal("the slot's sequence was lost in a failed step"))
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn generate_on(
    st: &AppState,
    req: &GenRequest,
    cached: usize,
    tx: &mpsc::Sender<Chunk>,
    slot: &mut Option<subspec::Sequence>,
) -> Result<(), Error> {
    let engine = &st.engine;
    let _running = st.batcher.member();
    let tok = engine.tokenizer()?;
    let mut stream = TextStream::new(tok);
    let hold = req.stop.iter().map(String::len).max().unwrap_or(1) - 1;
    let mut text = String::new();
    let mut sent = 0usize;
    let mut produced = 0usize;
    let mut reason = "length";
    let passes_before = held(slot)?.stats().iterations;
    let t0 = Instant::now();
    while produced < req.max_tokens && held(slot)?.len() < engine.max_context() {
        if tx.is_closed() {
            st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            reason = "cancelled";
            break;
        }
        let step = req.step.with_max_tokens(req.max_tokens - produced);
        let new = match st.batcher.step_in(engine, slot, step) {
            Err(e) if e.kind() == ErrorKind::Aborted && tx.is_closed() => {
                st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                reason = "cancelled";
                break;
            }
            r => r?,
        };
        produced += new.len();
        let eos = new.iter().position(|&t| engine.is_eos(t));
        let keep = &new[..eos.unwrap_or(new.len())];
        text.push_str(&stream.push(keep)?);
        let search_from = floor_boundary(&text, sent.saturating_sub(hold));
        let hit = req
            .stop
            .iter()
            .filter_map(|s| {
                text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min();
        if let Some(i) = hit {
            text.truncate(i);
            reason = "stop";
        } else if eos.is_some() {
            reason = "stop";
        }
        let done = reason == "stop" || produced >= req.max_tokens;
        let upto = if done {
            text.len()
        } else {
            floor_boundary(&text, text.len().saturating_sub(hold))
        };
        if upto > sent {
            let piece = text[sent..upto].to_string();
            sent = upto;
            if tx.blocking_send(Chunk::Text(piece)).is_err() {
                st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                reason = "cancelled";
                break;
            }
        }
        if reason == "stop" {
            break;
        }
    }
    if reason == "length" && sent < text.len() {
        let _ = tx.blocking_send(Chunk::Text(text[sent..].to_string()));
    }
    let m = &st.metrics;
    let s = held(slot)?.stats();
    m.prompt_tokens
        .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
    m.cached_prompt_tokens
        .fetch_add(cached as u64, Ordering::Relaxed);
    m.generated_tokens
        .fetch_add(produced as u64, Ordering::Relaxed);
    m.target_passes
        .fetch_add((s.iterations - passes_before) as u64, Ordering::Relaxed);
    m.generate_us
        .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
    let _ = tx.blocking_send(Chunk::Done(Finish {
        reason,
        prompt_tokens: req.prompt.len(),
        cached_tokens: cached,
        completion_tokens: produced,
    }));
    Ok(())
}

/// Collects a generation's whole text.
async fn collect(mut rx: mpsc::Receiver<Chunk>) -> ApiResult<(String, Finish)> {
    let mut text = String::new();
    while let Some(c) = rx.recv().await {
        match c {
            Chunk::Text(t) => text.push_str(&t),
            Chunk::Done(f) => return Ok((text, f)),
            Chunk::Failed(e) => return Err(ApiError::internal(&Error::internal(e))),
        }
    }
    Err(ApiError::internal(&Error::internal(
        "the generation ended without a result",
    )))
}

fn usage(f: &Finish) -> Value {
    json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
           "total_tokens": f.prompt_tokens + f.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": f.cached_tokens}})
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", now_s(), N.fetch_add(1, Ordering::Relaxed))
}

/// Which response shape a generation gets.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Completion,
    Llama,
}

/// The server-sent-event stream of a generation, in `api`'s chunk format.
fn sse(api: Api, model: String, rx: mpsc::Receiver<Chunk>) -> Response {
    let id = request_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" });
    let created = now_s();
    let object = if api == Api::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |delta: Option<&str>, finish: Option<&Finish>| -> Value {
        match api {
            Api::Chat => {
                let d = match delta {
                    Some(t) => json!({"role": "assistant", "content": t}),
                    None => json!({}),
                };
                let mut v = json!({"id": id, "object": object, "created": created, "model": model,
                    "choices": [{"index": 0, "delta": d, "finish_reason": finish.map(|f| f.reason)}]});
                if let Some(f) = finish {
                    v["usage"] = usage(f);
                }
                v
            }
            Api::Completion => {
                let mut v = json!({"id": id, "object": object, "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish.map(|f| f.reason)}]});
                if let Some(f) = finish {
                    v["usage"] = usage(f);
                }
                v
            }
            Api::Llama => match finish {
                None => json!({"content": delta.unwrap_or(""), "stop": false}),
                Some(f) => {
                    json!({"content": "", "stop": true, "stop_type": if f.reason == "stop" { "eos" } else { "limit" },
                    "tokens_predicted": f.completion_tokens, "tokens_evaluated": f.prompt_tokens, "tokens_cached": f.cached_tokens, "model": model})
                }
            },
        }
    };
    let tail: Vec<Result<Event, Infallible>> = if api == Api::Llama {
        vec![]
    } else {
        vec![Ok(Event::default().data("[DONE]"))]
    };
    let events = ReceiverStream::new(rx)
        .map(move |c| {
            let v = match c {
                Chunk::Text(t) => chunk(Some(&t), None),
                Chunk::Done(f) => chunk(None, Some(&f)),
                Chunk::Failed(e) => json!({"error": {"message": e, "type": "server_error"}}),
            };
            Ok::<_, Infallible>(Event::default().data(v.to_string()))
        })
        .chain(tokio_stream::iter(tail));
    Sse::new(events).into_response()
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    st.check_model(&m)?;
    let msgs = match m.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::bad("messages", "messages is empty")),
        None => return Err(ApiError::bad("messages", "messages is required")),
        Some(_) => return Err(ApiError::bad("messages", "messages must be an array")),
    };
    let mut chat = Vec::with_capacity(msgs.len());
    for (i, msg) in msgs.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str);
        let content = match msg.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => Some(t.to_string()),
                        _ => None,
                    }
                })
                .collect::<Option<String>>(),
            _ => None,
        };
        match (role, content) {
            (Some(r @ ("system" | "user" | "assistant" | "developer")), Some(c)) => chat.push(
                ChatMessage::new(if r == "developer" { "system" } else { r }, c),
            ),
            (Some(r), Some(_)) => {
                return Err(ApiError::bad(
                    &format!("messages[{i}].role"),
                    format!("unsupported role {r:?}"),
                ))
            }
            (None, _) => {
                return Err(ApiError::bad(
                    &format!("messages[{i}].role"),
                    "role must be a string",
                ))
            }
            (_, None) => {
                return Err(ApiError::bad(
                    &format!("messages[{i}].content"),
                    "content must be a string or text parts",
                ))
            }
        }
    }
    let tok = st.engine.tokenizer().map_err(|e| ApiError::internal(&e))?;
    let text = tok
        .apply_chat_template(&chat, true)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    let prompt = st.encode(&text, false, "messages")?;
    let key = if m.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let req = st.gen_request(&m, prompt, "messages", key)?;
    let stream = req.stream;
    let rx = start(&st, req).await?;
    if stream {
        return Ok(sse(Api::Chat, st.model_name.clone(), rx));
    }
    let (text, f) = collect(rx).await?;
    Ok(Json(json!({
        "id": request_id("chatcmpl"), "object": "chat.completion", "created": now_s(), "model": st.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": f.reason, "logprobs": null}],
        "usage": usage(&f),
    }))
    .into_response())
}

fn prompt_text(m: &Map<String, Value>, key: &str) -> ApiResult<String> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        None => Err(ApiError::bad(key, format!("{key} is required"))),
        Some(_) => Err(ApiError::bad(
            key,
            format!("{key} must be a string (one prompt)"),
        )),
    }
}

async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    st.check_model(&m)?;
    let prompt = st.encode(&prompt_text(&m, "prompt")?, true, "prompt")?;
    let req = st.gen_request(&m, prompt, "prompt", "max_tokens")?;
    let stream = req.stream;
    let rx = start(&st, req).await?;
    if stream {
        return Ok(sse(Api::Completion, st.model_name.clone(), rx));
    }
    let (text, f) = collect(rx).await?;
    Ok(Json(json!({
        "id": request_id("cmpl"), "object": "text_completion", "created": now_s(), "model": st.model_name,
        "choices": [{"index": 0, "text": text, "finish_reason": f.reason, "logprobs": null}],
        "usage": usage(&f),
    }))
    .into_response())
}

async fn llama_completion(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    let prompt = st.encode(&prompt_text(&m, "prompt")?, true, "prompt")?;
    let req = st.gen_request(&m, prompt, "prompt", "n_predict")?;
    let stream = req.stream;
    let rx = start(&st, req).await?;
    if stream {
        return Ok(sse(Api::Llama, st.model_name.clone(), rx));
    }
    let (text, f) = collect(rx).await?;
    Ok(Json(json!({
        "content": text, "stop": true, "model": st.model_name,
        "stop_type": if f.reason == "stop" { "eos" } else { "limit" },
        "tokens_predicted": f.completion_tokens, "tokens_evaluated": f.prompt_tokens, "tokens_cached": f.cached_tokens,
    }))
    .into_response())
}

async fn tokenize(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    let content = match m.get("content") {
        Some(Value::String(s)) => s,
        _ => return Err(ApiError::bad("content", "content must be a string")),
    };
    let special = match m.get("add_special") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad(
                "add_special",
                "add_special must be a boolean",
            ))
        }
    };
    let tokens = st.encode(content, special, "content")?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

async fn detokenize(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    let vocab = st.engine.config().vocab as u64;
    let ids = match m.get("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t.as_u64() {
                Some(v) if v < vocab => Ok(v as u32),
                _ => Err(ApiError::bad(
                    "tokens",
                    format!("tokens must be integers in 0..{vocab}, got {t}"),
                )),
            })
            .collect::<ApiResult<Vec<u32>>>()?,
        _ => {
            return Err(ApiError::bad(
                "tokens",
                "tokens must be an array of integers",
            ))
        }
    };
    let tok = st.engine.tokenizer().map_err(|e| ApiError::internal(&e))?;
    let content = tok
        .decode(&ids)
        .map_err(|e| ApiError::bad("tokens", e.to_string()))?;
    Ok(Json(json!({ "content": content })).into_response())
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({"object": "list", "data": [{"id": st.model_name, "object": "model", "created": 0, "owned_by": "subspec"}]}))
        .into_response()
}

async fn props(State(st): State<Arc<AppState>>) -> Response {
    let e = &st.engine;
    Json(json!({
        "model_path": e.model_path().display().to_string(),
        "total_slots": st.parallel,
        "n_ctx": e.max_context(),
        "speculative": st.step.speculate,
        "offloaded_layers": e.placement().map(|p| p.offloaded().len()).unwrap_or(0),
        "default_generation_settings": {"n_ctx": e.max_context(), "temperature": 1.0, "top_p": 1.0, "top_k": 0, "n_predict": -1},
        "chat_template": e.tokenizer().map(|t| t.chat_template().is_models_own()).unwrap_or(false),
    }))
    .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let m = &st.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let tokens = g(&m.generated_tokens);
    let secs = g(&m.generate_us) as f64 / 1e6;
    let passes = g(&m.target_passes);
    let queued = st
        .admitted
        .load(Ordering::SeqCst)
        .saturating_sub(st.running.load(Ordering::SeqCst));
    let per = |x: f64, n: u64| if n == 0 { 0.0 } else { x / n as f64 };
    let mut body = format!(
        "# HELP subspec_requests_total Generation requests received.\n# TYPE subspec_requests_total counter\nsubspec_requests_total {}\n\
# HELP subspec_requests_rejected_total Requests refused with 503 (queue full).\n# TYPE subspec_requests_rejected_total counter\nsubspec_requests_rejected_total {}\n\
# HELP subspec_requests_failed_total Generations that failed.\n# TYPE subspec_requests_failed_total counter\nsubspec_requests_failed_total {}\n\
# HELP subspec_requests_cancelled_total Generations stopped because the client went away.\n# TYPE subspec_requests_cancelled_total counter\nsubspec_requests_cancelled_total {}\n\
# HELP subspec_prompt_tokens_total Prompt tokens processed.\n# TYPE subspec_prompt_tokens_total counter\nsubspec_prompt_tokens_total {}\n\
# HELP subspec_prompt_tokens_cached_total Prompt tokens whose KV a slot held from an earlier request.\n# TYPE subspec_prompt_tokens_cached_total counter\nsubspec_prompt_tokens_cached_total {}\n\
# HELP subspec_tokens_predicted_total Tokens generated.\n# TYPE subspec_tokens_predicted_total counter\nsubspec_tokens_predicted_total {tokens}\n\
# HELP subspec_tokens_per_second Generated tokens per second of generation time (per generation, averaged).\n# TYPE subspec_tokens_per_second gauge\nsubspec_tokens_per_second {}\n\
# HELP subspec_tau Tokens per target pass.\n# TYPE subspec_tau gauge\nsubspec_tau {}\n\
# HELP subspec_queue_depth Requests waiting for a slot.\n# TYPE subspec_queue_depth gauge\nsubspec_queue_depth {queued}\n\
# HELP subspec_requests_running Generations running.\n# TYPE subspec_requests_running gauge\nsubspec_requests_running {}\n\
",
        g(&m.requests),
        g(&m.rejected),
        g(&m.errors),
        g(&m.cancelled),
        g(&m.prompt_tokens),
        g(&m.cached_prompt_tokens),
        if secs > 0.0 { tokens as f64 / secs } else { 0.0 },
        per(tokens as f64, passes),
        st.running.load(Ordering::SeqCst),
    );
    // The slow tier (all zero when every layer is resident).
    let t = st.engine.model().stream_stats().unwrap_or_default();
    body.push_str(&format!(
        "# HELP subspec_streamed_bytes_total Weight bytes streamed from the slow tier.\n# TYPE subspec_streamed_bytes_total counter\nsubspec_streamed_bytes_total {}\n\
# HELP subspec_stream_read_seconds_total Seconds the reader spent reading the slow tier.\n# TYPE subspec_stream_read_seconds_total counter\nsubspec_stream_read_seconds_total {}\n\
# HELP subspec_stream_wait_seconds_total Seconds compute waited for a streamed layer.\n# TYPE subspec_stream_wait_seconds_total counter\nsubspec_stream_wait_seconds_total {}\n",
        t.bytes, t.read_s, t.wait_s,
    ));
    let (batches, stepped) = st.batcher.counts();
    body.push_str(&format!(
        "# HELP subspec_batches_total Batched steps run (one target pass each for all the generations in them).\n# TYPE subspec_batches_total counter\nsubspec_batches_total {batches}\n\
# HELP subspec_batched_steps_total Generation steps run in those batches.\n# TYPE subspec_batched_steps_total counter\nsubspec_batched_steps_total {stepped}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint".into(),
        param: None,
        kind: "invalid_request_error",
    }
}

/// axum answers an over-limit body with a plain-text 413 before any handler
/// runs; this rewrites it as the OpenAI-style JSON error every other failure
/// gets, naming the limit and the flag that sets it.
fn body_too_large_as_json(r: Response, limit: usize) -> Response {
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return r;
    }
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body is larger than the limit of {limit} bytes (--max-body)"),
        param: Some("body".into()),
        kind: "invalid_request_error",
    }
    .into_response()
}

/// Runs `subspec serve` until interrupted.
pub fn run(a: &ServeArgs) -> Result<(), Error> {
    // `--parallel` slots (default 1), each a sequence the engine is planned for.
    let mut model = a.model.clone();
    let parallel = *model.parallel.get_or_insert(1);
    if parallel == 0 {
        return Err(Error::invalid_argument("--parallel must be at least 1"));
    }
    let engine = model.load(a.spec.draft()?)?;
    engine.tokenizer()?;
    let mut step = a.spec.step(&engine, SamplingParams::greedy())?;
    if parallel > 1 && a.spec.auto_depth.is_none() {
        // Steps are batched: a fixed tree that pays for one sequence over-drafts for
        // many (docs/BENCHMARKS.md, "Batched steps"); the depth chosen for the batch's
        // measured cost does not.
        step.tree.auto_depth = true;
    }
    if step.speculate && step.tree.auto_depth {
        // Measured now, before the slots' caches exist, not in the first request.
        let t0 = std::time::Instant::now();
        engine.tree_costs()?;
        eprintln!(
            "subspec serve: tree costs measured in {:.1} s (the depth of each batch is chosen by them)",
            t0.elapsed().as_secs_f64()
        );
    }
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        let p: &PathBuf = &a.model.model;
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    });
    let idle = (0..parallel)
        .map(|_| engine.new_sequence())
        .collect::<Result<Vec<_>, Error>>()?;
    let state = Arc::new(AppState {
        idle: Mutex::new(idle),
        engine,
        model_name,
        step,
        slots: Arc::new(Semaphore::new(parallel)),
        parallel,
        queue_cap: a.queue,
        admitted: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        metrics: Metrics::default(),
        batcher: Batcher::default(),
    });
    let max_body = a.max_body;
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/completion", post(llama_completion))
        .route("/completions", post(llama_completion))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/props", get(props))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(move |r: Response| {
            std::future::ready(body_too_large_as_json(r, max_body))
        }))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("starting the async runtime: {e}")))?;
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::invalid_argument(format!("cannot listen on {addr}: {e}")))?;
        eprintln!("subspec serve: listening on http://{addr}");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Error::internal(format!("server: {e}")))
    })
}
