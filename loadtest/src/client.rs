//! One subscriber: connect, wait for the server's confirmation, then read until the
//! connection ends, recording each publication's latency and sequence in the worker state.
//!
//! Per channel the client keeps only the next sequence number it expects and, on a
//! history channel, the last offset it received: the contract guarantees order per
//! channel, so a higher number is a gap (those publications were lost to this client) and
//! a lower one a duplicate.
//!
//! In the `resume` scenario a client also takes part in the reconnect wave (`wave`): at
//! its turn it drops its connection, connects again, subscribes with `since` set to its
//! last offsets and expects every publication it missed, then the live stream. Its
//! sequence bookkeeping carries over, so a replay that skips or repeats shows up as gaps
//! or duplicates like any other loss.

use std::cell::RefCell;
use std::future::Future;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::watch;

use crate::conn::{Conn, ConnError, Frame};
use crate::decode::Decoded;
use crate::peer::{Endpoint, Peer};
use crate::stamp::{now_ns, Stamp};
use crate::wave::{self, Wave, WaveTally};
use crate::wire::{self, WireError};
use crate::worker::state::State;

/// The `id` of the subscribe a client sends when it comes back.
const SUBSCRIBE_ID: u64 = 1;

/// What this client expects next on one channel.
struct Subscription {
    channel: u32,
    next: u64,
    /// The last marking epoch in which a publication on this channel arrived.
    seen_epoch: u32,
    /// The last offset received on this channel (history channels); empty until one has.
    offset: Vec<u8>,
    /// After a reconnect: a publication stamped at or after this (ns) means the channel is
    /// back on the live stream; 0 when not waiting for one.
    live_from: u64,
    /// After a reconnect with `since`: the `ok`'s `recovered` for this channel.
    recovered: Option<bool>,
    /// After `recovered: false`, until the first publication: how many were skipped is
    /// how far behind the client was (to compare with the history's SIZE).
    measure_skip: bool,
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
    /// After a reconnect: channels not yet back on the live stream, and when the client
    /// dropped its old connection (ns).
    behind: usize,
    dropped_ns: u64,
    /// Back on the live stream on every channel after a reconnect.
    caught_up: bool,
}

/// What a client needs to take part in the reconnect wave.
pub struct Rejoin {
    /// The client's global index: its turn in the wave.
    pub index: u32,
    /// Its channels' names, in the order of its subscriptions.
    pub names: Vec<String>,
    /// Where to connect and the upgrade path, without channels (the subscribe op names
    /// them): the same server or another instance sharing its Redis.
    pub at: Rc<RejoinAt>,
    pub source: Option<Ipv4Addr>,
    /// Deadline to connect, be welcomed and have the subscribe answered.
    pub timeout: Duration,
    /// Set once by the worker when the coordinator starts the wave.
    pub wave: watch::Receiver<Option<Wave>>,
}

/// Where clients come back to in the wave.
pub struct RejoinAt {
    pub endpoint: Endpoint,
    /// The upgrade path without channels.
    pub path: String,
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
    let conn = open(peer, endpoint, source, path, seed).await?;
    Ok(Client {
        conn,
        subs: Subscriptions::new(channels),
    })
}

/// Opens a connection and, for Herald, waits for its `welcome`.
async fn open(
    peer: &Peer,
    endpoint: &Endpoint,
    source: Option<Ipv4Addr>,
    path: &str,
    seed: u32,
) -> Result<Conn, ConnError> {
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
    Ok(conn)
}

impl Client {
    /// Reads until the connection ends, then records how it ended. With `rejoin`, the
    /// client drops its connection at its turn in the wave and comes back first.
    pub async fn run(self, peer: &Peer, state: &RefCell<State>, rejoin: Option<Rejoin>) {
        let Client { mut conn, mut subs } = self;
        let in_wave = rejoin.is_some();
        let how = 'life: {
            if let Some(mut rejoin) = rejoin {
                let turn = rejoin.turn();
                if let Some(how) = read(&mut conn, &mut subs, peer, state, turn).await {
                    break 'life how;
                }
                // A client that lost its network holds no second connection: the old
                // socket closes before the new one opens (and the worker's descriptor
                // budget stays one per client).
                drop(conn);
                conn = match rejoin.come_back(peer, &mut subs, state).await {
                    Ok(conn) => conn,
                    Err(why) => {
                        state.borrow_mut().ended(format!("rejoin: {why}"), false);
                        return;
                    }
                };
            }
            let forever = std::future::pending();
            read(&mut conn, &mut subs, peer, state, forever)
                .await
                .unwrap_or_default()
        };
        let mut state = state.borrow_mut();
        // A client the wave waits for (live when it began) that will not catch up now.
        if in_wave && !subs.caught_up {
            if let Some(wave) = state.wave.as_mut() {
                wave.failed("ended before catching up".into());
            }
        }
        let reached = subs.epoch == state.epoch && subs.unseen == 0;
        state.ended(how, reached);
    }
}

/// Reads until the connection ends (its end, as a label) or `interrupt` completes (None).
async fn read(
    conn: &mut Conn,
    subs: &mut Subscriptions,
    peer: &Peer,
    state: &RefCell<State>,
    interrupt: impl Future<Output = ()>,
) -> Option<String> {
    tokio::pin!(interrupt);
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    loop {
        // Reading is cancel-safe: bytes read before the interrupt stay in the buffer.
        let filled = tokio::select! {
            biased;
            filled = conn.fill() => filled,
            () = &mut interrupt => return None,
        };
        if let Err(e) = filled {
            return Some(e.kind());
        }
        // One clock read per read batch: frames that arrived together share it.
        let now = now_ns();
        let close = match absorb(conn, subs, peer, &mut state.borrow_mut(), now, &mut pongs) {
            Ok(close) => close,
            Err(e) => return Some(ConnError::Wire(e).kind()),
        };
        if let Some(code) = close {
            let echo = code.map(u16::to_be_bytes);
            let _ = conn
                .send(wire::CLOSE, echo.as_ref().map_or(&[][..], |c| &c[..]))
                .await;
            return Some(match code {
                Some(code) => format!("close {code}"),
                None => "close".into(),
            });
        }
        for payload in pongs.drain(..) {
            if let Err(e) = conn.send(wire::PONG, &payload).await {
                return Some(ConnError::Io(e).kind());
            }
        }
    }
}

/// Handles every complete frame in the buffer. `Ok(Some(code))` when the server closed;
/// pings to answer are left in `pongs`.
fn absorb(
    conn: &mut Conn,
    subs: &mut Subscriptions,
    peer: &Peer,
    state: &mut State,
    now: u64,
    pongs: &mut Vec<Vec<u8>>,
) -> Result<Option<Option<u16>>, WireError> {
    loop {
        match conn.next()? {
            None => return Ok(None),
            Some(Frame::Text(text)) => match peer.decode(text) {
                Decoded::Stamp { stamp, offset } => subs.delivered(stamp, offset, now, state),
                Decoded::Lagged(missed) => subs.lagged(missed, state),
                _ => state.tally.other += 1,
            },
            Some(Frame::Binary) => state.tally.other += 1,
            Some(Frame::Ping(payload)) => pongs.push(payload.to_vec()),
            Some(Frame::Pong) => {}
            Some(Frame::Close(code)) => return Ok(Some(code)),
        }
    }
}

impl Rejoin {
    /// Completes at this client's turn in the wave; never if no wave comes.
    async fn turn(&mut self) {
        let wave = match self.wave.wait_for(Option::is_some).await {
            Ok(wave) => *wave,
            Err(_) => None,
        };
        let Some(wave) = wave else {
            return std::future::pending().await;
        };
        let wait = wave.turn_ns(self.index).saturating_sub(now_ns());
        tokio::time::sleep(Duration::from_nanos(wait)).await;
    }

    /// Connects again, subscribes with `since` and waits for the `ok`; counts what the
    /// wave tally needs. The error is a label for the failure.
    async fn come_back(
        &self,
        peer: &Peer,
        subs: &mut Subscriptions,
        state: &RefCell<State>,
    ) -> Result<Conn, String> {
        let dropped = now_ns();
        if let Some(wave) = state.borrow_mut().wave.as_mut() {
            wave.dropped += 1;
        }
        let outcome = tokio::time::timeout(self.timeout, self.reopen(peer, subs, state, dropped));
        let failure = match outcome.await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(why)) => why,
            Err(_) => "timeout".to_owned(),
        };
        if let Some(wave) = state.borrow_mut().wave.as_mut() {
            wave.failed(failure.clone());
        }
        Err(failure)
    }

    async fn reopen(
        &self,
        peer: &Peer,
        subs: &mut Subscriptions,
        state: &RefCell<State>,
        dropped: u64,
    ) -> Result<Conn, String> {
        let seed = self.index ^ 0x8000_0000;
        let at = &*self.at;
        let mut conn = open(peer, &at.endpoint, self.source, &at.path, seed)
            .await
            .map_err(|e| e.kind())?;
        let welcomed = now_ns();
        let (request, without_offset) = subscribe_request(&self.names, subs);
        conn.send(wire::TEXT, request.as_bytes())
            .await
            .map_err(|e| ConnError::Io(e).kind())?;
        let sent = now_ns();
        subs.rejoining(dropped, sent);
        let recovered = loop {
            conn.fill().await.map_err(|e| e.kind())?;
            let mut pongs = Vec::new();
            let answer = {
                let mut state = state.borrow_mut();
                take_answer(&mut conn, subs, peer, &mut state, &mut pongs)
                    .map_err(|e| ConnError::Wire(e).kind())?
            };
            for payload in pongs {
                conn.send(wire::PONG, &payload)
                    .await
                    .map_err(|e| ConnError::Io(e).kind())?;
            }
            match answer {
                None => continue,
                Some(Answer::Ok(recovered)) => break recovered,
                Some(Answer::Refused(code)) => return Err(format!("error {code}")),
                Some(Answer::Closed(code)) => {
                    return Err(code.map_or("close".into(), |c| format!("close {c}")))
                }
            }
        };
        let answered = now_ns();
        let mut state = state.borrow_mut();
        let wave = state.wave.get_or_insert_with(|| WaveTally::new(0));
        wave.rejoined += 1;
        wave.without_offset += without_offset;
        wave::record_ns(&mut wave.reconnect, welcomed.saturating_sub(dropped));
        wave::record_ns(&mut wave.answer, answered.saturating_sub(sent));
        count_recovered(&self.names, subs, recovered.as_deref(), wave);
        Ok(conn)
    }
}

/// How the server answered the subscribe, if it has.
enum Answer {
    Ok(Option<Vec<(String, bool)>>),
    Refused(String),
    Closed(Option<u16>),
}

/// Handles the frames in the buffer up to the answer to the subscribe; publications
/// before it count as usual.
fn take_answer(
    conn: &mut Conn,
    subs: &mut Subscriptions,
    peer: &Peer,
    state: &mut State,
    pongs: &mut Vec<Vec<u8>>,
) -> Result<Option<Answer>, WireError> {
    let now = now_ns();
    loop {
        match conn.next()? {
            None => return Ok(None),
            Some(Frame::Text(text)) => match peer.decode(text) {
                Decoded::Ok { recovered } => return Ok(Some(Answer::Ok(recovered))),
                Decoded::Error { code } => return Ok(Some(Answer::Refused(code))),
                Decoded::Stamp { stamp, offset } => subs.delivered(stamp, offset, now, state),
                Decoded::Lagged(missed) => subs.lagged(missed, state),
                _ => state.tally.other += 1,
            },
            Some(Frame::Ping(payload)) => pongs.push(payload.to_vec()),
            Some(Frame::Close(code)) => return Ok(Some(Answer::Closed(code))),
            Some(_) => {}
        }
    }
}

/// `{"op":"subscribe","id":1,"channels":[..],"since":{..}}` for the client's channels,
/// `since` naming those with an offset; and how many had none.
fn subscribe_request(names: &[String], subs: &Subscriptions) -> (String, u64) {
    let mut since = serde_json::Map::new();
    for (name, sub) in names.iter().zip(&subs.list) {
        if !sub.offset.is_empty() {
            let offset = String::from_utf8_lossy(&sub.offset).into_owned();
            since.insert(name.clone(), offset.into());
        }
    }
    let without = (subs.list.len() - since.len()) as u64;
    let mut request = serde_json::json!({
        "op": "subscribe",
        "id": SUBSCRIBE_ID,
        "channels": names,
    });
    if !since.is_empty() {
        request["since"] = since.into();
    }
    (request.to_string(), without)
}

/// Adds the `ok`'s verdict on each channel named in `since` to the wave tally.
/// Each channel keeps its verdict: a loss after `recovered: true` is a broken promise.
fn count_recovered(
    names: &[String],
    subs: &mut Subscriptions,
    recovered: Option<&[(String, bool)]>,
    wave: &mut WaveTally,
) {
    for (name, sub) in names.iter().zip(&mut subs.list) {
        if sub.offset.is_empty() {
            continue;
        }
        let verdict = recovered.and_then(|r| r.iter().find(|(n, _)| n == name).map(|p| p.1));
        sub.recovered = verdict;
        sub.measure_skip = verdict == Some(false);
        match verdict {
            Some(true) => wave.recovered += 1,
            Some(false) => wave.not_recovered += 1,
            None => wave.unanswered += 1,
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
                offset: Vec::new(),
                live_from: 0,
                recovered: None,
                measure_skip: false,
            })
            .collect();
        Subscriptions {
            list,
            epoch: 0,
            unseen: 0,
            behind: 0,
            dropped_ns: 0,
            caught_up: false,
        }
    }

    /// The client dropped its connection at `dropped` and subscribed again at `sent`:
    /// each channel is behind until a publication stamped at or after `sent` arrives.
    fn rejoining(&mut self, dropped: u64, sent: u64) {
        for sub in &mut self.list {
            sub.live_from = sent.max(1);
        }
        self.behind = self.list.len();
        self.dropped_ns = dropped;
    }

    /// Herald dropped `missed` publications for this client (`lagged`). After
    /// `recovered: true` they show as gaps too; counted apart, they are not a broken
    /// resume. (The frame names its channel; the clients of `resume` have one.)
    fn lagged(&mut self, missed: u64, state: &mut State) {
        state.tally.lagged += missed;
        if self.list.iter().any(|s| s.recovered == Some(true)) {
            if let Some(wave) = state.wave.as_mut() {
                wave.lagged_recovered += missed;
            }
        }
    }

    fn delivered(&mut self, stamp: Stamp, offset: Option<&[u8]>, now: u64, state: &mut State) {
        if stamp.t < state.not_before_ns {
            state.tally.stale += 1;
            return;
        }
        state.tally.record_latency_ns(now.saturating_sub(stamp.t));
        let Some(sub) = self.list.iter_mut().find(|s| s.channel == stamp.c) else {
            state.tally.foreign += 1;
            return;
        };
        if let Some(offset) = offset {
            sub.offset.clear();
            sub.offset.extend_from_slice(offset);
        }
        if sub.measure_skip {
            sub.measure_skip = false;
            if let Some(wave) = state.wave.as_mut() {
                let skipped = stamp.s.saturating_sub(sub.next);
                wave.skipped_not_recovered.saturating_record(skipped.max(1));
            }
        }
        match stamp.s.cmp(&sub.next) {
            std::cmp::Ordering::Equal => sub.next += 1,
            std::cmp::Ordering::Greater => {
                let skipped = stamp.s - sub.next;
                state.tally.gaps += skipped;
                sub.next = stamp.s + 1;
                if let (Some(wave), Some(recovered)) = (state.wave.as_mut(), sub.recovered) {
                    *wave.lost_by(recovered) += skipped;
                }
            }
            std::cmp::Ordering::Less => {
                state.tally.duplicates += 1;
                if let (Some(wave), Some(true)) = (state.wave.as_mut(), sub.recovered) {
                    wave.duplicated_recovered += 1;
                }
            }
        }
        if sub.live_from != 0 && stamp.t >= sub.live_from {
            sub.live_from = 0;
            self.behind -= 1;
            if self.behind == 0 {
                self.caught_up = true;
                if let Some(wave) = state.wave.as_mut() {
                    wave.caught_up(now, self.dropped_ns);
                }
                state.wake.notify_one();
            }
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
            client.delivered(stamp(0, s), None, 1_000, &mut state);
        }
        assert_eq!(state.tally.received, 6);
        assert_eq!(state.tally.gaps, 2, "3 and 4 skipped when 5 came");
        assert_eq!(state.tally.duplicates, 2, "the second 5 and the late 3");
        client.delivered(stamp(9, 1), None, 1_000, &mut state);
        assert_eq!(state.tally.foreign, 1);
    }

    #[test]
    fn stamps_from_before_the_run_are_stale() {
        let mut state = State::new(Rc::new(Notify::new()), 100);
        let mut client = Subscriptions::new(&[0]);
        client.delivered(Stamp { t: 99, s: 7, c: 0 }, None, 1_000, &mut state);
        client.delivered(Stamp { t: 100, s: 1, c: 0 }, None, 1_000, &mut state);
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
        a.delivered(stamp(0, 1), None, 0, &mut state);
        assert_eq!(state.reached, 0);
        a.delivered(stamp(0, 2), None, 0, &mut state);
        a.delivered(stamp(1, 1), None, 0, &mut state);
        b.delivered(stamp(1, 1), None, 0, &mut state);
        assert_eq!(state.reached, 2);
        assert!(state.all_reached());
        state.mark();
        assert!(!state.all_reached());
        b.delivered(stamp(1, 2), None, 0, &mut state);
        assert_eq!(state.reached, 1);
    }

    #[test]
    fn the_last_offset_per_channel_is_kept() {
        let mut state = State::new(Rc::new(Notify::new()), 0);
        let mut client = Subscriptions::new(&[0, 1]);
        client.delivered(stamp(0, 1), Some(b"7:1"), 0, &mut state);
        client.delivered(stamp(1, 1), Some(b"8:1"), 0, &mut state);
        client.delivered(stamp(0, 2), Some(b"7:2"), 0, &mut state);
        client.delivered(stamp(0, 3), None, 0, &mut state);
        assert_eq!(
            client.list[0].offset, b"7:2",
            "a plain publication keeps it"
        );
        assert_eq!(client.list[1].offset, b"8:1");
    }

    #[test]
    fn subscribe_names_since_for_channels_with_an_offset() {
        let mut state = State::new(Rc::new(Notify::new()), 0);
        let mut client = Subscriptions::new(&[0, 1]);
        let names = vec!["lt.0".to_owned(), "lt.1".to_owned()];
        let (request, without) = subscribe_request(&names, &client);
        assert_eq!(
            request,
            r#"{"channels":["lt.0","lt.1"],"id":1,"op":"subscribe"}"#
        );
        assert_eq!(without, 2);
        client.delivered(stamp(1, 1), Some(b"1764318000123456:42"), 0, &mut state);
        let (request, without) = subscribe_request(&names, &client);
        let value: serde_json::Value = serde_json::from_str(&request).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"op": "subscribe", "id": 1, "channels": ["lt.0", "lt.1"],
                               "since": {"lt.1": "1764318000123456:42"}})
        );
        assert_eq!(without, 1);
    }

    #[test]
    fn recovered_is_counted_per_channel_named_in_since() {
        let mut state = State::new(Rc::new(Notify::new()), 0);
        let mut client = Subscriptions::new(&[0, 1, 2]);
        for c in 0..3 {
            client.delivered(stamp(c, 1), Some(b"1:1"), 0, &mut state);
        }
        let names: Vec<String> = (0..3).map(|c| format!("lt.{c}")).collect();
        let mut wave = WaveTally::new(1);
        let recovered = vec![("lt.0".to_owned(), true), ("lt.1".to_owned(), false)];
        count_recovered(&names, &mut client, Some(&recovered), &mut wave);
        assert_eq!(
            (wave.recovered, wave.not_recovered, wave.unanswered),
            (1, 1, 1)
        );
        state.wave = Some(wave);
        client.delivered(stamp(0, 3), None, 0, &mut state);
        client.delivered(stamp(0, 2), None, 0, &mut state);
        client.delivered(stamp(1, 5), None, 0, &mut state);
        client.delivered(stamp(2, 9), None, 0, &mut state);
        let wave = state.wave.as_mut().unwrap();
        assert_eq!(
            (
                wave.lost_recovered,
                wave.duplicated_recovered,
                wave.lost_not_recovered
            ),
            (1, 1, 3),
            "unanswered channels count in neither"
        );
        let skipped = &wave.skipped_not_recovered;
        assert_eq!(
            (skipped.len(), skipped.max()),
            (1, 3),
            "3 skipped at the seam"
        );
        count_recovered(&names, &mut client, None, wave);
        assert_eq!(
            wave.unanswered, 4,
            "an ok without recovered answers nothing"
        );
    }

    #[test]
    fn a_client_catches_up_on_the_first_publication_stamped_after_its_subscribe() {
        let mut state = State::new(Rc::new(Notify::new()), 0);
        state.live = 1;
        state.start_wave();
        let mut client = Subscriptions::new(&[0]);
        client.delivered(Stamp { t: 10, s: 1, c: 0 }, Some(b"1:1"), 11, &mut state);
        client.rejoining(1_000, 2_000);
        // The replay: published before the subscribe, so not yet live.
        for s in 2..=4 {
            let t = 1_000 + s * 100;
            client.delivered(Stamp { t, s, c: 0 }, Some(b"1:2"), 2_500, &mut state);
        }
        assert!(!state.wave_over());
        client.delivered(
            Stamp {
                t: 2_000,
                s: 5,
                c: 0,
            },
            None,
            3_000_000,
            &mut state,
        );
        assert!(state.wave_over());
        let wave = state.wave.as_ref().unwrap();
        assert_eq!((wave.caught_up, wave.last_caught_up_ns), (1, 3_000_000));
        assert_eq!(wave.back_live.max(), 2_999, "µs from the drop at 1,000 ns");
        assert_eq!((state.tally.gaps, state.tally.duplicates), (0, 0));
        client.delivered(
            Stamp {
                t: 9_000,
                s: 6,
                c: 0,
            },
            None,
            4_000_000,
            &mut state,
        );
        assert_eq!(state.wave.as_ref().unwrap().caught_up, 1, "once");
    }
}
