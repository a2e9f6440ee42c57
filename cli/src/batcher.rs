//! Steps the server's running generations together. Each generation thread hands its
//! sequence and step options in and waits. The first thread to find no batch running
//! leads: it takes every request waiting and runs them as one `Engine::step_batch`, so
//! an offloaded layer streams once for all of them; requests that arrive meanwhile wait
//! for the next batch, which one of them leads (continuous batching: generations join
//! and leave between batches). A leader first waits, [`GATHER`] at most, until every
//! running generation ([`Batcher::member`]) has handed its step in: otherwise the thread
//! that finishes handling its tokens first leads a batch of one, the others wait for it
//! and lead the next, and two generations alternate instead of stepping together. Each
//! sequence gets exactly the tokens its own steps would give, so batching changes no
//! output.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use subspec::{Engine, Error, Sequence, StepOptions};

type Outcome = (Sequence, Result<Vec<u32>, Error>);

/// The longest a leader waits for the running generations' steps (handling a step's
/// tokens takes well under a millisecond; a step, tens to hundreds).
const GATHER: Duration = Duration::from_millis(10);

#[derive(Default)]
struct State {
    waiting: Vec<(u64, Sequence, StepOptions)>,
    done: HashMap<u64, Outcome>,
    leading: bool,
    /// Generations running (between [`Batcher::member`] and the guard's drop).
    members: usize,
    next_id: u64,
    /// Batches run, and sequences stepped in them (for the mean batch size).
    batches: u64,
    stepped: u64,
}

#[derive(Default)]
pub struct Batcher {
    state: Mutex<State>,
    changed: Condvar,
}

/// Clears `leading` and wakes the waiters when a leader is done, also if it panicked.
struct Lead<'a>(&'a Batcher);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.lock().leading = false;
        self.0.changed.notify_all();
    }
}

/// A running generation, counted until dropped ([`Batcher::member`]).
pub struct Member<'a>(&'a Batcher);

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.0.lock().members -= 1;
        self.0.changed.notify_all();
    }
}

impl Batcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a generation as running until the guard drops: a batch's leader waits for
    /// the steps of the running ones.
    pub fn member(&self) -> Member<'_> {
        self.lock().members += 1;
        Member(self)
    }

    /// One step of the sequence in `slot` with `opts`, batched with the other
    /// generations' steps. The sequence is lent to the batch and put back (an error if
    /// the slot is empty).
    pub fn step_in(
        &self,
        engine: &Engine,
        slot: &mut Option<Sequence>,
        opts: StepOptions,
    ) -> Result<Vec<u32>, Error> {
        let seq = slot
            .take()
            .ok_or_else(|| Error::internal("the slot's sequence is missing"))?;
        let (seq, r) = self.step(engine, seq, opts);
        *slot = Some(seq);
        r
    }

    /// One step of `seq` with `opts`, batched with the other generations' steps; gives
    /// the sequence back with its result.
    pub fn step(&self, engine: &Engine, seq: Sequence, opts: StepOptions) -> Outcome {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.waiting.push((id, seq, opts));
        self.changed.notify_all();
        loop {
            if let Some(out) = g.done.remove(&id) {
                return out;
            }
            if g.leading {
                g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            g.leading = true;
            let deadline = Instant::now() + GATHER;
            while g.waiting.len() < g.members {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                g = self
                    .changed
                    .wait_timeout(g, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let batch = std::mem::take(&mut g.waiting);
            g.batches += 1;
            g.stepped += batch.len() as u64;
            drop(g);
            let lead = Lead(self);
            let (ids, mut seqs, opts) = batch.into_iter().fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |(mut i, mut s, mut o), (id, seq, opt)| {
                    i.push(id);
                    s.push(seq);
                    o.push(opt);
                    (i, s, o)
                },
            );
            let results = {
                let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
                engine.step_batch(&mut refs, &opts)
            };
            let results: Vec<Result<Vec<u32>, Error>> = match results {
                Ok(r) => r,
                Err(e) => (0..ids.len()).map(|_| Err(e.clone())).collect(),
            };
            g = self.lock();
            for ((id, seq), r) in ids.into_iter().zip(seqs).zip(results) {
                g.done.insert(id, (seq, r));
            }
            drop(g);
            drop(lead);
            g = self.lock();
        }
    }

    /// Batches run so far and the sequences stepped in them.
    pub fn counts(&self) -> (u64, u64) {
        let g = self.lock();
        (g.batches, g.stepped)
    }
}
