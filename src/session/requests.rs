//! What a client may ask, and the answers: subscribe, unsubscribe, ping, refresh.
//!
//! Owns the connection's subscriptions, its credentials and its request budget (a token
//! bucket), so every decision about client input is made in this one place.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::resume::{self, Pending};
use super::subscriptions::Subscriptions;
use crate::auth::{Auth, Grant};
use crate::history::request::Sender as HistoryRequests;
use crate::metrics::Metrics;
use crate::protocol::{self, Code, Op, Refusal, Request};

/// The request budget of one connection.
#[derive(Debug, Clone, Copy)]
pub struct RateSettings {
    /// Frames per second on average.
    pub per_second: NonZeroU32,
    /// Frames allowed at once above the average.
    pub burst: NonZeroU32,
    /// Refusals after which the connection is closed.
    pub strikes: u32,
}

/// What to do after a client frame.
pub enum Verdict {
    Reply(String),
    /// A subscribe whose `ok` waits for Redis (history channels; see `resume`).
    Wait(Pending),
    Nothing,
    /// The client exhausted its refusals: close it.
    Abusive,
}

pub struct Requests {
    pub subs: Subscriptions,
    grant: Grant,
    auth: Arc<Auth>,
    limiter: DefaultDirectRateLimiter,
    strikes_left: u32,
    history: HistoryRequests,
    metrics: Metrics,
}

impl Requests {
    pub fn new(
        subs: Subscriptions,
        grant: Grant,
        auth: Arc<Auth>,
        rate: RateSettings,
        history: HistoryRequests,
        metrics: Metrics,
    ) -> Self {
        Requests {
            history,
            metrics,
            subs,
            grant,
            auth,
            limiter: RateLimiter::direct(
                Quota::per_second(rate.per_second).allow_burst(rate.burst),
            ),
            strikes_left: rate.strikes,
        }
    }

    /// Subscribes the channels from the upgrade query (already checked with the same rule).
    /// The `welcome` is their `ok`: it waits, as an `ok` would, for a first subscriber's
    /// history channel to be anchored.
    pub fn subscribe_initial(&mut self, names: &[String]) -> Result<Option<Pending>, Refusal> {
        let (auth, grant) = (&self.auth, &self.grant);
        let joined = self
            .subs
            .subscribe(&None, names, |name| auth.allows(grant, name))?;
        let planned = resume::plan(
            &mut self.subs,
            None,
            &joined,
            Vec::new(),
            &self.history,
            &self.metrics,
        );
        Ok(planned.err())
    }

    /// When the credentials stop being valid, as a timer deadline.
    pub fn expires_at(&self) -> Option<Instant> {
        let at = self.grant.expires_at?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Instant::now() + left)
    }

    /// Answers one client frame. Every frame but a pong spends from the budget: pings
    /// cost the server a write too.
    pub fn handle(&mut self, message: Message) -> Verdict {
        let is_data = match &message {
            Message::Text(_) | Message::Binary(_) => true,
            Message::Ping(_) => false,
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return Verdict::Nothing,
        };
        if self.limiter.check().is_err() {
            self.strikes_left = self.strikes_left.saturating_sub(1);
            if self.strikes_left == 0 {
                return Verdict::Abusive;
            }
            if !is_data {
                return Verdict::Nothing;
            }
            // The contract: an error carries its request's id, so the client can match it.
            let id = match &message {
                Message::Text(text) => protocol::request_id(text),
                _ => None,
            };
            let refusal = Refusal::new(id, Code::RateLimited, "too many requests; slow down");
            return Verdict::Reply(protocol::error(&refusal));
        }
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let refusal = Refusal::new(
                    None,
                    Code::BadRequest,
                    "binary frames are not accepted; send JSON text",
                );
                return Verdict::Reply(protocol::error(&refusal));
            }
            // Pings are answered by tungstenite itself.
            _ => return Verdict::Nothing,
        };
        let reply = match Request::parse(&text) {
            Ok(request) => self.answer(request),
            Err(refusal) => Err(refusal),
        };
        reply.unwrap_or_else(|refusal| Verdict::Reply(protocol::error(&refusal)))
    }

    /// The `ok` and history frames of a subscribe that waited; see `resume`.
    pub fn finish(
        &mut self,
        pending: Pending,
        answers: resume::Answers,
    ) -> (String, Vec<crate::payload::Frame>) {
        pending.finish(&mut self.subs, answers, &self.metrics)
    }

    fn answer(&mut self, Request { id, op }: Request) -> Result<Verdict, Refusal> {
        match op {
            Op::Ping => Ok(Verdict::Reply(protocol::pong(&id))),
            Op::Subscribe(names, since) => {
                if let Some((name, _)) = since.iter().find(|(name, _)| self.subs.holds(name)) {
                    let message = format!(
                        "since names {name:?}, which this connection already holds; \
                         unsubscribe first to resume it"
                    );
                    return Err(Refusal::new(id, Code::BadRequest, message));
                }
                let (auth, grant) = (&self.auth, &self.grant);
                let joined = self
                    .subs
                    .subscribe(&id, &names, |name| auth.allows(grant, name))?;
                let planned = resume::plan(
                    &mut self.subs,
                    id,
                    &joined,
                    since,
                    &self.history,
                    &self.metrics,
                );
                Ok(match planned {
                    Ok(reply) => Verdict::Reply(reply),
                    Err(pending) => Verdict::Wait(pending),
                })
            }
            Op::Unsubscribe(names) => {
                self.subs.unsubscribe(&names);
                Ok(Verdict::Reply(protocol::ok(&id, &self.subs.names())))
            }
            Op::Refresh(token) => {
                let grant = self
                    .auth
                    .authenticate(Some(&token))
                    .map_err(|e| Refusal::new(id.clone(), Code::Forbidden, e.to_string()))?;
                if grant.subject != self.grant.subject {
                    let message = "the new token is for another subject";
                    return Err(Refusal::new(id, Code::Forbidden, message));
                }
                self.grant = grant;
                // Channels the new token no longer allows are left; the reply shows the set.
                let (auth, grant) = (&self.auth, &self.grant);
                self.subs.retain(|name| auth.allows(grant, name));
                Ok(Verdict::Reply(protocol::ok(&id, &self.subs.names())))
            }
        }
    }
}
