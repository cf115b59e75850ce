//! The history side of the subscriber: after a (re)connect, fill what each channel missed;
//! anchor each newly subscribed history channel; answer the sessions' requests.
//!
//! Everything here runs on the subscriber's thread, between the reconciler's batches, so
//! a request is answered only once its channel is subscribed on the current connection:
//! from that moment on nothing published on it can be missed live, and a history read
//! covers everything before.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::reconcile::BatchError;
use super::store::Store;
use crate::channel::{Name, Prefix};
use crate::history::library::TOP_ONLY;
use crate::history::request::{Answer, Need, Receiver, Request};
use crate::history::sequence::Read;
use crate::history::Rules;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::tape::{Filled, Tape};

pub struct History<'a> {
    /// `None` when no channel keeps history: then there is nothing to read.
    store: Option<Store>,
    hub: &'a Hub,
    prefix: &'a Prefix,
    metrics: &'a Metrics,
    /// Requests whose channel is not settled yet (being subscribed, anchored or filled).
    parked: Vec<Request>,
}

impl<'a> History<'a> {
    pub fn new(
        store: Option<Store>,
        hub: &'a Hub,
        prefix: &'a Prefix,
        metrics: &'a Metrics,
    ) -> Self {
        History {
            store,
            hub,
            prefix,
            metrics,
            parked: Vec::new(),
        }
    }

    /// After every channel in `tapes` was subscribed again on a new connection: history
    /// channels get what they missed (or a `gap` where history cannot tell), the others a
    /// `gap`, since anything published while the connection was down is lost for them.
    pub async fn fill(&mut self, tapes: &[Arc<Tape>]) -> Result<(), BatchError> {
        let (kept, plain): (Vec<_>, Vec<_>) = tapes.iter().partition(|tape| tape.is_history());
        let mut filled = Filled::default();
        for tape in plain {
            filled.gaps += tape.gap();
        }
        let wanted: Vec<(Name, u64)> = kept
            .iter()
            .map(|tape| (tape.name().clone(), tape.fill_after().unwrap_or(TOP_ONLY)))
            .collect();
        let reads = self.read(&wanted).await?;
        for (tape, read) in kept.iter().zip(&reads) {
            let one = tape.end_fill(read);
            filled.publications += one.publications;
            filled.gaps += one.gaps;
        }
        self.metrics
            .gapfill_publications_total
            .inc_by(filled.publications);
        self.metrics.gaps_total.inc_by(filled.gaps);
        if !tapes.is_empty() {
            info!(
                channels = tapes.len(),
                history_channels = kept.len(),
                publications = filled.publications,
                gaps = filled.gaps,
                "gap-fill"
            );
        }
        Ok(())
    }

    /// Anchors the new history tapes among `live`, channels subscribed on this
    /// connection whose tape changed (a first subscriber came).
    async fn anchor(&mut self, live: &[Name]) -> Result<(), BatchError> {
        let tapes: Vec<Arc<Tape>> = live
            .iter()
            .filter_map(|name| self.hub.tape(name))
            .filter(|tape| tape.is_history() && !tape.is_settled())
            .collect();
        if tapes.is_empty() {
            return Ok(());
        }
        let wanted: Vec<(Name, u64)> = tapes.iter().map(|t| (t.name().clone(), TOP_ONLY)).collect();
        let reads = self.read(&wanted).await?;
        for (tape, read) in tapes.iter().zip(&reads) {
            self.metrics.gaps_total.inc_by(tape.anchor(read).gaps);
        }
        Ok(())
    }

    /// Loads the function library again if it went missing (checked with each probe).
    pub async fn keep_library(&mut self, rules: &Rules) -> Result<(), BatchError> {
        let Some(store) = &mut self.store else {
            return Ok(());
        };
        if !store.has_library().await? {
            store.load_library(self.prefix, rules).await?;
            warn!("the herald function library was missing from Redis; loaded it again");
        }
        Ok(())
    }

    /// Takes a session's request, and every one already queued behind it: one read per
    /// channel serves them all. Each is answered by `serve` once its channel settles.
    pub fn take(&mut self, request: Request, queued: &mut Receiver) {
        self.parked.push(request);
        while let Ok(request) = queued.try_recv() {
            self.parked.push(request);
        }
    }

    /// Anchors the new history channels among `live`, then answers what waited on them.
    pub async fn anchor_and_serve(&mut self, live: &[Name]) -> Result<(), BatchError> {
        self.anchor(live).await?;
        self.serve().await
    }

    /// Answers every request whose channel is settled: `Settled` at once, reads with one
    /// history read per channel (from the oldest offset asked), shared by every request
    /// on it: a mass resume costs one read per channel, not one per client.
    pub async fn serve(&mut self) -> Result<(), BatchError> {
        let mut ready = Vec::new();
        let mut still = Vec::new();
        for request in std::mem::take(&mut self.parked) {
            let live = self
                .hub
                .tape(request.tape.name())
                .is_some_and(|tape| Arc::ptr_eq(&tape, &request.tape));
            if !live || request.reply.is_closed() {
                continue; // the session left or gave up
            }
            if request.tape.is_settled() {
                ready.push(request);
            } else {
                still.push(request);
            }
        }
        self.parked = still;

        let mut reads: HashMap<*const Tape, (Arc<Tape>, u64, Vec<Request>)> = HashMap::new();
        for request in ready {
            match request.need {
                Need::Settled => {
                    let _ = request.reply.send(Answer::Settled);
                }
                Need::After(after) => {
                    let key = Arc::as_ptr(&request.tape);
                    let entry = reads
                        .entry(key)
                        .or_insert_with(|| (request.tape.clone(), after, Vec::new()));
                    entry.1 = entry.1.min(after);
                    entry.2.push(request);
                }
            }
        }
        if reads.is_empty() {
            return Ok(());
        }
        let groups: Vec<_> = reads.into_values().collect();
        let wanted: Vec<(Name, u64)> = groups
            .iter()
            .map(|(tape, after, _)| (tape.name().clone(), *after))
            .collect();
        let results = self.read(&wanted).await?;
        for ((_, _, requests), read) in groups.into_iter().zip(results) {
            let read = Arc::new(read);
            for request in requests {
                let _ = request.reply.send(Answer::Read(read.clone()));
            }
        }
        Ok(())
    }

    async fn read(&mut self, wanted: &[(Name, u64)]) -> Result<Vec<Read>, BatchError> {
        match &mut self.store {
            Some(store) if !wanted.is_empty() => store.read(self.prefix, wanted).await,
            _ => Ok(wanted.iter().map(|_| Read::default()).collect()),
        }
    }
}
