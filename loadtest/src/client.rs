//! One subscriber: connect, wait for the server's confirmation, then read until the
//! connection ends, recording each publication's latency and sequence in the worker state.
//!
//! Per channel the client keeps only the next sequence number it expects: the contract
//! guarantees order per channel, so a higher number is a gap (those publications were lost
//! to this client) and a lower one a duplicate.

use std::cell::RefCell;
use std::net::Ipv4Addr;

use crate::conn::{Conn, ConnError, Frame};
use crate::decode::Decoded;
use crate::peer::{Endpoint, Peer};
use crate::stamp::{now_ns, Stamp};
use crate::wire::{self, WireError};
use crate::worker::state::State;

/// What this client expects next on one channel.
struct Subscription {
    channel: u32,
    next: u64,
    /// The last marking epoch in which a publication on this channel arrived.
    seen_epoch: u32,
}

pub struct Client {
    conn: Conn,
    subs: Subscriptions,
}

struct Subscriptions {
    list: Vec<Subscription>,
    /// The epoch `unseen` counts for.
    epoch: u32,
    /// Channels without a publication yet in `epoch`.
    unseen: usize,
}

/// Connects and, for Herald, waits for `welcome`: from then on the subscriptions named
/// in the query are in place on the server.
pub async fn connect(
    peer: &Peer,
    endpoint: &Endpoint,
    source: Option<Ipv4Addr>,
    path: &str,
    channels: &[u32],
    seed: u32,
) -> Result<Client, ConnError> {
    let mut conn = Conn::open(endpoint, source, path, seed).await?;
    if peer.waits_for_welcome() {
        loop {
            let pong = match conn.next()? {
                None => {
                    conn.fill().await?;
                    continue;
                }
                Some(Frame::Text(text)) if peer.decode(text) == Decoded::Welcome => break,
                Some(Frame::Text(_)) => {
                    return Err(ConnError::Handshake("first frame not welcome"))
                }
                Some(Frame::Close(_)) => return Err(ConnError::Closed),
                Some(Frame::Ping(payload)) => payload.to_vec(),
                Some(_) => continue,
            };
            conn.send(wire::PONG, &pong).await.map_err(ConnError::Io)?;
        }
    }
    Ok(Client {
        conn,
        subs: Subscriptions::new(channels),
    })
}

impl Client {
    /// Reads until the connection ends, then records how it ended.
    pub async fn run(mut self, peer: &Peer, state: &RefCell<State>) {
        let how = self.read_until_end(peer, state).await;
        let mut state = state.borrow_mut();
        let reached = self.subs.epoch == state.epoch && self.subs.unseen == 0;
        state.ended(how, reached);
    }

    /// Reads until the connection ends; returns how it ended, as a label.
    async fn read_until_end(&mut self, peer: &Peer, state: &RefCell<State>) -> String {
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        loop {
            if let Err(e) = self.conn.fill().await {
                return e.kind();
            }
            // One clock read per read batch: frames that arrived together share it.
            let now = now_ns();
            let close = match self.absorb(peer, &mut state.borrow_mut(), now, &mut pongs) {
                Ok(close) => close,
                Err(e) => return ConnError::Wire(e).kind(),
            };
            if let Some(code) = close {
                let echo = code.map(u16::to_be_bytes);
                let _ = self
                    .conn
                    .send(wire::CLOSE, echo.as_ref().map_or(&[][..], |c| &c[..]))
                    .await;
                return match code {
                    Some(code) => format!("close {code}"),
                    None => "close".into(),
                };
            }
            for payload in pongs.drain(..) {
                if let Err(e) = self.conn.send(wire::PONG, &payload).await {
                    return ConnError::Io(e).kind();
                }
            }
        }
    }

    /// Handles every complete frame in the buffer. `Ok(Some(code))` when the server
    /// closed; pings to answer are left in `pongs`.
    fn absorb(
        &mut self,
        peer: &Peer,
        state: &mut State,
        now: u64,
        pongs: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Option<u16>>, WireError> {
        loop {
            match self.conn.next()? {
                None => return Ok(None),
                Some(Frame::Text(text)) => match peer.decode(text) {
                    Decoded::Stamp(stamp) => self.subs.delivered(stamp, now, state),
                    Decoded::Lagged(missed) => state.tally.lagged += missed,
                    Decoded::Welcome | Decoded::Other => state.tally.other += 1,
                },
                Some(Frame::Binary) => state.tally.other += 1,
                Some(Frame::Ping(payload)) => pongs.push(payload.to_vec()),
                Some(Frame::Pong) => {}
                Some(Frame::Close(code)) => return Ok(Some(code)),
            }
        }
    }
}

impl Subscriptions {
    /// Nothing seen yet on `channels`; each expects sequence 1 first.
    fn new(channels: &[u32]) -> Subscriptions {
        let list = channels
            .iter()
            .map(|&channel| Subscription {
                channel,
                next: 1,
                seen_epoch: 0,
            })
            .collect();
        Subscriptions {
            list,
            epoch: 0,
            unseen: 0,
        }
    }

    fn delivered(&mut self, stamp: Stamp, now: u64, state: &mut State) {
        if stamp.t < state.not_before_ns {
            state.tally.stale += 1;
            return;
        }
        state.tally.record_latency_ns(now.saturating_sub(stamp.t));
        let Some(sub) = self.list.iter_mut().find(|s| s.channel == stamp.c) else {
            state.tally.foreign += 1;
            return;
        };
        match stamp.s.cmp(&sub.next) {
            std::cmp::Ordering::Equal => sub.next += 1,
            std::cmp::Ordering::Greater => {
                state.tally.gaps += stamp.s - sub.next;
                sub.next = stamp.s + 1;
            }
            std::cmp::Ordering::Less => state.tally.duplicates += 1,
        }
        if sub.seen_epoch != state.epoch {
            sub.seen_epoch = state.epoch;
            if self.epoch != state.epoch {
                self.epoch = state.epoch;
                self.unseen = self.list.len();
            }
            self.unseen -= 1;
            if self.unseen == 0 {
                state.client_reached();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use tokio::sync::Notify;

    fn stamp(c: u32, s: u64) -> Stamp {
        Stamp { t: 0, s, c }
    }

    #[test]
    fn gaps_and_duplicates() {
        let mut state = State::new(Rc::new(Notify::new()), 0);
        let mut client = Subscriptions::new(&[0]);
        for s in [1, 2, 5, 5, 3, 6] {
            client.delivered(stamp(0, s), 1_000, &mut state);
        }
        assert_eq!(state.tally.received, 6);
        assert_eq!(state.tally.gaps, 2, "3 and 4 skipped when 5 came");
        assert_eq!(state.tally.duplicates, 2, "the second 5 and the late 3");
        client.delivered(stamp(9, 1), 1_000, &mut state);
        assert_eq!(state.tally.foreign, 1);
    }

    #[test]
    fn stamps_from_before_the_run_are_stale() {
        let mut state = State::new(Rc::new(Notify::new()), 100);
        let mut client = Subscriptions::new(&[0]);
        client.delivered(Stamp { t: 99, s: 7, c: 0 }, 1_000, &mut state);
        client.delivered(Stamp { t: 100, s: 1, c: 0 }, 1_000, &mut state);
        assert_eq!(
            (state.tally.stale, state.tally.received, state.tally.gaps),
            (1, 1, 0)
        );
    }

    #[test]
    fn reached_counts_clients_with_every_channel_seen() {
        let mut state = State::new(Rc::new(Notify::new()), 0);
        state.live = 2;
        state.mark();
        let (mut a, mut b) = (Subscriptions::new(&[0, 1]), Subscriptions::new(&[1]));
        a.delivered(stamp(0, 1), 0, &mut state);
        assert_eq!(state.reached, 0);
        a.delivered(stamp(0, 2), 0, &mut state);
        a.delivered(stamp(1, 1), 0, &mut state);
        b.delivered(stamp(1, 1), 0, &mut state);
        assert_eq!(state.reached, 2);
        assert!(state.all_reached());
        state.mark();
        assert!(!state.all_reached());
        b.delivered(stamp(1, 2), 0, &mut state);
        assert_eq!(state.reached, 1);
    }
}
