//! Raw RESP2 on the one subscriber connection: the commands we send and the pushes we read.
//!
//! A subscribed connection only ever receives arrays of bulk strings and integers
//! (`subscribe`/`unsubscribe` confirmations, `message` pushes), so that is all this reads;
//! anything else (an error reply) ends the server.

use std::ops::Range;

/// One element of a push: a bulk string (as a range of the read buffer) or an integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Bulk(Range<usize>),
    Int(i64),
}

/// Pushes have at most 4 elements (`pmessage`); we read only 3-element ones.
pub const MAX_ITEMS: usize = 4;

/// A parsed push: its elements and the bytes it took.
#[derive(Debug, PartialEq, Eq)]
pub struct Push {
    pub items: [Option<Item>; MAX_ITEMS],
    pub len: usize,
}

impl Push {
    /// `Some((channel, payload))` ranges when this is `message channel payload`.
    pub fn message(&self, buf: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
        match &self.items {
            [Some(Item::Bulk(kind)), Some(Item::Bulk(channel)), Some(Item::Bulk(payload)), None]
                if &buf[kind.clone()] == b"message" =>
            {
                Some((channel.clone(), payload.clone()))
            }
            _ => None,
        }
    }
}

/// Appends `*2 $9 SUBSCRIBE $n name` (or UNSUBSCRIBE) to `out`.
pub fn command(out: &mut Vec<u8>, verb: &str, name: &str) {
    out.extend_from_slice(format!("*2\r\n${}\r\n{verb}\r\n", verb.len()).as_bytes());
    out.extend_from_slice(format!("${}\r\n", name.len()).as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses the push at the start of `buf`; `Ok(None)` when it is not complete yet.
/// Ranges are relative to `buf`.
pub fn parse(buf: &[u8]) -> Result<Option<Push>, String> {
    let Some((count, mut at)) = line(buf, 0, b'*')? else {
        return Ok(None);
    };
    if !(0..=MAX_ITEMS as i64).contains(&count) {
        return Err(format!("push of {count} elements"));
    }
    let mut items: [Option<Item>; MAX_ITEMS] = Default::default();
    for item in items.iter_mut().take(count as usize) {
        match buf.get(at) {
            None => return Ok(None),
            Some(b':') => {
                let Some((n, next)) = line(buf, at, b':')? else {
                    return Ok(None);
                };
                *item = Some(Item::Int(n));
                at = next;
            }
            Some(b'$') => {
                let Some((n, start)) = line(buf, at, b'$')? else {
                    return Ok(None);
                };
                let n = usize::try_from(n).map_err(|_| "null bulk string in a push")?;
                if buf.len() < start + n + 2 {
                    return Ok(None);
                }
                *item = Some(Item::Bulk(start..start + n));
                at = start + n + 2;
            }
            Some(_) => return Err(unexpected(buf, at)),
        }
    }
    Ok(Some(Push { items, len: at }))
}

/// The integer of the `<tag>123\r\n` line at `at`, and where the next begins.
fn line(buf: &[u8], at: usize, tag: u8) -> Result<Option<(i64, usize)>, String> {
    match buf.get(at) {
        None => return Ok(None),
        Some(&b) if b == tag => {}
        Some(_) => return Err(unexpected(buf, at)),
    }
    let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let digits = &buf[at + 1..at + end];
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("bad RESP length {:?}", String::from_utf8_lossy(digits)))?;
    Ok(Some((n, at + end + 2)))
}

fn unexpected(buf: &[u8], at: usize) -> String {
    let end = buf.len().min(at + 80);
    format!(
        "unexpected reply from Redis: {:?}",
        String::from_utf8_lossy(&buf[at..end])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_message_in_pieces() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nlt\r\n$5\r\nhello\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let push = parse(wire).unwrap().unwrap();
        assert_eq!(push.len, wire.len());
        let (channel, payload) = push.message(wire).unwrap();
        assert_eq!(
            (&wire[channel], &wire[payload]),
            (&b"lt"[..], &b"hello"[..])
        );
    }

    #[test]
    fn a_confirmation_is_no_message() {
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nlt\r\n:1\r\n";
        let push = parse(wire).unwrap().unwrap();
        assert_eq!(push.items[2], Some(Item::Int(1)));
        assert_eq!(push.message(wire), None);
    }

    #[test]
    fn an_error_reply_is_an_error() {
        assert!(parse(b"-ERR nope\r\n").is_err());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, "SUBSCRIBE", "lt.1");
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nlt.1\r\n");
    }
}
